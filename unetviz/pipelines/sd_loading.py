"""Stable Diffusion folders and single files: validated, then loaded into :class:`SDComponents`
(unetviz's UNet, transformers' CLIP text encoders and tokenizers, diffusers' VAE and scheduler).

Every file read lies inside the folder given; pickles are refused; configs are bounded before
diffusers or transformers build anything from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetviz.config import ConfigError, check_part_config, read_json
from unetviz.detect import PICKLE_SUFFIXES, confined_folder, inside, pickle_folder_message
from unetviz.errors import UnetvizError

from .base import PipelineError

SD_EXTRA_HINT = "pip install 'unetviz[sd]'"

#: Scheduler short names accepted by ``scheduler=`` (any diffusers class name works too).
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "ddpm": "DDPMScheduler",
}

_SUPPORTED_UNET = "UNet2DConditionModel"
_KNOWN_NON_SD = {
    "StableDiffusion3Pipeline": "Stable Diffusion 3 (an MMDiT transformer, not a UNet)",
    "FluxPipeline": "FLUX (a transformer, not a UNet)",
    "PixArtAlphaPipeline": "PixArt-alpha (a transformer, not a UNet)",
    "KandinskyV22Pipeline": "Kandinsky 2.2 (image-embedding conditioned)",
    "StableDiffusionXLRefinerPipeline": "the SDXL refiner",
}


def require_sd_extra() -> tuple[Any, Any]:
    """Import diffusers and transformers, or raise PipelineError naming the ``sd`` extra."""
    try:
        import diffusers
        import transformers
    except ImportError as exc:
        raise PipelineError(
            f"real Stable Diffusion models need diffusers and transformers ({exc.name} is "
            f"missing): {SD_EXTRA_HINT}"
        ) from None
    return diffusers, transformers


@dataclass
class SDComponents:
    """Everything a Stable Diffusion pipeline needs, already loaded."""

    unet: nn.Module
    vae: nn.Module
    scheduler: Any
    tokenizers: list[Any]
    text_encoders: list[nn.Module]
    family: str  # "sd1" | "sd2" | "sdxl"
    name: str
    force_zeros_for_empty_prompt: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _default_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    from unetviz.weights import resolve_dtype

    resolved = resolve_dtype(dtype)
    if resolved is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    return resolved


def make_scheduler(config: dict[str, Any], name: str | None = None) -> Any:
    """A diffusers scheduler from a ``scheduler_config.json`` dict; ``name`` (``ddim``,
    ``euler``, ``euler_a``, ``dpm``, ``pndm``, ``lms``, ``ddpm`` or a diffusers class name)
    swaps the class while keeping the betas and prediction type."""
    diffusers, _ = require_sd_extra()
    cls_name = SCHEDULERS.get(str(name).lower(), name) if name else config.get("_class_name")
    cls = getattr(diffusers, str(cls_name), None) if cls_name else None
    if cls is None or not hasattr(cls, "from_config") or "Scheduler" not in str(cls_name):
        raise PipelineError(
            f"unknown scheduler {cls_name!r}: expected one of {sorted(SCHEDULERS)} or a diffusers "
            "scheduler class name"
        )
    return cls.from_config(config)


def check_safetensors(folder: Path) -> str | None:
    """Check a component folder's weights before diffusers/transformers see them: every
    ``.safetensors`` header must open (a truncated or corrupt file raises PipelineError naming
    it); pickle-only folders are refused. Returns the variant to load (``"fp16"`` when only
    ``*.fp16.safetensors`` files are there, else None)."""
    from safetensors import SafetensorError, safe_open

    from unetviz.weights import FLOAT_DTYPES, WeightsError

    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        if not file.is_file():  # a FIFO or device would block the open
            raise PipelineError(f"{file} is not a regular file")
        try:
            with safe_open(str(file), framework="pt") as f:
                dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise PipelineError(
                f"{file} is not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from None
        for key, kind in dtypes.items():  # position_ids: CLIP's integer buffer
            if kind not in FLOAT_DTYPES and not key.endswith("position_ids"):
                raise WeightsError(
                    f"{file}: tensor {key!r} is {kind}: unetviz loads floating-point weights "
                    f"only ({', '.join(FLOAT_DTYPES)})"
                )
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise PipelineError(pickle_folder_message(folder, pickles))
        raise PipelineError(f"{folder} has no .safetensors weights")
    if all(".fp16." in f.name for f in files):
        return "fp16"
    return None


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence diffusers'/transformers' loading chatter (progress bars, accelerate hints)."""
    diffusers, transformers = require_sd_extra()
    d_log, t_log = diffusers.utils.logging, transformers.utils.logging
    d_level, t_level = d_log.get_verbosity(), t_log.get_verbosity()
    d_log.set_verbosity_error()
    t_log.set_verbosity_error()
    t_bar = t_log.is_progress_bar_enabled()
    t_log.disable_progress_bar()
    try:
        yield
    finally:
        d_log.set_verbosity(d_level)
        t_log.set_verbosity(t_level)
        if t_bar:
            t_log.enable_progress_bar()


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a regular file under 1 MiB (ConfigError otherwise)."""
    return read_json(path, "config")


def _describe_folder(path: Path) -> str:
    """What kind of model folder ``path`` is, for error messages."""
    config = path / "config.json"
    if config.is_file():
        try:
            data = read_json(config)
        except UnetvizError:
            data = {}
        names = data.get("architectures")
        first = names[0] if isinstance(names, list) and names else None
        kind = data.get("_class_name") or first or data.get("model_type")
        kind = _name(kind) if kind else None
        if kind == _SUPPORTED_UNET:
            return (
                f"{path} is a single UNet2DConditionModel folder, not a whole pipeline: pass the "
                "model root that holds model_index.json, unet/, text_encoder/, tokenizer/, vae/ "
                "and scheduler/"
            )
        if kind:
            return (
                f"{path} holds a {kind} model (config.json), not a Stable Diffusion pipeline "
                "folder (model_index.json with unet/, text_encoder/, tokenizer/, vae/, scheduler/)"
            )
    return (
        f"{path} has no model_index.json: expected a diffusers Stable Diffusion folder "
        "(model_index.json, unet/, text_encoder/, tokenizer/, vae/, scheduler/) or a single "
        "original-format .safetensors file"
    )


def _read_model_index(path: Path) -> tuple[dict[str, Any], bool, list[str]]:
    """model_index.json checked: (index, is SDXL, the component names unetviz needs)."""
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise PipelineError(_describe_folder(path))
    index = _read_json(inside(path, "model_index.json"))
    cls_name = _name(index.get("_class_name", "?"))
    if cls_name in _KNOWN_NON_SD:
        raise PipelineError(
            f"{path} is a {cls_name} folder ({_KNOWN_NON_SD[cls_name]}): unetviz opens Stable "
            "Diffusion 1.x/2.x/XL pipelines (a UNet2DConditionModel with CLIP text encoders)"
        )
    xl = "text_encoder_2" in index or "XL" in cls_name
    text = ["text_encoder", "tokenizer"] + (["text_encoder_2", "tokenizer_2"] if xl else [])
    needed = ["unet", "vae", "scheduler", *text]
    for name in needed:
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], str):
            if name in ("text_encoder", "tokenizer") and xl:
                raise PipelineError(
                    f"{path}: model_index.json has no {name} ({cls_name}); SDXL refiner-style "
                    "pipelines without the first text encoder are not supported"
                )
            raise PipelineError(
                f"{path} is a {cls_name} folder without a {name} component in model_index.json: "
                f"unetviz needs {', '.join(needed)}"
            )
        if not (path / name).is_dir():
            raise PipelineError(
                f"{path} is missing its {name}/ subfolder (model_index.json lists "
                f"{_name(entry[1])}); re-download or re-save the model with save_pretrained"
            )
    expected = {"unet": _SUPPORTED_UNET, "vae": "AutoencoderKL"}
    for name, want in expected.items():
        if index[name][1] != want:
            raise PipelineError(
                f"{path}/{name} is a {_name(index[name][1])} ({cls_name}): expected a {want} "
                "(unetviz visualizes Stable Diffusion 1.x/2.x/XL)"
            )
    for name in text[0::2]:
        if index[name][1] not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            raise PipelineError(
                f"{path}/{name} is a {_name(index[name][1])}: expected a CLIPTextModel or "
                "CLIPTextModelWithProjection"
            )
    return index, xl, needed


def _name(value: Any) -> str:
    """A class name from a file, safe to print: an identifier of at most 80 characters."""
    text = str(value)
    return text if text.isidentifier() and len(text) <= 80 else "(unrecognised name)"


_PART_OF = {"vae": "vae", "scheduler": "scheduler", "text_encoder": "clip"}
#: The longest token window accepted (CLIP's is 77): every prompt is padded to it.
MAX_TOKENS = 4096


def check_tokenizer(tokenizer: Any, where: Path | str) -> Any:
    """``tokenizer`` if its ``model_max_length`` (the length every prompt is padded to) is
    1..MAX_TOKENS; ConfigError otherwise, before any prompt is tokenized."""
    n = getattr(tokenizer, "model_max_length", None)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TOKENS:
        raise ConfigError(
            f"{where}: tokenizer model_max_length {n!r}: expected an integer in [1, {MAX_TOKENS}]"
        )
    return tokenizer


def _third_party(path: Path, loader: Callable[[], Any]) -> Any:
    """Run a diffusers/transformers loader; their errors become PipelineError naming the
    folder (ours pass through unchanged)."""
    try:
        return loader()
    except UnetvizError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise PipelineError(f"cannot load {path}: {exc}") from None


def load_diffusers_components(
    path: Path,
    dtype: torch.dtype,
    scheduler: str | None = None,
    prediction_type: str | None = None,
) -> SDComponents:
    """Load a local diffusers SD 1.x/2.x/SDXL folder: unetviz's UNet, transformers' CLIP
    text encoder(s) and tokenizer(s), diffusers' VAE and scheduler. Never unpickles; every
    file read lies inside ``path``."""
    diffusers, transformers = require_sd_extra()
    from unetviz.weights import load_unet

    index, xl, needed = _read_model_index(path)
    folders = {name: confined_folder(path, name) for name in needed}
    for name in needed:  # bounds before diffusers / transformers build anything from them
        part = _PART_OF.get(name.removesuffix("_2"))
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        if part is not None and (folders[name] / file).is_file():
            check_part_config(part, _read_json(inside(path, f"{name}/{file}")))
    variants = {
        name: check_safetensors(folders[name]) for name in ("vae", *needed[3::2]) if name in needed
    }
    unet = load_unet(folders["unet"], dtype=dtype)
    if int(unet.config.in_channels) != 4:
        raise PipelineError(
            f"{path}/unet takes {unet.config.in_channels} input channels: only text-to-image "
            "UNets with 4 latent channels are supported (not inpainting/depth)"
        )
    vae = _third_party(
        folders["vae"],
        lambda: diffusers.AutoencoderKL.from_pretrained(
            folders["vae"], use_safetensors=True, torch_dtype=dtype, variant=variants["vae"]
        ),
    )
    tokenizers, encoders = [], []
    for enc_name, tok_name in zip(needed[3::2], needed[4::2], strict=True):
        tok_dir, enc_dir = folders[tok_name], folders[enc_name]
        enc_cls = getattr(transformers, index[enc_name][1])
        tok = _third_party(tok_dir, lambda d=tok_dir: transformers.CLIPTokenizer.from_pretrained(d))
        check_tokenizer(tok, tok_dir)
        encoder = _third_party(
            enc_dir,
            # read in the wanted dtype: a float32 load then .to(dtype) held both copies
            lambda c=enc_cls, d=enc_dir, v=variants[enc_name]: c.from_pretrained(
                d, use_safetensors=True, variant=v, **_dtype_kw(dtype)
            ),
        )
        tokenizers.append(tok)
        encoders.append(encoder.to(dtype).eval().requires_grad_(False))
    sched_config = _read_json(inside(path, "scheduler/scheduler_config.json"))
    if prediction_type is not None:
        sched_config["prediction_type"] = prediction_type
    sd2 = not xl and int(unet.config.cross_attention_dim) == 1024
    return SDComponents(
        unet=unet,
        vae=vae.eval().requires_grad_(False),
        scheduler=make_scheduler(sched_config, scheduler),
        tokenizers=tokenizers,
        text_encoders=encoders,
        family="sdxl" if xl else ("sd2" if sd2 else "sd1"),
        name=path.name,
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", xl)),
        extra={"path": str(path)},
    )


def _single_file_components(
    path: Path,
    dtype: torch.dtype,
    scheduler: str | None,
    config: str | Path | None,
    prediction_type: str | None,
) -> SDComponents:
    from unetviz.single_file import load_single_file

    with quiet_loading():
        sf = load_single_file(path, dtype=dtype, config=config, prediction_type=prediction_type)
    return SDComponents(
        unet=sf.unet,
        vae=sf.vae,
        scheduler=make_scheduler(sf.scheduler_config, scheduler),
        tokenizers=sf.tokenizers,
        text_encoders=sf.text_encoders,
        family=sf.family,
        name=sf.name,
        force_zeros_for_empty_prompt=sf.force_zeros_for_empty_prompt,
        extra={"path": sf.path, "single_file": True},
    )


def _dtype_kw(dtype: Any) -> dict[str, Any]:
    """transformers' ``from_pretrained`` dtype keyword: ``dtype`` since 4.56, ``torch_dtype``
    before (still read, with a deprecation warning, after)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}
