"""LoRA files (kohya / A1111 and diffusers / PEFT) fused into a model's weights, and what they
change.

A LoRA adds ``scale * alpha / rank * up @ down`` to a module's weight. Fusing it (rather than
hooking the forward) keeps capture and speed unchanged; :meth:`FusedLoras.unfuse` puts the
original weights back bit for bit (they are kept, not recomputed).

Key formats read:

- kohya / A1111: ``lora_unet_<module>`` / ``lora_te_<module>`` (SDXL: ``lora_te1_`` and
  ``lora_te2_``) with ``.lora_down.weight``, ``.lora_up.weight`` and an optional ``.alpha``;
  ``<module>`` is the diffusers module name (SD 1.x/2.x files) or the LDM one (SDXL files:
  ``input_blocks_4_1_...``) with ``.`` written as ``_``; conv LoRAs (3x3 down, 1x1 up) in the
  resnets too.
- diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` (or the older
  ``.lora.down.weight`` / ``.lora.up.weight``), ``text_encoder.`` and ``text_encoder_2.``
  prefixes, an optional ``<module>.alpha``.

Anything else (unknown keys, LyCORIS' LoHa / LoKr / DoRA, a rank that does not match between
down and up, a module the model does not have or of another shape, e.g. an SDXL LoRA on SD 1.5)
is a :class:`unetviz.weights.WeightsError` naming the keys and how many matched; nothing is
fused unless everything is.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetviz.names import block_of, ldm_key
from unetviz.safetensors_io import offenders, read_tensors
from unetviz.weights import FLOAT_DTYPES, WeightsError, read_index
from unetviz.weights import load_unet as load_plain_unet

#: the largest LoRA file read (a 1.7 GB SDXL "LoRA" is a full fine-tune in disguise)
MAX_LORA_BYTES = 4 * 2**30
#: the largest scale accepted (``--lora FILE:SCALE``)
MAX_SCALE = 100.0

#: key fragments of LyCORIS / other adapter types, refused by name
_LYCORIS = ("hada_", "lokr_", "lora_mid", ".diff", "dora_scale", "oft_", "boft_", ".on_input")
_KOHYA_PREFIX = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
_KOHYA_PREFIX["lora_te2_"] = "text_encoder_2"
_KOHYA = re.compile(
    r"^(lora_unet_|lora_te1_|lora_te2_|lora_te_)(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
_PEFT = re.compile(
    r"^(unet|text_encoder|text_encoder_2)\.(.+?)\."
    r"(lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight|alpha)$"
)
_ROLE = {
    "lora_down.weight": "down",
    "lora_A.weight": "down",
    "lora.down.weight": "down",
    "lora_up.weight": "up",
    "lora_B.weight": "up",
    "lora.up.weight": "up",
    "alpha": "alpha",
}


@dataclass
class LoraModule:
    """One module's low-rank pair: ``part`` (``unet``, ``text_encoder``, ``text_encoder_2``),
    ``name`` as written in the file (kohya: underscores), ``down`` (r, in[, kh, kw]), ``up``
    (out, r[, 1, 1]), ``alpha`` (None: the rank)."""

    part: str
    name: str
    keys: list[str]
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0]) if self.down is not None else 0

    def delta(self, shape: Sequence[int], scale: float = 1.0) -> torch.Tensor:
        """``scale * alpha / rank * up @ down`` in float32, shaped as the weight (``shape``)."""
        down, up = self.down.float(), self.up.float()
        alpha = float(self.rank if self.alpha is None else self.alpha)
        product = up.flatten(1) @ down.flatten(1)  # (out, in * kh * kw)
        return (product * (scale * alpha / self.rank)).reshape(tuple(shape))


@dataclass
class LoraFile:
    """A LoRA file read and checked: its format and its modules (not yet matched to a model)."""

    path: Path
    format: str  # "kohya" | "peft"
    modules: list[LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def parts(self) -> set[str]:
        return {m.part for m in self.modules}


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read a LoRA ``.safetensors`` file (bounded header, finite float tensors) and group its
    keys by module; WeightsError for unknown or LyCORIS keys, a missing half of a pair or a
    rank that differs between down and up."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise WeightsError(f"{path}: LoRA files are read from .safetensors only (no pickles)")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise WeightsError(f"cannot read the LoRA file {path}: {exc.strerror or exc}") from None
    if size > MAX_LORA_BYTES:
        raise WeightsError(f"{path} is {size} bytes: a LoRA file may be at most {MAX_LORA_BYTES}")
    entries = read_index(path)
    if not entries:
        raise WeightsError(f"{path} holds no tensors: not a LoRA file")
    lycoris = sorted(k for k in entries if any(tag in k for tag in _LYCORIS))
    if lycoris:
        raise WeightsError(
            f"{path}: {len(lycoris)} LyCORIS / other adapter keys ({offenders(lycoris)}): only "
            "plain LoRA (down/up pairs, kohya or PEFT keys) is supported"
        )
    modules: dict[tuple[str, str], LoraModule] = {}
    unknown, formats = [], set()
    for key in entries:
        m = _KOHYA.match(key) or _PEFT.match(key)
        if m is None:
            unknown.append(key)
            continue
        fmt = "kohya" if key.startswith("lora_") else "peft"
        formats.add(fmt)
        part = _KOHYA_PREFIX[m.group(1)] if fmt == "kohya" else m.group(1)
        mod = modules.setdefault((part, m.group(2)), LoraModule(part, m.group(2), []))
        mod.keys.append(key)
    if unknown:
        raise WeightsError(
            f"{path}: {len(unknown)} of {len(entries)} keys are not LoRA keys "
            f"({offenders(sorted(unknown))}); expected kohya (lora_unet_*/lora_te_* with "
            "lora_down/lora_up/alpha) or PEFT (unet.*/text_encoder.* with lora_A/lora_B)"
        )
    if len(formats) > 1:
        raise WeightsError(f"{path} mixes kohya and PEFT keys: one format per file")
    bad = [e.key for e in entries.values() if e.dtype not in FLOAT_DTYPES]
    if bad:
        raise WeightsError(f"{path}: non-floating tensors {offenders(bad)}: not a LoRA file")
    tensors = dict(read_tensors(entries.values(), torch.float32, error=WeightsError))
    for mod in modules.values():
        for key in mod.keys:
            role = _ROLE[(_KOHYA.match(key) or _PEFT.match(key)).group(3)]
            if role == "alpha":
                if tensors[key].numel() != 1:
                    raise WeightsError(f"{path}: {key} has {tensors[key].numel()} values, not 1")
                mod.alpha = float(tensors[key].reshape(-1)[0])
            else:
                setattr(mod, role, tensors[key])
        _check_pair(path, mod)
    return LoraFile(path, formats.pop(), list(modules.values()))


def _check_pair(path: Path, mod: LoraModule) -> None:
    """Both halves present, 2-D (linear) or 4-D (conv), and of one rank."""
    if mod.down is None or mod.up is None:
        have = ", ".join(mod.keys)
        raise WeightsError(f"{path}: module {mod.name!r} has only {have}: a LoRA needs both halves")
    if mod.down.ndim not in (2, 4) or mod.up.ndim != mod.down.ndim:
        raise WeightsError(
            f"{path}: {mod.name!r} has down {tuple(mod.down.shape)} and up "
            f"{tuple(mod.up.shape)}: expected 2-D pairs (linear) or 4-D (conv)"
        )
    if mod.up.ndim == 4 and tuple(mod.up.shape[2:]) != (1, 1):
        raise WeightsError(f"{path}: {mod.name!r} up {tuple(mod.up.shape)}: expected a 1x1 conv")
    if mod.up.shape[1] != mod.down.shape[0] or mod.rank == 0:
        raise WeightsError(
            f"{path}: rank mismatch in {mod.name!r}: down {tuple(mod.down.shape)} has rank "
            f"{mod.down.shape[0]}, up {tuple(mod.up.shape)} has rank {mod.up.shape[1]}"
        )
    if mod.alpha is not None and not (math.isfinite(mod.alpha) and 0 < mod.alpha <= 1e6):
        raise WeightsError(f"{path}: {mod.name!r} alpha {mod.alpha}: expected 0 < alpha <= 1e6")


# ------------------------------------------------------------------------------ matching
def _weighted_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim in (2, 4)
    }


def module_table(part: str, model: nn.Module) -> dict[str, str]:
    """Every name a LoRA may give a module of ``model`` -> the module's own name: the dotted
    name (PEFT), the same with ``_`` (kohya) and, for a UNet, the LDM name with ``_`` (kohya
    SDXL files)."""
    table: dict[str, str] = {}
    config = getattr(model, "config", None) if part == "unet" else None
    for name in _weighted_modules(model):
        table[name] = name
        table[name.replace(".", "_")] = name
        if config is not None:
            try:
                ldm = ldm_key(name + ".weight", config)
            except Exception:  # noqa: BLE001 - a module outside the LDM tables
                ldm = None
            if ldm:
                table[ldm.removesuffix(".weight").replace(".", "_")] = name
    return table


@dataclass
class Match:
    """One LoRA module matched to a model's module: where the delta goes."""

    part: str
    name: str  # the model's module name
    module: nn.Module
    lora: LoraModule
    scale: float


def match_lora(lora: LoraFile, models: Mapping[str, nn.Module], scale: float = 1.0) -> list[Match]:
    """Every module of ``lora`` matched to a module of ``models`` (``{"unet": ...,
    "text_encoder": ..., "text_encoder_2": ...}``) with a delta of the weight's shape; else
    WeightsError naming the unmatched keys and how many matched (nothing partial)."""
    tables = {part: module_table(part, m) for part, m in models.items()}
    mods = {part: _weighted_modules(m) for part, m in models.items()}
    matched: list[Match] = []
    missing: list[str] = []
    misshaped: list[str] = []
    for mod in lora.modules:
        name = tables.get(mod.part, {}).get(mod.name)
        if name is None:
            missing.append(mod.keys[0])
            continue
        module = mods[mod.part][name]
        w = module.weight
        fan_in = int(math.prod(w.shape[1:]))
        if mod.up.shape[0] != w.shape[0] or mod.down[0].numel() != fan_in:
            misshaped.append(
                f"{mod.keys[0]} (up {tuple(mod.up.shape)}, down {tuple(mod.down.shape)} for "
                f"{name} {tuple(w.shape)})"
            )
            continue
        matched.append(Match(mod.part, name, module, mod, scale))
    if missing or misshaped:
        parts = []
        if missing:
            absent = sorted({m.part for m in lora.modules} - set(models))
            where = f" (this model has no {', '.join(absent)})" if absent else ""
            parts.append(f"{len(missing)} modules not in the model{where}: {offenders(missing)}")
        if misshaped:
            parts.append(f"{len(misshaped)} of another shape: {offenders(misshaped)}")
        raise WeightsError(
            f"{lora.path}: LoRA does not fit this model ({len(matched)} of {len(lora.modules)} "
            f"modules matched; a LoRA for another base model?): " + "; ".join(parts)
        )
    return matched


# ------------------------------------------------------------------------------ fusing
def check_scale(scale: Any, where: str = "LoRA scale") -> float:
    """A finite scale with |scale| <= MAX_SCALE."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise WeightsError(f"{where} {scale!r}: expected a number")
    if not (math.isfinite(scale) and abs(scale) <= MAX_SCALE):
        raise WeightsError(f"{where} {scale!r}: expected a finite number, |scale| <= {MAX_SCALE:g}")
    return float(scale)


LoraSpec = str | os.PathLike | tuple[str | os.PathLike, float]


def parse_specs(loras: Iterable[LoraSpec] | None) -> list[tuple[Path, float]]:
    """``[(path, scale)]`` from paths or ``(path, scale)`` pairs (scale 1.0 when omitted)."""
    out = []
    for item in loras or []:
        path, scale = (item, 1.0) if isinstance(item, (str, os.PathLike)) else tuple(item)
        out.append((Path(path), check_scale(scale, f"LoRA {Path(path).name} scale")))
    return out


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` (the CLI's ``--lora``) -> ``(path, scale)``; a suffix after the last
    ``:`` that is not a number belongs to the path. The file must exist."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            pass
        else:
            path = head
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"--lora {text!r}: {path!r} is not a file (expected FILE[:SCALE])")
    return p, check_scale(scale, f"--lora {text!r} scale")


class FusedLoras:
    """LoRAs fused into models' weights. ``unfuse()`` restores every touched weight from the
    copy kept at fusing time (bit for bit); ``changes`` is the per-module relative change."""

    def __init__(
        self,
        matches: list[Match],
        originals: dict[tuple[str, str], torch.Tensor],
        files: list[tuple[Path, float]],
    ):
        self.matches = matches
        self.files = files  # [(path, scale)] in the order fused
        self._originals = originals

    def unfuse(self) -> None:
        """Put back the weights as they were before fusing."""
        done = set()
        for m in self.matches:
            key = (m.part, m.name)
            if key in done:
                continue
            with torch.no_grad():
                m.module.weight.copy_(self._originals[key])
            done.add(key)
        self._originals.clear()


def fuse_loras(models: Mapping[str, nn.Module], loras: Iterable[LoraSpec] | None) -> FusedLoras:
    """Read, match (every file fully, before any weight changes) and fuse ``loras`` into
    ``models``; the deltas are computed in float32 and added in the weight's dtype."""
    matches: list[Match] = []
    specs = parse_specs(loras)
    for path, scale in specs:
        matches += match_lora(read_lora(path), models, scale)
    originals: dict[tuple[str, str], torch.Tensor] = {}
    with torch.no_grad():
        for m in matches:
            w = m.module.weight
            originals.setdefault((m.part, m.name), w.detach().clone())
            delta = m.lora.delta(w.shape, m.scale).to(w.device)
            w.copy_((w.float() + delta).to(w.dtype))
    return FusedLoras(matches, originals, specs)


def load_unet(
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    loras: Iterable[LoraSpec] | None = None,
) -> nn.Module:
    """:func:`unetviz.weights.load_unet` (``unetviz.load_unet``), then ``loras`` (``[(file,
    scale), ...]``) fused into the UNet, kept as ``unet.loras`` for ``unet.loras.unfuse()``. A
    file's text-encoder keys are refused: ``load_pipeline(..., loras=)`` applies those."""
    specs = parse_specs(loras)  # checked before the weights load
    model = load_plain_unet(path, dtype=dtype, device=device)
    if specs:
        model.loras = fuse_loras({"unet": model}, specs)
    return model


# ------------------------------------------------------------------------------ changes
def relative_changes(
    lora: str | os.PathLike | LoraFile, models: Mapping[str, nn.Module], scale: float = 1.0
) -> list[dict[str, Any]]:
    """Per matched module: ``{"part", "module", "block", "change"}`` with change =
    ‖ΔW‖ / ‖W‖ (Frobenius), largest first; ``block`` is the UNet block (``down_blocks.1``,
    ``mid_block``, ...) or the text encoder part."""
    lora = lora if isinstance(lora, LoraFile) else read_lora(lora)
    rows = []
    for m in match_lora(lora, models, check_scale(scale)):
        w = m.module.weight.detach().float()
        delta = m.lora.delta(w.shape, m.scale)
        norm = float(w.norm())
        rows.append(
            {
                "part": m.part,
                "module": m.name,
                "block": block_of(m.name) if m.part == "unet" else m.part,
                "change": float(delta.norm()) / norm if norm > 0 else math.inf,
            }
        )
    return sorted(rows, key=lambda r: -r["change"])


def block_changes(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-module changes summed to blocks: ``{"block", "change", "modules"}``, largest
    first (the table ``unetviz diagram --lora`` prints and fills the U diagram with)."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        sums.setdefault(r["block"], []).append(float(r["change"]))
    table = [{"block": b, "change": sum(v), "modules": len(v)} for b, v in sums.items()]
    return sorted(table, key=lambda r: -r["change"])


def lora_change_table(
    lora: str | os.PathLike | LoraFile, models: Mapping[str, nn.Module], scale: float = 1.0
) -> list[dict[str, Any]]:
    """What a LoRA changes, per block: :func:`relative_changes` summed by :func:`block_changes`."""
    return block_changes(relative_changes(lora, models, scale))


#: the diagram's fill label for a LoRA's change (the CLI's and the app's U diagrams)
FILL_LABEL = "LoRA: sum of ‖ΔW‖/‖W‖"


def block_fill(rows: Sequence[Mapping[str, Any]], names: Iterable[str]) -> dict[str, float]:
    """A diagram's ``fill``: every node of the U among ``names`` (the drawn trace's block,
    layer or module names) at the summed change of the rows inside it, unchanged ones at 0, so
    the U shows where the LoRA acts and where it does not. ``rows``: :func:`relative_changes`'
    modules (any detail) or :func:`block_changes`' blocks (blocks detail)."""
    keyed = [
        (str(r.get("module") or r["block"]), float(r["change"]))
        for r in rows
        if r.get("part", "unet") == "unet"
    ]
    u = ("down_blocks", "mid_block", "up_blocks")
    fill = {}
    for name in set(names):
        inside = [c for key, c in keyed if key == name or key.startswith(name + ".")]
        if inside or name.startswith(u):
            fill[name] = sum(inside)
    return fill
