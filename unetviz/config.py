"""UNet configuration: a plain dataclass with diffusers' ``config.json`` keys.

Keeping diffusers' key names means a ``unet/config.json`` from any Stable Diffusion checkpoint
loads as is, and our presets can be compared line by line with the published configs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UnetvizError
from .files import ModelPathError, read_bytes

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")
CLASS_EMBED_TYPES = (None, "timestep", "identity", "projection")
#: The largest latent side accepted (SDXL's native size is 128; 2048 is 16,384 pixels).
MAX_LATENT_SIDE = 2048


class ConfigError(UnetvizError):
    """A UNet config that unetviz cannot build: names the key, the value and what was expected."""


# Keys diffusers writes that we accept only at one value (the value every SD 1.x/2.x/SDXL
# checkpoint uses; a value that builds the same model, such as a per-block list of that value,
# is accepted too). Anything else needs code paths no Stable Diffusion UNet exercises: the
# refusal names the key and the reason (docs/models.md lists them all).
_FIXED: dict[str, tuple[Any, str]] = {
    "dual_cross_attention": (False, "dual cross-attention is a Versatile Diffusion feature"),
    "only_cross_attention": (False, "self-attention replaced by cross-attention is not used by SD"),
    "resnet_time_scale_shift": ("default", "only additive time conditioning is implemented"),
    "time_embedding_type": ("positional", "only sinusoidal (positional) timesteps are used by SD"),
    "time_embedding_act_fn": (None, "SD applies no extra activation after the time embedding"),
    "timestep_post_act": (None, "SD applies no activation after the time embedding"),
    "time_cond_proj_dim": (
        None,
        "the guidance embedding of LCM distillations (w -> timestep_cond) is not implemented",
    ),
    "time_embedding_dim": (None, "the time embedding is always 4 x block_out_channels[0] in SD"),
    "encoder_hid_dim": (None, "text projections inside the UNet are not used by SD"),
    "encoder_hid_dim_type": (None, "text projections inside the UNet are not used by SD"),
    "class_embeddings_concat": (False, "class embeddings are added to temb, not concatenated"),
    "conv_in_kernel": (3, "SD uses 3x3 conv_in"),
    "conv_out_kernel": (3, "SD uses 3x3 conv_out"),
    "act_fn": ("silu", "SD uses SiLU everywhere ('swish' is the same function)"),
    "resnet_skip_time_act": (False, "SD applies SiLU to temb before time_emb_proj"),
    "resnet_out_scale_factor": (1.0, "SD resnets use output_scale_factor 1"),
    "cross_attention_norm": (None, "SD does not normalise encoder_hidden_states in attention"),
    "mid_block_only_cross_attention": (None, "SD mid blocks use self- and cross-attention"),
    "attention_type": ("default", "gated (GLIGEN) attention is not implemented"),
    "addition_embed_type_num_heads": (64, "only used by text_image embeddings"),
    "dropout": (0.0, "inference tool: dropout is always 0"),
}
#: Values of fixed keys that build the same model as the fixed value.
_SAME: dict[str, tuple[Any, ...]] = {
    "act_fn": ("swish",),
    "mid_block_only_cross_attention": (False,),
}
#: Fixed keys whose value never changes an inference model (any value of the right type).
_INERT = {
    "dropout": "dropout is off at inference (eval mode)",
    "addition_embed_type_num_heads": "used only by 'text_image' embeddings",
}

#: Everything a config diffusers accepts may hold that unetviz refuses, with the reason: the
#: documented unsupported list (docs/models.md). Every refusal names one of these keys.
UNSUPPORTED: dict[str, str] = {
    **{k: why for k, (_, why) in _FIXED.items() if k not in _INERT},
    "down_block_types": "only CrossAttnDownBlock2D and DownBlock2D are implemented",
    "up_block_types": "only CrossAttnUpBlock2D and UpBlock2D are implemented",
    "mid_block_type": (
        "only UNetMidBlock2DCrossAttn and UNetMidBlock2D (one resnet) are implemented "
        "(no mid block: not either)"
    ),
    "norm_num_groups": "SD always normalises the output (norm_num_groups None is not built)",
    "class_embed_type": "only None, 'timestep', 'identity' and 'projection' are implemented",
    "addition_embed_type": "only None and 'text_time' (SDXL) are implemented",
    "cross_attention_dim": "one text width for every block (per-block widths are not built)",
    "transformer_layers_per_block": (
        "a per-layer list gives one depth per layer of its block, and needs "
        "reverse_transformer_layers_per_block (as diffusers does)"
    ),
    "reverse_transformer_layers_per_block": (
        "one entry per up block; a per-layer list gives one depth per layer of its block"
    ),
    "attention_head_dim": "the heads must divide each block's channels",
    "sample_size": "a square default size (a [height, width] pair must be equal)",
}


#: Bounds on every value, checked before anything is built: a hostile config must fail with a
#: ConfigError, never allocate. Generous next to every published UNet (SDXL: 3 blocks, 1280
#: channels, 10 transformer layers, 70 transformer blocks).
MAX_BLOCKS = 8
MAX_CHANNELS = 16384
MAX_LAYERS = 16
MAX_TRANSFORMER_BLOCKS = 256
MAX_CONFIG_BYTES = 1 << 20

_INT, _NUM, _BOOL, _STR = "an integer", "a finite number", "true or false", "a string"
#: Per-block keys whose entries may also be per-layer lists (asymmetric UNets: Segmind's SSD-1B
#: and Vega give each transformer of a block its own depth, and the up path its own depths).
PER_LAYER_KEYS = ("transformer_layers_per_block", "reverse_transformer_layers_per_block")
# key -> (kind, low, high, may be None, may be one value per block)
_SCHEMA: dict[str, tuple[str, float, float, bool, bool]] = {
    "sample_size": (_INT, 1, MAX_LATENT_SIDE, False, False),
    "in_channels": (_INT, 1, 1024, False, False),
    "out_channels": (_INT, 1, 1024, False, False),
    "center_input_sample": (_BOOL, 0, 0, False, False),
    "flip_sin_to_cos": (_BOOL, 0, 0, False, False),
    "freq_shift": (_NUM, -1e3, 1e3, False, False),
    "down_block_types": (_STR, 0, 0, False, True),
    "mid_block_type": (_STR, 0, 0, True, False),
    "up_block_types": (_STR, 0, 0, False, True),
    "block_out_channels": (_INT, 1, MAX_CHANNELS, False, True),
    "layers_per_block": (_INT, 1, MAX_LAYERS, False, True),
    "downsample_padding": (_INT, 0, 8, False, False),
    "mid_block_scale_factor": (_NUM, 1e-6, 1e6, False, False),
    "norm_num_groups": (_INT, 1, MAX_CHANNELS, True, False),
    "norm_eps": (_NUM, 1e-30, 1.0, False, False),
    "cross_attention_dim": (_INT, 1, MAX_CHANNELS, False, True),
    "transformer_layers_per_block": (_INT, 1, MAX_LAYERS, False, True),
    "reverse_transformer_layers_per_block": (_INT, 1, MAX_LAYERS, True, True),
    "attention_head_dim": (_INT, 1, MAX_CHANNELS, False, True),
    "num_attention_heads": (_INT, 1, MAX_CHANNELS, True, True),
    "use_linear_projection": (_BOOL, 0, 0, False, False),
    "upcast_attention": (_BOOL, 0, 0, True, False),
    "class_embed_type": (_STR, 0, 0, True, False),
    "num_class_embeds": (_INT, 1, 100_000, True, False),
    "addition_embed_type": (_STR, 0, 0, True, False),
    "addition_time_embed_dim": (_INT, 1, MAX_CHANNELS, True, False),
    "projection_class_embeddings_input_dim": (_INT, 1, 65536, True, False),
}
# keys kept in ``extra`` whose any value builds the same model: typed and bounded all the same
_EXTRA_SCHEMA: dict[str, tuple[str, float, float, bool, bool]] = {
    "dropout": (_NUM, 0, 1, False, False),
    "addition_embed_type_num_heads": (_INT, 1, MAX_CHANNELS, False, False),
}


def check_value(key: str, value: Any, kind: str, low: float = 0, high: float = 0) -> None:
    """ConfigError unless ``value`` is of ``kind`` (an integer / a finite number / true or
    false / a string) and, for numbers, within [low, high]. Bools are not numbers here."""
    ok = {
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _NUM: isinstance(value, (int, float)) and not isinstance(value, bool),
        _BOOL: isinstance(value, bool),
        _STR: isinstance(value, str) and len(value) <= 200,
    }[kind]
    if not ok:
        raise ConfigError(f"{key} = {_short(value)}: expected {kind}")
    if kind in (_INT, _NUM) and not (low <= value <= high):  # NaN fails this too
        raise ConfigError(f"{key} = {_short(value)}: expected {kind} in [{low:g}, {high:g}]")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_types(data: Mapping[str, Any]) -> None:
    for key, (kind, low, high, nullable, per_block) in {**_SCHEMA, **_EXTRA_SCHEMA}.items():
        if key not in data:
            continue
        value = data[key]
        if value is None and nullable:
            continue
        if per_block and isinstance(value, (list, tuple)):
            if not 1 <= len(value) <= MAX_BLOCKS:
                raise ConfigError(
                    f"{key} has {len(value)} entries: expected 1 to {MAX_BLOCKS} (one per block)"
                )
            for i, item in enumerate(value):
                if isinstance(item, (list, tuple)) and key in PER_LAYER_KEYS:
                    if not 1 <= len(item) <= MAX_LAYERS + 1:
                        raise ConfigError(
                            f"{key}[{i}] has {len(item)} entries: expected 1 to "
                            f"{MAX_LAYERS + 1} (one per layer of the block)"
                        )
                    for j, depth in enumerate(item):
                        check_value(f"{key}[{i}][{j}]", depth, kind, low, high)
                    continue
                if isinstance(item, (list, tuple)) and key in UNSUPPORTED:
                    raise ConfigError(
                        f"{key}[{i}] = {_short(item)}: per-layer values are not supported "
                        f"({UNSUPPORTED[key]})"
                    )
                check_value(f"{key}[{i}]", item, kind, low, high)
        elif key in ("down_block_types", "up_block_types", "block_out_channels"):
            raise ConfigError(f"{key} = {_short(value)}: expected a list, one entry per block")
        else:
            check_value(key, value, kind, low, high)


@dataclass
class UNetConfig:
    """Diffusers' ``UNet2DConditionModel`` config keys that Stable Diffusion UNets use."""

    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 768
    transformer_layers_per_block: int | tuple[int | tuple[int, ...], ...] = 1
    reverse_transformer_layers_per_block: tuple[int | tuple[int, ...], ...] | None = None
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    use_linear_projection: bool = False
    upcast_attention: bool | None = False
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for key in (
            "down_block_types",
            "up_block_types",
            "block_out_channels",
            "layers_per_block",
            "transformer_layers_per_block",
            "reverse_transformer_layers_per_block",
            "attention_head_dim",
            "num_attention_heads",
            "cross_attention_dim",
        ):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                setattr(self, key, tuple(tuple(v) if isinstance(v, list) else v for v in value))
        self.sample_size = _sample_size(self.sample_size)
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def n_blocks(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @property
    def heads(self) -> tuple[int, ...]:
        """Attention heads per down block (diffusers' quirk: ``attention_head_dim`` is heads)."""
        value = (
            self.num_attention_heads
            if self.num_attention_heads is not None
            else self.attention_head_dim
        )
        return _per_block(value, self.n_blocks)

    @property
    def layers(self) -> tuple[int, ...]:
        return _per_block(self.layers_per_block, self.n_blocks)

    @property
    def transformer_layers(self) -> tuple[int, ...]:
        """Transformer depth per down block (a block with per-layer depths: its deepest)."""
        return tuple(
            max(v) if isinstance(v, tuple) else v
            for v in _per_block(self.transformer_layers_per_block, self.n_blocks)
        )

    @property
    def transformer_depths(
        self,
    ) -> tuple[tuple[tuple[int, ...], ...], int, tuple[tuple[int, ...], ...]]:
        """(down, mid, up): the depth of every Transformer2DModel, per layer of each down block
        (``layers`` of them) and up block (``layers + 1``, in up-block order), and the mid
        block's, as diffusers builds them: the up path mirrors the down path unless
        ``reverse_transformer_layers_per_block`` gives its own (SSD-1B: up ``[[4, 4, 10],
        [2, 1, 1], 1]`` against down ``[1, 2, 4]``); a mid block takes the first depth of the
        last down entry."""
        n, layers = self.n_blocks, self.layers
        down_given = _per_block(self.transformer_layers_per_block, n)
        up_given = self.reverse_transformer_layers_per_block or tuple(reversed(down_given))
        down = tuple(_per_layer(v, layers[i]) for i, v in enumerate(down_given))
        up = tuple(_per_layer(v, layers[n - 1 - i] + 1) for i, v in enumerate(up_given))
        last = down_given[-1]
        return down, last[0] if isinstance(last, tuple) else last, up

    @property
    def num_downsamplers(self) -> int:
        return self.n_blocks - 1

    def check_size(
        self,
        height: int,
        width: int,
        scale: int = 8,
        names: tuple[str, str] = ("height", "width"),
    ) -> tuple[int, int]:
        """``(height, width)`` if each is a positive multiple of ``scale`` x 2^downsamplers
        (``scale``: 8 for SD pixels through the VAE, 1 for latents) and at most
        ``MAX_LATENT_SIDE * scale``; else ConfigError naming the value and a size that works.
        The one home of this rule: the model, the pipelines, the CLI and the app call it."""
        multiple = scale * 2**self.num_downsamplers
        out = []
        for name, value in zip(names, (height, width), strict=True):
            label = f"{name} {value!r}" if name.startswith("-") else f"{name}={value!r}"
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{label}: expected an integer number of pixels")
            if value <= 0 or value % multiple:
                raise ConfigError(
                    f"{label} is not a positive multiple of {multiple} ({scale} x 2^"
                    f"{self.num_downsamplers} downsamplers): try "
                    f"{max(multiple, round(value / multiple) * multiple)}"
                )
            if value > MAX_LATENT_SIDE * scale:
                raise ConfigError(
                    f"{label} is larger than the {MAX_LATENT_SIDE * scale} allowed "
                    f"({MAX_LATENT_SIDE} latent pixels)"
                )
            out.append(value)
        return out[0], out[1]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError naming the first key whose value unetviz cannot build: types and
        bounds first (nothing is built from an unchecked value), then the structure."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        _check_types({**(self.extra if isinstance(self.extra, dict) else {}), **fields})
        self._check_layout()
        self._check_channels()
        self._check_embeddings()

    def _check_layout(self) -> None:
        """Block types known, and every per-block list as long as block_out_channels."""
        n = self.n_blocks
        for key in ("mid_block_type", "norm_num_groups"):
            if getattr(self, key) is None:
                raise ConfigError(f"{key} = None is not supported: {UNSUPPORTED[key]}")
        for t in self.down_block_types:
            if t not in DOWN_BLOCK_TYPES:
                raise ConfigError(
                    f"unknown down block type {_short(t)}: expected one of {list(DOWN_BLOCK_TYPES)}"
                )
        for t in self.up_block_types:
            if t not in UP_BLOCK_TYPES:
                raise ConfigError(
                    f"unknown up block type {_short(t)}: expected one of {list(UP_BLOCK_TYPES)}"
                )
        if self.mid_block_type not in MID_BLOCK_TYPES:
            raise ConfigError(
                f"unknown mid block type {self.mid_block_type!r}: expected one of "
                f"{list(MID_BLOCK_TYPES)}"
            )
        for key in ("down_block_types", "up_block_types"):
            if len(getattr(self, key)) != n:
                raise ConfigError(
                    f"{key} has {len(getattr(self, key))} entries but block_out_channels has {n}: "
                    "they must have the same length"
                )
        for key in (
            "layers_per_block",
            "transformer_layers_per_block",
            "reverse_transformer_layers_per_block",
            "attention_head_dim",
            "num_attention_heads",
        ):
            value = getattr(self, key)
            if isinstance(value, tuple) and len(value) != n:
                raise ConfigError(
                    f"{key} has {len(value)} entries but block_out_channels has {n}: "
                    "give one value per block or a single int"
                )
        self._check_per_layer()
        if isinstance(self.cross_attention_dim, tuple):
            if len(set(self.cross_attention_dim)) != 1:
                raise ConfigError(
                    f"cross_attention_dim {list(self.cross_attention_dim)}: per-block values "
                    "are not supported (no SD checkpoint uses them); give one int"
                )
            self.cross_attention_dim = self.cross_attention_dim[0]

    def _check_per_layer(self) -> None:
        """Per-layer depth lists: one depth per transformer of their block (diffusers ignores
        extra entries and fails on missing ones: both are refused here), and down-path lists
        only with an up path given (diffusers refuses them otherwise too)."""
        tl, rev = self.transformer_layers_per_block, self.reverse_transformer_layers_per_block
        if isinstance(rev, int):
            raise ConfigError(
                f"reverse_transformer_layers_per_block = {rev}: expected a list, one entry per "
                "up block"
            )
        nested = isinstance(tl, tuple) and any(isinstance(v, tuple) for v in tl)
        if nested and rev is None:
            why = UNSUPPORTED["transformer_layers_per_block"]
            raise ConfigError(
                f"transformer_layers_per_block = {_short(list(tl))}: per-layer lists are not "
                f"supported without reverse_transformer_layers_per_block ({why})"
            )
        layers = self.layers
        for key, value, count in (
            ("transformer_layers_per_block", tl, layers),
            ("reverse_transformer_layers_per_block", rev, [x + 1 for x in reversed(layers)]),
        ):
            for i, v in enumerate(value if isinstance(value, tuple) else ()):
                if isinstance(v, tuple) and len(v) != count[i]:
                    raise ConfigError(
                        f"{key}[{i}] = {_short(list(v))} is not supported: {len(v)} depths for "
                        f"a block of {count[i]} layers ({UNSUPPORTED[key]})"
                    )

    def _check_channels(self) -> None:
        """Channels divisible by groups and heads; the transformer-block budget."""
        for i, ch in enumerate(self.block_out_channels):
            if ch <= 0 or ch % self.norm_num_groups:
                raise ConfigError(
                    f"block_out_channels[{i}] = {ch} is not divisible by norm_num_groups = "
                    f"{self.norm_num_groups}: GroupNorm needs channels divisible by groups"
                )
            heads = self.heads[i]
            if heads <= 0 or ch % heads:
                raise ConfigError(
                    f"block_out_channels[{i}] = {ch} is not divisible by {heads} attention heads "
                    "(attention_head_dim / num_attention_heads): head size must be an integer"
                )
        down, mid, up = self.transformer_depths
        blocks = sum(map(sum, down)) + sum(map(sum, up))
        if blocks + mid > MAX_TRANSFORMER_BLOCKS:
            raise ConfigError(
                f"layers_per_block {self.layers_per_block} x transformer_layers_per_block "
                f"{self.transformer_layers_per_block} make {blocks} transformer blocks: more "
                f"than the {MAX_TRANSFORMER_BLOCKS} allowed (SDXL has 70)"
            )

    def _check_embeddings(self) -> None:
        """Class / SDXL embeddings complete, and the fixed diffusers keys at their SD values."""
        if self.class_embed_type not in CLASS_EMBED_TYPES:
            raise ConfigError(
                f"class_embed_type {self.class_embed_type!r} is not supported: expected one of "
                f"{list(CLASS_EMBED_TYPES)}"
            )
        if self.class_embed_type == "projection" and not self.projection_class_embeddings_input_dim:
            raise ConfigError(
                "class_embed_type 'projection' needs projection_class_embeddings_input_dim"
            )
        if self.addition_embed_type not in (None, "text_time"):
            raise ConfigError(
                f"addition_embed_type {self.addition_embed_type!r} is not supported: "
                "expected None or 'text_time' (SDXL)"
            )
        if self.addition_embed_type == "text_time" and (
            not self.addition_time_embed_dim or not self.projection_class_embeddings_input_dim
        ):
            raise ConfigError(
                "addition_embed_type 'text_time' needs addition_time_embed_dim and "
                "projection_class_embeddings_input_dim"
            )
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra = {_short(self.extra)}: expected a dict of diffusers keys")
        for key, value in self.extra.items():
            if key not in _FIXED:
                raise ConfigError(
                    f"unknown config key {_short(key)}: unetviz does not know what it changes"
                )
            expected, why = _FIXED[key]
            if key in _INERT or _same(value, expected) or value in _SAME.get(key, ()):
                continue
            if key == "time_embedding_dim" and value == self.time_embed_dim:
                continue  # the value SD uses, written out
            raise ConfigError(
                f"{key} = {_short(value)} is not supported (expected {expected!r}): {why}"
            )

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build from a diffusers-style dict; ``_``-prefixed metadata keys are ignored. Every
        value is type- and bounds-checked before anything is built from it."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a UNet config must be a JSON object, found {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise ConfigError(f"config key {_short(key)} is not a string")
            if key.startswith("_") or key == "extra":
                continue
            if key in names:
                kwargs[key] = value
            elif key in _FIXED:
                extra[key] = value
            elif value not in (None, False):
                raise ConfigError(
                    f"unknown config key {_short(key)} = {_short(value)}: unetviz does not know "
                    "what it changes in the UNet"
                )
        if kwargs.get("upcast_attention") is None:
            kwargs["upcast_attention"] = False
        if "sample_size" in kwargs:
            kwargs["sample_size"] = _sample_size(kwargs["sample_size"])
        _check_types({**extra, **kwargs})
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> UNetConfig:
        """Read a diffusers ``config.json``; errors name the file."""
        path = Path(path)
        data = read_json(path, "config file")
        kind = data.get("_class_name", "UNet2DConditionModel")
        if kind != "UNet2DConditionModel":
            shown = kind[:80] if isinstance(kind, str) and kind.isidentifier() else "another model"
            raise ConfigError(f"{path} describes a {shown}, expected a UNet2DConditionModel")
        return cls.from_dict(data)

    @classmethod
    def preset(cls, name: str) -> UNetConfig:
        """The published UNet config of ``sd15``, ``sd21`` or ``sdxl``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}")
        return cls.from_dict(PRESETS[name])

    def to_dict(self) -> dict[str, Any]:
        """A diffusers-compatible dict (lists, not tuples) that ``from_dict`` reads back."""
        out: dict[str, Any] = {"_class_name": "UNet2DConditionModel"}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        out.update(self.extra)
        return out

    def replace(self, **changes: Any) -> UNetConfig:
        """A copy with some keys changed (validated again)."""
        data = self.to_dict()
        data.update(changes)
        return UNetConfig.from_dict(data)


def read_json(path: str | Path, what: str = "config", limit: int = MAX_CONFIG_BYTES) -> dict:
    """A JSON object from a regular file of at most ``limit`` bytes; ConfigError otherwise
    (FIFOs and devices refused before reading, nesting too deep, not an object). Errors name
    the file, never echo its content."""
    path = Path(path)
    try:
        raw = read_bytes(path, limit, what)
    except ModelPathError as exc:
        raise ConfigError(str(exc)) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not valid JSON: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------- other parts
#: Bounds of a VAE's config.json (diffusers' AutoencoderKL keys; SD's VAE: 128..512 channels,
#: 2 layers, 4 latent channels), checked before unetviz's or diffusers' autoencoder is built.
VAE_SCHEMA: dict[str, tuple[str, float, float]] = {
    "block_out_channels": (_INT, 1, 4096),
    "layers_per_block": (_INT, 1, 8),
    "latent_channels": (_INT, 1, 64),
    "in_channels": (_INT, 1, 16),
    "out_channels": (_INT, 1, 16),
    "norm_num_groups": (_INT, 1, 4096),
    "sample_size": (_INT, 1, 16384),
    "scaling_factor": (_NUM, 1e-6, 1e6),
    "shift_factor": (_NUM, -1e6, 1e6),
    "down_block_types": (_STR, 0, 0),
    "up_block_types": (_STR, 0, 0),
}
#: Bounds of a CLIP text encoder's config.json (transformers' CLIPTextConfig keys; SD 1.x:
#: width 768, 12 layers; SDXL's second: 1280, 32 layers).
CLIP_SCHEMA: dict[str, tuple[str, float, float]] = {
    "hidden_size": (_INT, 1, 8192),
    "intermediate_size": (_INT, 1, 32768),
    "num_hidden_layers": (_INT, 1, 64),
    "num_attention_heads": (_INT, 1, 128),
    "vocab_size": (_INT, 1, 1_000_000),
    "max_position_embeddings": (_INT, 1, 4096),
    "projection_dim": (_INT, 1, 8192),
}
#: Bounds of every model part's config other than the UNet's, by part: the demo format's own
#: text encoder, tokenizer (vocab.json) and scheduler (the shipped model: vocab 18, 16 tokens,
#: width 64, 2 layers), and any model's ``vae`` and ``clip`` text encoder.
PART_SCHEMAS: dict[str, dict[str, tuple[str, float, float]]] = {
    "text_encoder": {
        "vocab_size": (_INT, 1, 100_000),
        "max_length": (_INT, 3, 1024),
        "width": (_INT, 1, 4096),
        "layers": (_INT, 1, 48),
        "heads": (_INT, 1, 64),
        "n_special": (_INT, 0, 100_000),
        "projection_dim": (_INT, 1, 4096),
        "causal": (_BOOL, 0, 0),
    },
    "tokenizer": {"max_length": (_INT, 3, 1024)},
    "scheduler": {"num_train_timesteps": (_INT, 2, 100_000)},
    "vae": VAE_SCHEMA,
    "clip": CLIP_SCHEMA,
}
MAX_DEMO_TEXT_PARAMS = 50_000_000  # 200 MB in float32


def check_part_config(part: str, data: Any) -> dict[str, Any]:
    """Types and bounds of a model part's config (``PART_SCHEMAS[part]``: ``vae``, ``clip``,
    ``scheduler`` and the demo parts); list values (``block_out_channels``) are checked item by
    item, at most 16 items. Returns ``data``; ConfigError naming the key otherwise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{part} config must be a JSON object, found {type(data).__name__}")
    for key, (kind, low, high) in PART_SCHEMAS[part].items():
        value = data.get(key)
        if key not in data or (value is None and part in ("vae", "clip")):
            continue
        if isinstance(value, list):
            if not 1 <= len(value) <= 16:
                raise ConfigError(f"{part}.{key} has {len(value)} entries: expected 1 to 16")
            for i, item in enumerate(value):
                check_value(f"{part}.{key}[{i}]", item, kind, low, high)
        else:
            check_value(f"{part}.{key}", value, kind, low, high)
    return data


def check_demo_config(part: str, data: Any) -> dict[str, Any]:
    """Check a demo-format part's config (``part``: ``text_encoder``, ``tokenizer`` or
    ``scheduler``) before anything is built from it: types, bounds, and for the text encoder a
    parameter budget (``MAX_DEMO_TEXT_PARAMS``). Returns ``data``; ConfigError otherwise."""
    check_part_config(part, data)
    if part == "text_encoder":
        width, heads = data.get("width", 64), data.get("heads", 2)
        if width % heads:
            raise ConfigError(f"text_encoder.width {width} is not divisible by heads {heads}")
        params = 12 * width * width * data.get("layers", 2) + width * (
            data.get("vocab_size", 0) + data.get("max_length", 16)
        )
        if params > MAX_DEMO_TEXT_PARAMS:
            raise ConfigError(
                f"text_encoder config describes {params:,} parameters: more than the "
                f"{MAX_DEMO_TEXT_PARAMS:,} a demo-format text encoder may have"
            )
    if part == "tokenizer":
        vocab = data.get("vocab")
        if not isinstance(vocab, list) or not 1 <= len(vocab) <= 100_000:
            raise ConfigError("tokenizer.vocab: expected a list of 1 to 100,000 words")
        for i, word in enumerate(vocab):
            check_value(f"tokenizer.vocab[{i}]", word, _STR)
    return data


def _same(value: Any, expected: Any) -> bool:
    """``value`` builds what ``expected`` builds: equal, False for None, or a per-block list
    of it (diffusers takes ``only_cross_attention`` per block)."""
    if isinstance(value, (list, tuple)) and not isinstance(expected, (list, tuple)):
        return 1 <= len(value) <= MAX_BLOCKS and all(_same(v, expected) for v in value)
    if isinstance(value, bool) != isinstance(expected, bool) and expected is not None:
        return False  # True == 1: a bool never stands for a number, nor a number for a bool
    return value == expected or (expected is None and value is False)


def _sample_size(value: Any) -> Any:
    """diffusers' ``sample_size`` (the default latent side: None, an int or a [height, width]
    pair) as the one int the pipelines use: None -> 64 (SD 1.x's default), a square pair -> its
    side; anything else is returned for the type check to name."""
    if value is None:
        return 64
    if isinstance(value, (list, tuple)) and len(value) == 2:
        if value[0] != value[1] or isinstance(value[0], bool):
            raise ConfigError(
                f"sample_size = {_short(list(value))} is not supported: {UNSUPPORTED['sample_size']}"
            )
        return value[0]
    return value


def _per_block(value: Any, n: int) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, tuple) else (value,) * n


def _per_layer(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple) else (value,) * n


_SD15 = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}
_SD21 = {
    **_SD15,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "sample_size": 96,
    "upcast_attention": True,
    "use_linear_projection": True,
}
_SDXL = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

#: Published UNet configs: runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1,
#: stabilityai/stable-diffusion-xl-base-1.0 (``unet/config.json``, metadata keys dropped).
PRESETS: dict[str, dict[str, Any]] = {"sd15": _SD15, "sd21": _SD21, "sdxl": _SDXL}
