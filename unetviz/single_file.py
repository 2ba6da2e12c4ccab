"""Original-format (LDM) single-file Stable Diffusion checkpoints, converted in memory.

A single ``.safetensors`` file from the original releases or a fine-tune holds the UNet
(``model.diffusion_model.*``), the VAE (``first_stage_model.*``) and the text encoder(s)
(``cond_stage_model.*`` for SD 1.x/2.x, ``conditioner.embedders.{0,1}.*`` for SDXL).
:func:`detect_family` tells SD 1.x / SD 2.x / SDXL apart by their keys; the ``convert_*``
functions rename keys to diffusers/transformers names (the UNet through :mod:`unetviz.names`);
:func:`load_single_file` builds the parts, with the family configs shipped here
(the UNet ones are :meth:`UNetConfig.preset`) or those of a diffusers folder given as
``config``. Nothing is downloaded; pickle files (``.ckpt``) are refused.

The CLIP tokenizers are not part of a single file: they come from ``config`` (a diffusers
folder of the same family) or, offline, from the Hugging Face cache
(``openai/clip-vit-large-patch14``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, UNetConfig, check_part_config, read_json
from .detect import PICKLE_SUFFIXES, confined_folder, inside, pickle_message
from .errors import UnetvizError
from .names import LDM_PREFIX, UnknownNameError, unet_names
from .safetensors_io import offenders, read_at, read_header, torch_dtype
from .weights import build_unet, check_weight, key_mismatches

VAE_PREFIX = "first_stage_model."
CLIP_PREFIXES = {
    "sd1": ["cond_stage_model.transformer."],
    "sd2": ["cond_stage_model.model."],
    "sdxl": ["conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."],
}
FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}
TOKENIZER_CACHE_REPO = "openai/clip-vit-large-patch14"

_UNET_PRESET = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"}

#: AutoencoderKL config of every SD 1.x/2.x/XL release (sizes differ only in sample_size and
#: the latent scaling factor).
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
VAE_FAMILY = {
    "sd1": {"sample_size": 512},
    "sd2": {"sample_size": 768},
    "sdxl": {"sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
}

#: Scheduler configs of the releases (diffusers names); DDIM for 1.x/2.x, Euler for SDXL.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
SCHEDULER_FAMILY = {
    "sd1": {"_class_name": "DDIMScheduler"},
    "sd2": {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
    "sdxl": {"_class_name": "EulerDiscreteScheduler", "interpolation_type": "linear"},
}


class SingleFileError(UnetvizError):
    """A single-file checkpoint that cannot be opened: names the file and what is wrong."""


# ---------------------------------------------------------------------------------- reading
class SingleFile:
    """Lazy view of one safetensors file: keys and shapes now (from its checked header),
    tensors on demand, each read with plain file reads into its own storage. No mmap: the
    file's pages would count towards the process's memory as it is read, adding a copy of
    the file to the load's peak on top of the converted model."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise SingleFileError(f"checkpoint not found: {self.path}")
        if self.path.suffix.lower() in PICKLE_SUFFIXES:
            raise SingleFileError(pickle_message(self.path))
        if not self.path.is_file():  # a FIFO would block the open forever
            raise SingleFileError(f"{self.path} is not a regular file")
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise SingleFileError(f"{self.path}: cannot open: {exc}") from None
        try:
            entries, self.metadata = read_header(self._fh, os.fstat(self._fh.fileno()).st_size)
        except (OSError, EOFError, ValueError) as exc:
            self._fh.close()
            raise SingleFileError(
                f"{self.path} is not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from None
        self._entries = {e.name: e for e in entries}
        self.keys = list(self._entries)  # file order: reads go forward through the file
        self.shapes = {e.name: e.shape for e in entries}
        self._scratch: torch.Tensor | None = None

    def tensor(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor ``key``, cast to ``dtype`` when given (floating tensors only). A cast
        reads into one reused scratch buffer the size of the file's largest tensor, so the
        only allocations are the final tensors (a temporary per tensor cost an SDXL file 0.8 GiB
        more resident memory: freed temporaries left as holes in the heap)."""
        entry = self._entries[key]
        src = torch_dtype(entry.dtype)
        try:
            if dtype is None or src == dtype or not src.is_floating_point:
                return read_at(self._fh, entry)
            if self._scratch is None:
                size = max(e.nbytes for e in self._entries.values())
                self._scratch = torch.empty(size, dtype=torch.uint8)
            return read_at(self._fh, entry, self._scratch).to(dtype)
        except (OSError, EOFError) as exc:
            raise SingleFileError(f"{self.path}: cannot read tensor {key!r}: {exc}") from None

    def close(self) -> None:
        self._scratch = None
        self._fh.close()

    def __enter__(self) -> SingleFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------- detection
def detect_family(keys: list[str] | set[str], shapes: dict[str, tuple] | None = None) -> str:
    """``"sd1"``, ``"sd2"`` or ``"sdxl"`` from a single file's keys; SingleFileError for
    anything else (naming what it looks like)."""
    keys = set(keys)
    shapes = shapes or {}
    unet = [k for k in keys if k.startswith(LDM_PREFIX)]
    if not unet:
        raise SingleFileError(_not_sd(keys))
    if any(k.startswith(LDM_PREFIX + "joint_blocks.") for k in unet):
        raise SingleFileError("this is a Stable Diffusion 3 checkpoint (MMDiT), not a UNet")
    conv_in = shapes.get(LDM_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and conv_in[1] != 4:
        raise SingleFileError(
            f"the UNet takes {conv_in[1]} input channels (an inpainting or depth model): only "
            "text-to-image UNets with 4 latent channels are supported"
        )
    if any(k.startswith("conditioner.embedders.1.") for k in keys) or (
        LDM_PREFIX + "label_emb.0.0.weight" in keys
    ):
        if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
            raise SingleFileError(
                "this is an SDXL refiner checkpoint (one OpenCLIP encoder, image-to-image): "
                "unetviz opens text-to-image SD 1.x/2.x/SDXL base models"
            )
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    to_k = shapes.get(LDM_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    if to_k is not None:
        return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(to_k[1], "sd1")
    return "sd1"


def _not_sd(keys: set[str]) -> str:
    if any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for k in keys):
        return (
            "this file has diffusers-named UNet weights (down_blocks.*), not an original "
            "single-file checkpoint: put it in a diffusers folder (unet/) with its config.json"
        )
    if any("lora" in k for k in keys):
        return "this is a LoRA (lora_* keys), not a full Stable Diffusion checkpoint"
    if any(k.startswith(("double_blocks.", "single_blocks.", "transformer_blocks.")) for k in keys):
        return "this is a transformer (FLUX / DiT-style) checkpoint, not a Stable Diffusion UNet"
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return "this is a standalone VAE, not a full Stable Diffusion checkpoint"
    if any(k.startswith("joint_blocks.") for k in keys):
        return "this is a Stable Diffusion 3 checkpoint (MMDiT), not a UNet"
    head = ", ".join(sorted(keys)[:3])
    return (
        f"no {LDM_PREFIX}* keys: not an original Stable Diffusion single-file checkpoint "
        f"(first keys: {head})"
    )


# ---------------------------------------------------------------------------------- key maps
_VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def convert_vae_key(key: str, n_blocks: int) -> str:
    """An LDM VAE key (without ``first_stage_model.``) -> diffusers' AutoencoderKL name."""
    p = key.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return key
    side, rest = p[0], p[1:]
    if side not in ("encoder", "decoder"):
        raise UnknownNameError(f"{key!r} is not an LDM VAE key")
    if rest[0] in ("conv_in", "conv_out"):
        return key
    if rest[0] == "norm_out":
        return ".".join([side, "conv_norm_out", *rest[1:]])
    if rest[0] in ("down", "up"):
        i = int(rest[1])
        block = f"down_blocks.{i}" if rest[0] == "down" else f"up_blocks.{n_blocks - 1 - i}"
        if rest[2] == "block":
            sub = _VAE_RESNET.get(rest[4], rest[4])
            return ".".join([side, block, "resnets", rest[3], sub, *rest[5:]])
        if rest[2] in ("downsample", "upsample"):
            kind = "downsamplers" if rest[2] == "downsample" else "upsamplers"
            return ".".join([side, block, kind, "0", *rest[3:]])
    if rest[0] == "mid":
        if rest[1] in ("block_1", "block_2"):
            j = int(rest[1][-1]) - 1
            sub = _VAE_RESNET.get(rest[2], rest[2])
            return ".".join([side, "mid_block.resnets", str(j), sub, *rest[3:]])
        if rest[1] == "attn_1":
            return ".".join([side, "mid_block.attentions.0", _VAE_ATTN[rest[2]], *rest[3:]])
    raise UnknownNameError(f"{key!r} is not an LDM VAE key")


_OPENCLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def convert_openclip(
    state: dict[str, torch.Tensor], n_layers: int, consume: bool = False
) -> dict[str, torch.Tensor]:
    """OpenCLIP text tower keys (prefix removed) -> transformers CLIPTextModel(WithProjection)
    names. ``in_proj`` is split into q/k/v; ``text_projection`` is transposed; resblocks past
    ``n_layers`` (SD 2.x uses the penultimate layer, diffusers drops the last) are skipped.
    ``consume``: pop each tensor from ``state`` as it is converted, so a split ``in_proj`` is
    never held twice (a quarter of OpenCLIP bigG's weights)."""
    out: dict[str, torch.Tensor] = {}
    for key in list(state):
        value = state.pop(key) if consume else state[key]
        if key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["text_model.final_layer_norm." + key.split(".", 1)[1]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.T.contiguous()
        elif key.startswith("transformer.resblocks."):
            parts = key.split(".")
            i, sub = int(parts[2]), ".".join(parts[3:])
            if i >= n_layers:
                continue
            base = f"text_model.encoder.layers.{i}."
            if sub in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = sub.rsplit("_", 1)[1]
                for name, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = (
                        chunk.clone()
                    )  # own, aligned storage
                continue
            head, _, leaf = sub.rpartition(".")
            if head not in _OPENCLIP_LAYER:
                raise UnknownNameError(f"{key!r} is not an OpenCLIP text-tower key")
            out[base + _OPENCLIP_LAYER[head] + "." + leaf] = value
        elif key in ("logit_scale", "attn_mask"):
            continue
        else:
            raise UnknownNameError(f"{key!r} is not an OpenCLIP text-tower key")
    return out


def convert_hf_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF-layout CLIP keys (prefix removed): adds ``text_model.`` where old files lack it and
    drops the ``position_ids`` buffer."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith("text_model.") else "text_model." + key] = value
    return out


# ---------------------------------------------------------------------------------- configs
def _clip_config_from_shapes(state: dict[str, torch.Tensor], openclip: bool, **over: Any) -> Any:
    from transformers import CLIPTextConfig

    tok = state["text_model.embeddings.token_embedding.weight"]
    layers = {int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")}
    hidden = int(tok.shape[1])
    proj = state.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=int(tok.shape[0]),
        hidden_size=hidden,
        intermediate_size=int(state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=len(layers),
        num_attention_heads=max(hidden // 64, 1),
        max_position_embeddings=int(
            state["text_model.embeddings.position_embedding.weight"].shape[0]
        ),
        hidden_act="gelu" if openclip else "quick_gelu",
        projection_dim=int(proj.shape[0]) if proj is not None else 768,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        **over,
    )


def _load_module(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict assignment of ``state`` into a meta-built module; fills non-persistent buffers."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problem = key_mismatches(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise SingleFileError(f"{what} does not match its config: {problem}")
    module.load_state_dict(state, strict=True, assign=True)
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            leaf = name.rpartition(".")[2]
            if leaf == "position_ids":
                value = torch.arange(buf.shape[-1], device=_device_of(module)).expand(buf.shape)
            else:
                raise SingleFileError(f"{what}: buffer {name} has no value after loading")
            owner.register_buffer(leaf, value, persistent=False)


def _device_of(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s loaded parameters live (CPU when it has none)."""
    return next((p.device for p in module.parameters() if not p.is_meta), torch.device("cpu"))


def _take(sf: SingleFile, prefix: str, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for key in sf.keys:
        if key.startswith(prefix):
            out[key[len(prefix) :]] = sf.tensor(key, dtype)
    return out


# ---------------------------------------------------------------------------------- parts
def unet_config_of(sf: SingleFile, family: str | None = None) -> UNetConfig:
    """The UNet config a single file implies, from its header alone: its family's published
    config, when its ``conv_in`` has that config's shape (else SingleFileError: a narrowed or
    otherwise different UNet needs the diffusers folder that describes it)."""
    family = family or detect_family(sf.keys, sf.shapes)
    cfg = UNetConfig.preset(_UNET_PRESET[family])
    shape = sf.shapes.get(f"{LDM_PREFIX}input_blocks.0.0.weight")
    if shape != (cfg.block_out_channels[0], cfg.in_channels, 3, 3):
        raise SingleFileError(
            f"{sf.path}: its UNet's conv_in has shape {shape}, not the published "
            f"{FAMILY_NAMES[family]} UNet's ({cfg.block_out_channels[0]}, {cfg.in_channels}, 3, "
            "3): pass the diffusers folder that describes it as config"
        )
    return cfg


def read_unet_config(path: str | Path) -> UNetConfig:
    """:func:`unet_config_of` a single-file checkpoint on disk (reads only its header)."""
    with SingleFile(path) as sf:
        return unet_config_of(sf)


def load_unet_from_single_file(
    sf: SingleFile, config: UNetConfig, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """unetviz's UNet with the file's ``model.diffusion_model.*`` weights (strict)."""
    model = build_unet(config, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = unet_names(config)
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key in sf.keys:
        if not key.startswith(LDM_PREFIX):
            continue
        try:
            name = names.diffusers(key)
        except UnknownNameError:
            unknown.append(key)
            continue
        if name not in expected:
            unknown.append(key)
            continue
        where = f"{sf.path} (cast to {dtype})" if dtype is not None else sf.path
        t = check_weight(sf.tensor(key, dtype), key, where)
        if len(expected[name]) == 2 and t.ndim == 4 and t.shape[2:] == (1, 1):
            t = t[:, :, 0, 0]  # 1x1 conv proj_in/proj_out in a linear-projection UNet
        state[name] = t
    if unknown:
        raise SingleFileError(
            f"{sf.path}: {len(unknown)} UNet keys do not fit the UNet layout of its config: "
            f"{offenders(sorted(unknown))}"
        )
    _load_module(model, state, f"the UNet in {sf.path}")
    if dtype is None and len({p.dtype for p in model.parameters()}) > 1:
        model = model.to(torch.float32)  # the rule of weights.load_dtype: mixed -> float32
    return model.eval().requires_grad_(False)


def load_vae_from_single_file(
    sf: SingleFile, config: dict[str, Any], dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """diffusers' AutoencoderKL with the file's ``first_stage_model.*`` weights (strict)."""
    from diffusers import AutoencoderKL

    n = len(config["block_out_channels"])
    state = {}
    for key, value in _take(sf, VAE_PREFIX, dtype).items():
        try:
            name = convert_vae_key(key, n)
        except (UnknownNameError, IndexError, ValueError, KeyError):
            raise SingleFileError(f"{sf.path}: {VAE_PREFIX}{key} is not a VAE key") from None
        if ".mid_block.attentions." in name and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv attention -> linear
        state[name] = value
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    _load_module(vae, state, f"the VAE in {sf.path}")
    return vae.eval().requires_grad_(False)


def load_text_encoder_from_single_file(
    sf: SingleFile,
    prefix: str,
    openclip: bool,
    config: Any | None = None,
    with_projection: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """transformers' CLIPTextModel(WithProjection) from the file's ``prefix`` keys."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    raw = _take(sf, prefix, dtype)
    if openclip:
        n_layers = (
            config.num_hidden_layers
            if config is not None
            else len({k.split(".")[2] for k in raw if k.startswith("transformer.resblocks.")})
            - (0 if with_projection else 1)  # SD 2.x: diffusers drops the last layer
        )
        try:
            state = convert_openclip(raw, n_layers, consume=True)
        except UnknownNameError as exc:
            raise SingleFileError(f"{sf.path}: {exc}") from None
    else:
        state = convert_hf_clip(raw)
    if not with_projection:
        state.pop("text_projection.weight", None)
    if config is None:
        config = _clip_config_from_shapes(state, openclip)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        # transformers >= 5 flattens CLIPTextModel (no text_model. level)
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    _load_module(model, state, f"the text encoder {prefix}* in {sf.path}")
    return model.eval().requires_grad_(False)


def _tokenizer(config_dir: Path | None, sub: str, openclip: bool) -> Any:
    from transformers import CLIPTokenizer

    if config_dir is not None and (config_dir / sub).is_dir():
        tok = CLIPTokenizer.from_pretrained(confined_folder(config_dir, sub))
        if not 1 <= int(tok.model_max_length) <= 4096:
            raise SingleFileError(
                f"{config_dir / sub}: tokenizer model_max_length {tok.model_max_length}: "
                "expected 1 to 4096"
            )
        return tok
    try:
        tok = CLIPTokenizer.from_pretrained(TOKENIZER_CACHE_REPO, local_files_only=True)
        # transformers 5 returns an empty tokenizer (2 tokens, no length limit) when the repo
        # is not cached: that is "not in the cache" too
        if len(tok) < 1000 or not 1 <= int(tok.model_max_length) <= 4096:
            raise ValueError("no cached tokenizer")
    except (OSError, ValueError):
        raise SingleFileError(
            "a single-file checkpoint holds no tokenizer, and the CLIP tokenizer "
            f"({TOKENIZER_CACHE_REPO}) is not in the local Hugging Face cache: pass config= "
            "(CLI: --config) a diffusers folder of the same family (its tokenizer/ is used)"
        ) from None
    if openclip:  # OpenCLIP pads with "!" (id 0), CLIP-L with <|endoftext|>
        tok.pad_token = "!"
    return tok


@dataclass
class SingleFileParts:
    """The loaded parts of a single-file checkpoint (the SD pipeline assembles them)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    scheduler_config: dict[str, Any]
    family: str  # "sd1" | "sd2" | "sdxl"
    name: str
    path: str
    force_zeros_for_empty_prompt: bool = False


def load_single_file(
    path: str | Path,
    dtype: torch.dtype | None = None,
    config: str | Path | None = None,
    prediction_type: str | None = None,
) -> SingleFileParts:
    """Open a single-file SD 1.x / 2.x / SDXL checkpoint: detect the family, convert every part
    in memory, and return the parts with the scheduler config of the release.

    ``config``: a diffusers folder whose ``unet/``, ``vae/``, ``text_encoder*/`` configs,
    tokenizers and scheduler describe the file (for fine-tunes with another layout, or when the
    tokenizer is not cached); parts missing from the file are loaded from that folder.
    ``prediction_type`` overrides the scheduler's (SD 2.x files default to ``v_prediction``).
    """
    path = Path(path)
    config_dir = Path(config) if config is not None else None
    if config_dir is not None and not (config_dir / "model_index.json").is_file():
        raise SingleFileError(
            f"config={str(config_dir)!r} is not a diffusers model folder (no model_index.json)"
        )
    with SingleFile(path) as sf:
        family = detect_family(sf.keys, sf.shapes)
        keys = set(sf.keys)

        def cfg_json(sub: str, name: str = "config.json") -> dict[str, Any] | None:
            return _cfg_json(config_dir, sub, name)

        unet_cfg_dict = cfg_json("unet")
        try:
            unet_cfg = (
                UNetConfig.from_dict(unet_cfg_dict) if unet_cfg_dict else unet_config_of(sf, family)
            )
        except ConfigError as exc:
            raise SingleFileError(f"{config_dir}/unet/config.json: {exc}") from None
        # the tokenizers before any weight: a missing one is an error in a second, not after
        # a minute of reading gigabytes
        tokenizers = [
            _tokenizer(config_dir, tok_sub, openclip)
            for _, tok_sub, _, openclip, _ in _TEXT_SPECS[family]
        ]
        unet = load_unet_from_single_file(sf, unet_cfg, dtype)

        vae_cfg = cfg_json("vae") or {**VAE_CONFIG, **VAE_FAMILY[family]}
        check_part_config("vae", vae_cfg)
        if any(k.startswith(VAE_PREFIX) for k in keys):
            vae = load_vae_from_single_file(sf, vae_cfg, dtype)
        else:
            vae = _from_folder(config_dir, "vae", path, dtype)

        encoders = _load_text_parts(sf, family, config_dir, dtype)
    sched_cfg = cfg_json("scheduler", "scheduler_config.json") or {
        **SCHEDULER_CONFIG,
        **SCHEDULER_FAMILY[family],
    }
    check_part_config("scheduler", sched_cfg)
    if prediction_type is not None:
        sched_cfg = {**sched_cfg, "prediction_type": prediction_type}
    elif "v_pred" in keys:
        sched_cfg = {**sched_cfg, "prediction_type": "v_prediction"}
    index = cfg_json("", "model_index.json") or {}
    return SingleFileParts(
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        scheduler_config=sched_cfg,
        family=family,
        name=path.stem,
        path=str(path),
        force_zeros_for_empty_prompt=bool(
            index.get("force_zeros_for_empty_prompt", family == "sdxl")
        ),
    )


def _cfg_json(config_dir: Path | None, sub: str, name: str) -> dict[str, Any] | None:
    """``config_dir/sub/name`` as a dict (confined to ``config_dir``), or None without one."""
    if config_dir is None or not (config_dir / sub / name).is_file():
        return None
    return read_json(inside(config_dir, Path(sub) / name), "config")


_TEXT_SPECS = {  # (encoder subfolder, tokenizer subfolder, key prefix, OpenCLIP?, projection?)
    "sd1": [("text_encoder", "tokenizer", CLIP_PREFIXES["sd1"][0], False, False)],
    "sd2": [("text_encoder", "tokenizer", CLIP_PREFIXES["sd2"][0], True, False)],
    "sdxl": [
        ("text_encoder", "tokenizer", CLIP_PREFIXES["sdxl"][0], False, False),
        ("text_encoder_2", "tokenizer_2", CLIP_PREFIXES["sdxl"][1], True, True),
    ],
}


def _load_text_parts(
    sf: SingleFile, family: str, config_dir: Path | None, dtype: torch.dtype | None
) -> list[torch.nn.Module]:
    """The family's text encoder(s), from the file or else from ``config_dir``."""
    keys = set(sf.keys)
    encoders = []
    for enc_sub, _, prefix, openclip, proj in _TEXT_SPECS[family]:
        if any(k.startswith(prefix) for k in keys):
            te_cfg = None
            te_json = _cfg_json(config_dir, enc_sub, "config.json")
            if te_json is not None:
                from transformers import CLIPTextConfig

                check_part_config("clip", te_json)
                te_cfg = CLIPTextConfig.from_dict(te_json)
            encoders.append(
                load_text_encoder_from_single_file(sf, prefix, openclip, te_cfg, proj, dtype)
            )
        else:
            encoders.append(_from_folder(config_dir, enc_sub, sf.path, dtype, proj))
    return encoders


def _from_folder(
    config_dir: Path | None, sub: str, path: Path, dtype: torch.dtype | None, proj: bool = False
) -> torch.nn.Module:
    part = "VAE (first_stage_model.*)" if sub == "vae" else f"text encoder ({sub})"
    if config_dir is None or not (config_dir / sub).is_dir():
        raise SingleFileError(
            f"{path} has no {part} weights: pass config= (CLI: --config) a diffusers folder of "
            f"the same family whose {sub}/ provides them"
        )
    folder = confined_folder(config_dir, sub)
    if sub == "vae":
        from diffusers import AutoencoderKL

        model = AutoencoderKL.from_pretrained(folder, use_safetensors=True)
    else:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        cls = CLIPTextModelWithProjection if proj else CLIPTextModel
        model = cls.from_pretrained(folder, use_safetensors=True)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)
