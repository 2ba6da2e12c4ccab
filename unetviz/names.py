"""Three names for every part of the UNet: diffusers' module name, the original (LDM)
single-file checkpoint key, and the A1111 block label.

    diffusers                        LDM single-file key        A1111
    conv_in                          input_blocks.0.0           IN00
    down_blocks.1.attentions.0       input_blocks.4.1           IN04
    down_blocks.0.downsamplers.0     input_blocks.3.0           IN03
    mid_block.attentions.0           middle_block.1             M00
    up_blocks.1.resnets.2            output_blocks.5.0          OUT05
    up_blocks.1.upsamplers.0         output_blocks.5.2          OUT05
    time_embedding.linear_1          time_embed.0               -
    conv_out                         out.2                      -

The layout is derived from the config (block types, ``layers_per_block``), so SD 1.x, SD 2.x,
SDXL and any other config unetviz accepts are covered. Single-file checkpoints prefix every key
with :data:`LDM_PREFIX`. Nothing here imports torch: the mapping is plain string work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UnetvizError

#: The prefix of every UNet key in an original single-file (``.ckpt`` / ``.safetensors``) model.
LDM_PREFIX = "model.diffusion_model."

# diffusers' ResnetBlock2D submodules -> LDM ResBlock submodules
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_BACK = {v: k for k, v in _RESNET.items()}

# top-level modules (diffusers prefix -> LDM prefix); longest match wins
_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "time_embedding": "time_embed",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "add_embedding": "label_emb.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


class UnknownNameError(UnetvizError):
    """A name that is not part of the UNet described by the config."""


@dataclass(frozen=True)
class Names:
    """The three names of one block or layer.

    ``ldm`` is a key prefix (``input_blocks.4.1``); a diffusers block that spans several LDM
    blocks (``down_blocks.1`` = ``input_blocks.4`` .. ``input_blocks.6``) lists them all in
    ``ldm_all`` and shows the span in ``ldm`` (``input_blocks.4-6``) and ``a1111``
    (``IN04-IN06``). ``a1111`` is ``None`` for parts outside the IN/M/OUT blocks.
    """

    diffusers: str
    ldm: str | None
    a1111: str | None
    ldm_all: tuple[str, ...] = ()


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _per_block(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),) * n


class UNetNames:
    """The name tables of one UNet layout. ``config`` is a :class:`unetviz.UNetConfig` or a
    diffusers-style config dict (``trace.meta["config"]``); only the block types and
    ``layers_per_block`` are read."""

    def __init__(self, config: Any):
        down = list(_get(config, "down_block_types") or ())
        up = list(_get(config, "up_block_types") or ())
        if not down or len(up) != len(down):
            raise ValueError(
                "config needs down_block_types and up_block_types of the same non-zero length, "
                f"got {len(down)} and {len(up)}"
            )
        n = len(down)
        layers = _per_block(_get(config, "layers_per_block", 2), n)
        self.down_block_types = tuple(down)
        self.up_block_types = tuple(up)
        self.layers = layers
        # diffusers prefix -> LDM prefix, for every layer-level module
        self._to_ldm: dict[str, str] = {}
        # diffusers block -> list of LDM block prefixes (input_blocks.i / output_blocks.i)
        self._block_span: dict[str, list[str]] = {}

        idx = 1  # input_blocks.0 is conv_in
        for i, kind in enumerate(down):
            span = []
            for j in range(layers[i]):
                self._to_ldm[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{idx}.0"
                if kind.startswith("CrossAttn"):
                    self._to_ldm[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{idx}.1"
                span.append(f"input_blocks.{idx}")
                idx += 1
            if i < n - 1:
                self._to_ldm[f"down_blocks.{i}.downsamplers.0"] = f"input_blocks.{idx}.0"
                span.append(f"input_blocks.{idx}")
                idx += 1
            self._block_span[f"down_blocks.{i}"] = span
        self.n_input_blocks = idx

        self._to_ldm["mid_block.resnets.0"] = "middle_block.0"
        if _get(config, "mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2D":
            self._to_ldm["mid_block.attentions.0"] = "middle_block.1"
            self._to_ldm["mid_block.resnets.1"] = "middle_block.2"  # (SSD-1B, Vega: one resnet)
        self._block_span["mid_block"] = ["middle_block"]

        rlayers = list(reversed(layers))
        idx = 0
        for i, kind in enumerate(up):
            span = []
            for j in range(rlayers[i] + 1):
                self._to_ldm[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{idx}.0"
                if kind.startswith("CrossAttn"):
                    self._to_ldm[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{idx}.1"
                span.append(f"output_blocks.{idx}")
                idx += 1
            if i < n - 1:
                sub = 2 if kind.startswith("CrossAttn") else 1
                self._to_ldm[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{idx - 1}.{sub}"
            self._block_span[f"up_blocks.{i}"] = span
        self.n_output_blocks = idx

        self._to_ldm.update(_TOP)
        self._from_ldm = {v: k for k, v in self._to_ldm.items()}
        self._from_ldm["time_embed"] = "time_embedding"
        self._from_ldm["label_emb.0"] = "add_embedding"

    # ------------------------------------------------------------------ lookups
    def layer_names(self) -> list[str]:
        """Every diffusers block and layer name, in forward order (top-level modules, down
        blocks with their layers, mid, up blocks with their layers)."""
        out = ["time_embedding", "conv_in"]
        for block in self._block_span:
            out.append(block)
            out.extend(k for k in self._to_ldm if k.startswith(block + "."))
        out += ["conv_norm_out", "conv_out"]
        return out

    def ldm(self, name: str) -> str | None:
        """LDM key (prefix) of a diffusers module or parameter name; ``None`` for parts with no
        LDM counterpart (``time_proj``, ``conv_act``, ``add_time_proj``: parameter-free).
        A whole diffusers block spanning several LDM blocks gives the span
        (``input_blocks.4-6``); use :meth:`names` for the list."""
        if name in self._block_span:
            span = self._block_span[name]
            return span[0] if len(span) == 1 else _span(span)
        prefix, rest = self._split(name)
        if prefix is None:
            if name.split(".")[0] in ("time_proj", "conv_act", "add_time_proj"):
                return None
            raise UnknownNameError(f"{name!r} is not a module of this UNet layout")
        base = self._to_ldm[prefix]
        if rest and (".resnets." in prefix or prefix.startswith("mid_block.resnets")):
            head, _, tail = rest.partition(".")
            rest = _RESNET.get(head, head) + ("." + tail if tail else "")
        elif rest and (".downsamplers." in prefix):
            head, _, tail = rest.partition(".")
            rest = ("op" if head == "conv" else head) + ("." + tail if tail else "")
        return base + ("." + rest if rest else "")

    def diffusers(self, key: str) -> str:
        """Diffusers name of an LDM key (with or without :data:`LDM_PREFIX`)."""
        key = key.removeprefix(LDM_PREFIX)
        parts = key.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in self._from_ldm:
                name, rest = self._from_ldm[prefix], parts[cut:]
                break
        else:
            raise UnknownNameError(f"{key!r} is not an LDM key of this UNet layout")
        if rest and (".resnets." in name or name.startswith("mid_block.resnets")):
            for n_head in (2, 1):
                head = ".".join(rest[:n_head])
                if head in _RESNET_BACK:
                    rest = [_RESNET_BACK[head], *rest[n_head:]]
                    break
        elif rest and ".downsamplers." in name and rest[0] == "op":
            rest = ["conv", *rest[1:]]
        return ".".join([name, *rest])

    def a1111(self, name: str) -> str | None:
        """A1111 block label (``IN00`` .. ``IN11``, ``M00``, ``OUT00`` .. ``OUT11`` for SD 1.x;
        ``IN08`` / ``OUT08`` at most for SDXL) of a diffusers name; a whole diffusers block
        gives the span (``IN04-IN06``); ``None`` outside the IN/M/OUT blocks."""
        if name in self._block_span:
            labels = [_label(s) for s in self._block_span[name]]
            return labels[0] if len(labels) == 1 else f"{labels[0]}-{labels[-1]}"
        ldm = self.ldm(name)
        return _label(ldm) if ldm else None

    def names(self, name: str) -> Names:
        """All three names of a diffusers block, layer, module or parameter name."""
        ldm = self.ldm(name)
        span = tuple(self._block_span.get(name, [ldm] if ldm else []))
        return Names(name, ldm, self.a1111(name), span)

    def _split(self, name: str) -> tuple[str | None, str]:
        parts = name.split(".")
        for cut in range(min(len(parts), 4), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in self._to_ldm:
                return prefix, ".".join(parts[cut:])
        return None, name


def _span(span: list[str]) -> str:
    first, last = span[0], span[-1]
    return f"{first}-{last.rsplit('.', 1)[1]}"


_LABEL_RE = re.compile(r"^(input_blocks|middle_block|output_blocks)(?:\.(\d+))?")


def _label(ldm: str) -> str | None:
    m = _LABEL_RE.match(ldm)
    if not m:
        return None
    kind, idx = m.group(1), m.group(2)
    if kind == "middle_block":
        return "M00"
    return ("IN" if kind == "input_blocks" else "OUT") + f"{int(idx):02d}"


_CACHE: dict[tuple, UNetNames] = {}


def unet_names(config: Any) -> UNetNames:
    """A cached :class:`UNetNames` for ``config`` (UNetConfig or dict)."""
    down = tuple(_get(config, "down_block_types") or ())
    up = tuple(_get(config, "up_block_types") or ())
    lpb = _get(config, "layers_per_block", 2)
    key = (down, up, tuple(lpb) if isinstance(lpb, (list, tuple)) else lpb)
    if key not in _CACHE:
        _CACHE[key] = UNetNames(config)
    return _CACHE[key]


def ldm_key(name: str, config: Any) -> str | None:
    """LDM single-file key (prefix, without ``model.diffusion_model.``) of a diffusers name."""
    return unet_names(config).ldm(name)


def diffusers_name(key: str, config: Any) -> str:
    """Diffusers module / parameter name of an LDM single-file key."""
    return unet_names(config).diffusers(key)


def a1111_label(name: str, config: Any) -> str | None:
    """A1111 block label (IN04 / M00 / OUT05) of a diffusers name, or ``None``."""
    return unet_names(config).a1111(name)


# ---------------------------------------------------------------------------- stages
#: The UNet's three stages in forward order: diffusers' container -> location name.
STAGES = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
#: The location names, in forward order.
LOCATIONS = tuple(STAGES.values())
#: Top-level modules that run before the down blocks and after the up blocks.
_BEFORE = ("time_proj", "time_embedding", "class_embedding", "add_time_proj", "add_embedding")
_AFTER = ("conv_norm_out", "conv_act", "conv_out")


def block_of(name: str) -> str:
    """``up_blocks.1.attentions.0...`` -> ``up_blocks.1``; ``mid_block...`` -> ``mid_block``;
    anything else -> its top-level name."""
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def _digits(part: str) -> bool:
    """ASCII digits only: a name from a file may hold "²", which ``str.isdigit`` accepts and
    ``int`` refuses."""
    return part.isascii() and part.isdigit()


def is_block(name: str) -> bool:
    """Whether ``name`` is one block of a stage: ``down_blocks.1``, ``mid_block``, ``up_blocks.0``."""
    parts = name.split(".")
    if name == "mid_block":
        return True
    return len(parts) == 2 and parts[0] in ("down_blocks", "up_blocks") and _digits(parts[1])


def location_of(name: str) -> str:
    """``down`` / ``mid`` / ``up`` for a name in a stage, else its top-level name."""
    head = name.split(".")[0]
    return STAGES.get(head, head)


def forward_rank(name: str) -> int:
    """Where a module or location name runs: 0 the time embeddings and ``conv_in``, 1 down,
    2 mid, 3 up (``down`` / ``mid`` / ``up`` too), 4 the output convolution, 5 anything else
    (``""``, the root, is -1)."""
    if not name:
        return -1
    head = name.split(".")[0]
    if head in STAGES or head in LOCATIONS:
        return 1 + (list(STAGES).index(head) if head in STAGES else LOCATIONS.index(head))
    if head in _BEFORE or head.startswith("encoder_hid") or head == "conv_in":
        return 0
    return 4 if head in _AFTER else 5


def forward_key(name: str) -> tuple[int, list[int]]:
    """Sort key of UNet module names in forward order: stage (:func:`forward_rank`), then the
    numbers in the name (``down_blocks.1.attentions.0`` -> ``[1, 0]``)."""
    return forward_rank(name), [int(p) for p in name.split(".") if _digits(p)]


def layer_order(names: list[str]) -> list[str]:
    """``names`` (layers of one kind, blocks or locations) in the UNet's forward order: down,
    mid, up; names of no stage after them. Ties keep their order."""
    return sorted(names, key=forward_key)


def short_layer(name: str) -> str:
    """``up_blocks.1.attentions.2.transformer_blocks.0.attn2`` -> ``up1.a2.t0`` (a label for
    the rows of a dense table)."""
    p = name.split(".")
    out = []
    i = 0
    while i < len(p):
        if p[i] in ("down_blocks", "up_blocks") and i + 1 < len(p):
            out.append(STAGES[p[i]] + p[i + 1])
            i += 2
        elif p[i] == "mid_block":
            out.append(STAGES[p[i]])
            i += 1
        elif p[i] in ("attentions", "transformer_blocks") and i + 1 < len(p):
            out.append(p[i][0] + p[i + 1])
            i += 2
        else:
            i += 1
    return ".".join(out) if out else name
