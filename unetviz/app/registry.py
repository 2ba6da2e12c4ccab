"""Which models the app may touch, and the one lock every model-touching call holds.

- Architecture views build a UNet on the ``meta`` device (no weights, no memory) from the demo
  model's config, a preset (``sd15`` / ``sd21`` / ``sdxl``) or a local folder's ``config.json``,
  run one meta forward under ``unetviz.capture`` and keep the resulting Trace (shapes only).
- Generations load a pipeline (``unetviz.load_pipeline``) once and keep it; calls are
  serialised by :attr:`ModelRegistry.lock` so two sessions never interleave their captures.
- A folder typed in the UI must resolve (symlinks followed) inside one of the allowed model
  roots: nothing else on disk is ever read.
- LoRA files are the ``.safetensors`` files inside the roots whose keys name LoRA pairs (read
  from the header only), plus the demo LoRAs shipped in ``examples/``; a run fuses the chosen
  ones for its length only (:meth:`ModelRegistry.generate`), so none leaks into the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetviz.errors import UnetvizError

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS = ("sd15", "sd21", "sdxl")
DEMO = "demo"
ROOTS_ENV = "UNETVIZ_MODEL_ROOTS"
THREADS_ENV = "UNETVIZ_TORCH_THREADS"
#: torch intra-op threads while the demo model runs: its ops are tiny, and on a busy 2-core
#: machine two spinning threads made 10 steps take 25 s instead of 0.6 s (bench/app.py)
DEMO_THREADS = 1
#: latent side per pixel side for latent-diffusion models (SD's VAE downsamples 8x)
VAE_FACTOR = 8
#: the LoRAs shipped for the demo model (offered whatever the roots hold)
SHIPPED_LORAS = ("examples/yellow.safetensors",)
NO_LORA = "none"
MAX_LORAS = 8  # LoRAs fused into one run at most
#: how many files and folder levels a scan of the roots for LoRA files visits at most
LORA_SCAN_FILES, LORA_SCAN_DEPTH = 4000, 4


@dataclass(frozen=True)
class LoraChange:
    """What LoRAs change in one model's weights: ``names`` (files and scales), the cache
    ``key``, ``table`` per block (``unetviz.lora.block_changes``: block, change, modules) and
    ``modules`` per module (what a layers or modules diagram is filled by)."""

    names: str
    key: tuple
    table: list[dict[str, Any]]
    modules: list[dict[str, Any]]  # ``unetviz.lora.relative_changes``: per module


class ModelAccessError(UnetvizError):
    """A model name or folder the app will not open (unknown, outside the roots, not a model)."""


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model choice: what to build and how pixels map to the UNet's sample."""

    key: str  # "demo", "sd15", ... or the resolved folder path
    label: str
    config: dict[str, Any]
    factor: int  # pixels per latent cell (1: pixel-space demo, 8: SD)
    tokens: int  # text tokens fed to cross-attention
    folder: Path | None = None  # a local folder (or the demo folder) that can be run

    @property
    def default_size(self) -> int:
        """The model's native image side in pixels."""
        return int(self.config.get("sample_size", 64)) * self.factor


def default_roots() -> list[Path]:
    """Model roots when none are configured: ``$UNETVIZ_MODEL_ROOTS`` (os.pathsep-separated),
    else ``<repo>/assets`` and ``./models``."""
    env = os.environ.get(ROOTS_ENV, "").strip()
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p.strip()]
    return [REPO_ROOT / "assets", Path.cwd() / "models"]


class ModelRegistry:
    """Resolves model choices, caches architecture traces and pipelines, owns the model lock."""

    def __init__(
        self,
        roots: Iterable[str | os.PathLike] | None = None,
        demo_folder: str | os.PathLike | None = None,
        max_pipelines: int = 2,
        threads: int | None = None,
        dtype: str | None = None,
        device: str | None = None,
    ) -> None:
        self.roots = [Path(r).expanduser().resolve() for r in (roots or default_roots())]
        self.demo_folder = Path(demo_folder) if demo_folder else None
        self.lock = threading.RLock()  # held around every pipeline load and call
        self._arch_lock = threading.Lock()
        self._arch: OrderedDict[tuple, Any] = OrderedDict()
        self._pipes: OrderedDict[str, Any] = OrderedDict()
        self._lora_changes: OrderedDict[tuple, LoraChange] = OrderedDict()
        self.max_pipelines = max_pipelines
        #: Stable Diffusion models load in ``dtype`` on ``device`` (``unetviz app --dtype
        #: bfloat16``: SDXL's weights in half the memory); the demo only takes the device
        self.dtype, self.device = dtype, device
        env = os.environ.get(THREADS_ENV, "").strip()
        # ASCII digits only ("²".isdigit() is True); a bad value means "not set"
        self.threads = threads if threads else (int(env) if re.fullmatch("[0-9]{1,4}", env) and int(env) else None)  # fmt: skip
        self._default_threads: int | None = None

    # ------------------------------------------------------------------ paths
    def resolve_folder(self, text: str, allow_file: bool = False) -> Path:
        """A typed folder (or, with ``allow_file``, a single checkpoint file) -> its resolved
        path, if it lies inside an allowed root.

        A relative path is taken from the folder the app was started in (``models/x`` when
        ``models`` is a root), then from each root in turn. Raises ModelAccessError naming the
        path and the roots otherwise."""
        raw = (text or "").strip()
        if not raw:
            raise ModelAccessError("empty model folder: type a folder inside the model roots")
        if "\x00" in raw:
            raise ModelAccessError("model folder path contains a NUL byte")
        p = Path(raw).expanduser()
        candidates = [p] if p.is_absolute() else [Path.cwd() / p, *(r / p for r in self.roots)]
        for cand in candidates:
            real = cand.resolve()
            if any(real == root or real.is_relative_to(root) for root in self.roots):
                if not (real.is_dir() or (allow_file and real.is_file())):
                    continue
                return real
        if not any(
            real == root or real.is_relative_to(root)
            for real in (cand.resolve() for cand in candidates)
            for root in self.roots
        ):
            raise ModelAccessError(
                f"model folder {raw!r} is outside the allowed model roots "
                f"{[str(r) for r in self.roots]}; start the app with --model-root "
                f"(or set {ROOTS_ENV}) to allow another folder"
            )
        raise ModelAccessError(
            f"model folder {raw!r} does not exist inside the model roots "
            f"{[str(r) for r in self.roots]}"
        )

    # ------------------------------------------------------------------ LoRAs
    def lora_choices(self) -> list[tuple[str, str]]:
        """(label, value) of every LoRA file the app offers: "none", the shipped demo LoRAs,
        then the adapter files inside the roots (by path below their root). Read from the
        safetensors headers only (no torch): the page's dropdowns are built with it."""
        out = [(NO_LORA, NO_LORA)]
        for rel in SHIPPED_LORAS:
            if (REPO_ROOT / rel).is_file():
                out.append((f"{rel} (demo model)", rel))
        seen = {str((REPO_ROOT / rel).resolve()) for rel in SHIPPED_LORAS}
        for root in self.roots:
            for path in _scan_safetensors(root):
                real = str(path.resolve())
                if real not in seen and looks_like_adapter(path):
                    seen.add(real)
                    rel = str(path.relative_to(root))
                    out.append((rel, rel))
        return out

    def resolve_lora(self, text: str) -> Path:
        """A LoRA choice (a shipped demo LoRA, or a ``.safetensors`` file inside the roots) ->
        its path; ModelAccessError for anything else (the dropdown's value can be forged)."""
        raw = (text or "").strip()
        if raw in SHIPPED_LORAS:
            return REPO_ROOT / raw
        try:
            path = self.resolve_folder(raw, allow_file=True)
        except ModelAccessError as exc:
            raise ModelAccessError(f"LoRA: {exc}") from None
        if not path.is_file() or path.suffix.lower() != ".safetensors":
            raise ModelAccessError(f"LoRA {raw!r}: expected a .safetensors file in the model roots")
        return path

    def loras(self, choice: Any, scale: Any) -> list[tuple[Path, float]]:
        """The run's ``[(path, scale)]`` from a LoRA control (one value or a list; "none" and
        empty: no LoRA) and its scale slider."""
        values = choice if isinstance(choice, list | tuple) else [choice]
        picked = [v for v in values if v and str(v).strip() not in ("", NO_LORA)]
        if not picked:
            return []
        if len(picked) > MAX_LORAS:
            raise ModelAccessError(f"{len(picked)} LoRAs chosen: at most {MAX_LORAS} per run")
        from unetviz.callargs import as_float

        s = as_float(scale if scale is not None else 1.0, "LoRA scale", -10.0, 10.0,
                     error=ModelAccessError)  # fmt: skip
        return [(self.resolve_lora(str(v)), s) for v in dict.fromkeys(picked)]

    def lora_change(self, spec: ModelSpec, choice: Any, scale: Any) -> tuple[Any, str]:
        """(what the chosen LoRA changes in ``spec``'s weights per block, a note): (None, "")
        when no LoRA is chosen, (None, why) for a model without weights here (a preset: the
        diagram is drawn unfilled). Read under the model lock (a run fuses LoRAs into the
        same weights) and cached by model, file (with its mtime) and scale; a LoRA that does
        not fit the model raises ``unetviz.lora``'s WeightsError."""
        loras = self.loras(choice, scale)
        if not loras:
            return None, ""
        if spec.folder is None:
            return None, (
                f"no LoRA fill: a LoRA's change is read from the model's weights, and "
                f"{spec.label} has none here (shapes only); choose the demo model or a folder"
            )
        key = (spec.key, tuple((str(p), p.stat().st_mtime_ns, w) for p, w in loras))
        with self._arch_lock:
            hit = self._lora_changes.get(key)
        if hit is not None:
            return hit, ""
        from unetviz.lora import block_changes, relative_changes

        with self.lock:
            pipe = self.pipeline(DEMO if spec.key == DEMO else str(spec.folder))
            models = pipe.lora_models()
            rows = [r for p, w in loras for r in relative_changes(p, models, w)]
        names = " + ".join(f"{p.name} ×{w:g}" for p, w in loras)
        change = LoraChange(names, key, block_changes(rows), rows)
        with self._arch_lock:
            self._lora_changes[key] = change
            while len(self._lora_changes) > 16:
                self._lora_changes.popitem(last=False)
        return change, ""

    # ------------------------------------------------------------------ specs
    def demo_dir(self) -> Path:
        """The demo model's folder (``--demo``, else the shipped one)."""
        if self.demo_folder is not None:
            return self.demo_folder
        from unetviz.detect import DEMO_DIR

        return DEMO_DIR

    def demo_words(self) -> list[str]:
        """The demo model's vocabulary, read from its tokenizer without torch ([] if it cannot
        be read: the page then lists no words)."""
        from unetviz.detect import demo_words

        try:
            return demo_words(self.demo_dir())
        except (OSError, ValueError):  # ConfigError is a ValueError
            return []

    def is_demo(self, text: str) -> bool:
        """``"demo"``, or a path naming the demo folder (``assets/demo`` from the repo, the
        shipped folder itself, ``--demo``'s folder)."""
        raw = (text or "").strip()
        if raw in ("", DEMO):
            return True
        if "\x00" in raw:
            return False
        demo = self.demo_dir().resolve()
        p = Path(raw).expanduser()
        return any(c.resolve() == demo for c in (p, REPO_ROOT / p) if c.exists())

    def spec(self, choice: str, folder: str = "") -> ModelSpec:
        """``choice``: "demo", a preset name, or "folder" (then ``folder`` is the typed path)."""
        from unetviz.config import UNetConfig, read_json

        choice = (choice or "").strip()
        if choice == DEMO:
            cfg_path = self.demo_dir() / "unet" / "config.json"
            if cfg_path.is_file():
                config = read_json(cfg_path)
            else:
                from unetviz.pipelines.demo import demo_unet_config

                config = demo_unet_config()
            config = UNetConfig.from_dict(config).to_dict()
            factor, tokens = _demo_geometry(self.demo_dir())
            return ModelSpec(DEMO, "demo model", config, factor, tokens, self.demo_dir())
        if choice in PRESETS:
            config = UNetConfig.preset(choice).to_dict()
            return ModelSpec(choice, f"{choice} preset (meta)", config, VAE_FACTOR, 77)
        if choice == "folder":
            path = self.resolve_folder(folder)
            for cfg_path in (path / "unet" / "config.json", path / "config.json"):
                if cfg_path.is_file():
                    break
            else:
                raise ModelAccessError(
                    f"{path} holds no UNet config: expected unet/config.json or config.json"
                )
            try:
                config = UNetConfig.from_json(cfg_path).to_dict()
            except Exception as exc:  # ConfigError and malformed JSON alike
                raise ModelAccessError(f"{cfg_path}: not a UNet config ({exc})") from None
            from unetviz.detect import is_demo_folder

            factor, tokens = _demo_geometry(path) if is_demo_folder(path) else (VAE_FACTOR, 77)
            return ModelSpec(str(path), path.name, config, factor, tokens, path)
        raise ModelAccessError(
            f"unknown model {choice!r}: expected 'demo', one of {list(PRESETS)} or 'folder'"
        )

    # ------------------------------------------------------------------ architecture
    def architecture(self, spec: ModelSpec, height: int, width: int, batch: int) -> Any:
        """A shapes-only Trace (detail="modules") of one meta forward, cached."""
        key = (spec.key, json.dumps(spec.config, sort_keys=True), height, width, batch)
        with self._arch_lock:
            if key in self._arch:
                self._arch.move_to_end(key)
                return self._arch[key]
        trace = architecture_trace(spec, height, width, batch)
        with self._arch_lock:
            self._arch[key] = trace
            while len(self._arch) > 16:
                self._arch.popitem(last=False)
        return trace

    # ------------------------------------------------------------------ pipelines
    def pipeline(self, choice: str) -> Any:
        """The pipeline for "demo" or a folder inside the roots (loaded once, under the lock)."""
        from unetviz.pipelines import load_pipeline

        choice = (choice or "").strip() or DEMO
        if self.is_demo(choice):
            key = DEMO
        else:
            key = str(self.resolve_folder(choice, allow_file=True))
        with self.lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            if key == DEMO:
                pipe = load_pipeline(self.demo_folder or DEMO, device=self.device)
            else:
                pipe = load_pipeline(key, dtype=self.dtype, device=self.device)
            self._pipes[key] = pipe
            while len(self._pipes) > self.max_pipelines:
                self._pipes.popitem(last=False)
            return pipe

    def apply_thread_policy(self) -> None:
        """Torch intra-op threads for the app process: ``threads`` (``$UNETVIZ_TORCH_THREADS``)
        or 1. Re-aggregation and the demo model are small ops where a second spinning thread
        on a busy 2-core machine costs 10-40x (bench/app.py); other pipelines get torch's
        default back while they generate (see :meth:`generate`)."""
        import torch

        with self._arch_lock:
            if self._default_threads is None:
                self._default_threads = torch.get_num_threads()
                torch.set_num_threads(self.threads or DEMO_THREADS)

    def generate(self, choice: str, loras: Sequence[tuple[Path, float]] = (), **kwargs: Any) -> Any:
        """Run a pipeline under the model lock; returns its Run. ``loras`` (``[(path,
        scale)]``) are fused for this call only and unfused (bit for bit) before the lock is
        released, so the next run never sees them. Torch threads for the call: ``threads`` if
        set, else 1 for the demo model and torch's default for others."""
        self.apply_thread_policy()  # no-op once applied
        with self.lock:
            pipe = self.pipeline(choice)
            with self.fused(pipe, loras):
                return self._call(pipe, **kwargs)

    @contextlib.contextmanager
    def fused(self, pipe: Any, loras: Sequence[tuple[Path, float]] = ()) -> Iterator[Any]:
        """``loras`` fused into ``pipe`` for the ``with`` (hold :attr:`lock`); the weights and
        ``pipe.loras`` are put back on the way out, also after an error. A file that does not
        fit is refused before any weight changes (``unetviz.lora``)."""
        if not loras:
            yield None
            return
        before = getattr(pipe, "loras", None)
        fused = pipe.fuse_loras(list(loras))
        try:
            yield fused
        finally:
            fused.unfuse()
            pipe.loras = before

    def _call(self, pipe: Any, **kwargs: Any) -> Any:
        """``pipe(**kwargs)`` on the torch threads the policy gives it (hold :attr:`lock`)."""
        import torch

        if self.threads:
            want = self.threads
        elif getattr(pipe, "name", "") == DEMO:
            want = DEMO_THREADS
        else:
            want = self._default_threads or torch.get_num_threads()
        before = torch.get_num_threads()
        torch.set_num_threads(want)
        try:
            return pipe(**kwargs)
        finally:
            torch.set_num_threads(before)

    def preload(self) -> threading.Thread:
        """Import torch, apply the thread policy and load the demo pipeline in a background
        thread, so the first page is served before any of that (start-up stays fast)."""

        def work() -> None:
            try:
                self.apply_thread_policy()
                self.pipeline(DEMO)
            except Exception:  # shown to the user on first Run instead
                pass

        t = threading.Thread(target=work, name="unetviz-preload", daemon=True)
        t.start()
        return t


def _demo_geometry(folder: Path) -> tuple[int, int]:
    """(pixels per latent cell, context tokens) of a demo-format folder
    (``unetviz.detect.demo_geometry``: 1 and 16 for the pixel model, the VAE's factor for a
    latent one); (1, 16) when its configs cannot be read (the load then says why)."""
    from unetviz.detect import demo_geometry

    try:
        return demo_geometry(folder)
    except (OSError, ValueError):
        return 1, 16


def _scan_safetensors(root: Path) -> Iterator[Path]:
    """``*.safetensors`` files below ``root`` (at most :data:`LORA_SCAN_DEPTH` levels and
    :data:`LORA_SCAN_FILES` entries; symlinks leaving the root skipped), in name order."""
    seen = 0
    stack = [(root, 0)]
    found = []
    while stack and seen < LORA_SCAN_FILES:
        folder, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            seen += 1
            if seen > LORA_SCAN_FILES:
                break
            path = Path(e.path)
            try:
                if not path.resolve().is_relative_to(root):
                    continue
                if e.is_dir() and depth + 1 < LORA_SCAN_DEPTH:
                    stack.append((path, depth + 1))
                elif e.is_file() and e.name.lower().endswith(".safetensors"):
                    found.append(path)
            except OSError:
                continue
    return iter(sorted(found))


def looks_like_adapter(path: Path) -> bool:
    """Whether a safetensors file's header names adapter weights (a key with ``lora``, or
    LyCORIS' ``hada_`` / ``lokr_``): such files are offered as LoRAs, and ``unetviz.lora``
    decides at run time whether it can fuse one (its refusal names the keys). A model
    checkpoint has none of these. Reads the header only."""
    from unetviz.safetensors_io import read_header

    try:
        with open(path, "rb") as fh:
            entries, _ = read_header(fh, os.fstat(fh.fileno()).st_size)
    except (OSError, EOFError, ValueError):
        return False
    marks = ("lora", "hada_", "lokr_")
    return any(any(m in e.name.lower() for m in marks) for e in entries)


def size_multiple(spec: ModelSpec) -> int:
    """Image sides must be multiples of this (latent factor x 2**downsamplers)."""
    n_down = max(len(spec.config.get("down_block_types", ())) - 1, 0)
    return spec.factor * 2**n_down


def architecture_state(spec: ModelSpec, height: int, width: int, batch: int) -> dict[str, Any]:
    """``spec``'s UNet at ``height`` x ``width`` pixels with UNet batch ``batch``: every
    module's shapes, params and MACs, no weights, as the Trace's JSON state
    (``unetviz.structure.structure``: the shipped preset structures or the on-disk cache, with
    no torch import; else one meta forward). ``unetviz.render`` reads it like a Trace. The size
    check is ``UNetConfig.check_size``."""
    from unetviz.structure import as_config, structure

    cfg, preset_label = as_config(spec.key if spec.key in PRESETS else dict(spec.config))
    h, w = cfg.check_size(int(height), int(width), scale=spec.factor)
    if not 1 <= int(batch) <= 64:
        raise ModelAccessError(f"batch={batch}: expected 1..64")
    label = spec.label or preset_label
    return structure(cfg, h, w, int(batch), "modules", label, True, spec.tokens, spec.factor)


def architecture_trace(spec: ModelSpec, height: int, width: int, batch: int) -> Any:
    """:func:`architecture_state` as a :class:`unetviz.capture.Trace` (imports torch)."""
    from unetviz.capture import Trace

    return Trace.from_state(architecture_state(spec, height, width, batch), {})


def describe_roots(roots: Sequence[Path]) -> str:
    """The roots as one short line for the UI."""
    return ", ".join(f"`{r}`" for r in roots) or "(none)"
