"""Real Stable Diffusion checkpoints (SD 1.x, 2.x, SDXL): prompt -> CLIP -> sampling loop with
unetviz's UNet under ``unetviz.capture`` -> VAE decode.

Two inputs, both offline: a local diffusers folder (``model_index.json``, ``unet/``,
``text_encoder/``, ``tokenizer/``, ``vae/``, ``scheduler/``) or a single original-format
``.safetensors`` file (see :mod:`unetviz.single_file`). The denoiser is unetviz's UNet; the text
encoders/tokenizers come from transformers, the VAE and the schedulers from diffusers (the
optional ``sd`` extra: ``pip install unetviz[sd]``).

The sampling loop mirrors diffusers' ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``
step for step (same noise from the same seed, same scheduler calls), so the images match.

Prompts longer than the text encoder's window (75 tokens + SOS/EOS) are truncated, as diffusers
does, with a :class:`PromptTruncatedWarning` naming the dropped text; ``trace.meta["truncated"]``
keeps it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetviz.config import ConfigError, check_part_config, read_json
from unetviz.detect import PICKLE_SUFFIXES, confined_folder, inside, pickle_folder_message
from unetviz.errors import UnetvizError

from ..edits.session import compare, for_pipeline
from .base import PipelineError, Run, check_finite, check_seed

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


class PromptTruncatedWarning(UserWarning):
    """A prompt longer than the text encoder's 75-token window; the tail was dropped."""


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


# ---------------------------------------------------------------------------------- prompts
@dataclass
class Tokens:
    """One tokenized prompt: ids (1, T), labels as the tokenizer makes them, owning words."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: list[str]
    words: list[str | None]
    truncated: str = ""
    n_tokens: int = 0  # content tokens before truncation (SOS/EOS excluded)


def tokenize(tokenizer: Any, text: str, max_length: int | None = None) -> Tokens:
    """Tokenize like diffusers (pad to ``max_length``, truncate) and label every position.

    Labels are the tokenizer's own strings (``<|startoftext|>``, ``cat</w>``,
    ``<|endoftext|>``; padding positions keep the pad token's label). ``words`` merges BPE
    pieces into the word they spell (``zebra`` for ``ze`` + ``bra</w>``); specials and padding
    are ``None``.
    """
    max_length = int(max_length or tokenizer.model_max_length)
    enc = tokenizer(
        text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    ids = enc.input_ids
    full = tokenizer(text, padding="longest", return_tensors="pt", verbose=False).input_ids[0]
    n_content = max(int(full.shape[0]) - 2, 0)
    truncated = ""
    if full.shape[0] > max_length:
        truncated = tokenizer.decode(full[max_length - 1 : -1])
    labels = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    specials = set(tokenizer.all_special_tokens)
    words: list[str | None] = [None] * len(labels)
    eos_seen = False
    group: list[int] = []
    for i, label in enumerate(labels):
        if eos_seen or label in specials:
            eos_seen = eos_seen or (i > 0 and label == tokenizer.eos_token)
            if group:  # a word cut by truncation
                _assign(tokenizer, labels, words, group)
                group = []
            continue
        group.append(i)
        if label.endswith("</w>"):
            _assign(tokenizer, labels, words, group)
            group = []
    if group:
        _assign(tokenizer, labels, words, group)
    return Tokens(
        ids=ids,
        mask=enc.attention_mask,
        labels=labels,
        words=words,
        truncated=truncated,
        n_tokens=n_content,
    )


def _byte_decoder() -> dict[str, int]:
    """Inverse of CLIP's byte -> printable-unicode table (GPT-2 style byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = _byte_decoder()


def _assign(tokenizer: Any, labels: list[str], words: list[str | None], group: list[int]) -> None:
    text = "".join(labels[i] for i in group).replace("</w>", "")
    try:
        word = bytearray(_BYTE_DECODER[c] for c in text).decode("utf-8", errors="replace")
    except KeyError:  # not a byte-level BPE vocabulary
        word = tokenizer.convert_tokens_to_string([labels[i] for i in group])
    word = word.strip() or None
    for i in group:
        words[i] = word


# ---------------------------------------------------------------------------------- pipeline
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


#: The most sampling steps one call may take (diffusers' schedulers train on 1000 timesteps).
MAX_STEPS = 1000


@dataclass
class _Call:
    """One call's prepared state: the user-facing ``facts`` (prompt, negative_prompt, seed,
    steps, guidance) written once into both the trace's meta and the Run, plus what the loop
    needs."""

    facts: dict[str, Any]
    height: int
    width: int
    cfg: bool
    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None
    pos: Tokens
    neg: Tokens
    scheduler: Any
    latents: torch.Tensor
    step_kwargs: dict[str, Any]


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise PipelineError(f"guidance={value!r}: expected a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PipelineError(f"guidance={value!r}: expected a number") from None


def _as_int(name: str, value: Any) -> int:
    """An int from an int, an integral float or a numeric string (what callers such as form
    fields pass); PipelineError for bools, fractions, NaN and anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise PipelineError(f"{name}={value!r}: expected an integer")


class SDPipeline:
    """``pipe(prompt, negative_prompt="", seed=0, steps=25, guidance=None, height=None,
    width=None, progress=None) -> Run``, the same call shape as the demo pipeline.

    The UNet runs inside ``unetviz.capture`` for every call; ``trace.tokens`` are the CLIP
    token labels of the prompt (or of the negative prompt with ``half="uncond"``).
    """

    compare = compare  # pipe.compare(prompt, edits=[...], seed=0) -> Comparison

    def __init__(
        self,
        parts: SDComponents,
        device: str | torch.device = "cpu",
        offload: bool = False,
    ):
        self.parts = parts
        self.name = parts.name
        self.family = parts.family
        self.unet = parts.unet
        self.vae = parts.vae
        self.scheduler = parts.scheduler
        self.tokenizers = parts.tokenizers
        self.text_encoders = parts.text_encoders
        self.device = torch.device(device)
        self.offload = offload
        self.dtype = next(self.unet.parameters()).dtype
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet.to(self.device)
        for module in [self.vae, *self.text_encoders]:
            module.to("cpu" if offload else self.device)

    @property
    def is_xl(self) -> bool:
        return self.family == "sdxl"

    @property
    def default_guidance(self) -> float:
        return 5.0 if self.is_xl else 7.5

    @property
    def default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @contextlib.contextmanager
    def _on_device(self, module: nn.Module) -> Iterator[nn.Module]:
        """Sequential offload: with ``offload``, ``module`` visits the GPU only while used."""
        if not self.offload:
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode(
        self, prompt: str, negative_prompt: str, cfg: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, Tokens, Tokens]:
        """Prompt embeddings ``[uncond, cond]`` (or ``cond``), SDXL's pooled embeddings, and
        the tokens of prompt and negative prompt."""
        pos = [tokenize(t, prompt) for t in self.tokenizers]
        neg = [
            tokenize(t, negative_prompt, pos[i].ids.shape[1]) for i, t in enumerate(self.tokenizers)
        ]
        if pos[0].truncated:
            warnings.warn(
                f"prompt has {pos[0].n_tokens} tokens but the text encoder takes "
                f"{pos[0].ids.shape[1] - 2}: truncated, dropped {pos[0].truncated!r}",
                PromptTruncatedWarning,
                stacklevel=3,
            )
        if neg[0].truncated:
            warnings.warn(
                f"negative prompt has {neg[0].n_tokens} tokens: truncated, dropped "
                f"{neg[0].truncated!r}",
                PromptTruncatedWarning,
                stacklevel=3,
            )
        cond, pooled = self._embed(pos)
        if not cfg:
            return cond, pooled, pos[0], neg[0]
        if self.is_xl and negative_prompt == "" and self.parts.force_zeros_for_empty_prompt:
            uncond, uncond_pooled = torch.zeros_like(cond), torch.zeros_like(pooled)
        else:
            uncond, uncond_pooled = self._embed(neg)
        embeds = torch.cat([uncond, cond])
        if pooled is not None:
            pooled = torch.cat([uncond_pooled, pooled])
        return embeds, pooled, pos[0], neg[0]

    def _embed(self, toks: list[Tokens]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.is_xl:
            encoder = self.text_encoders[0]
            with self._on_device(encoder):
                dev = next(encoder.parameters()).device
                mask = None
                if getattr(encoder.config, "use_attention_mask", False):
                    mask = toks[0].mask.to(dev)
                out = encoder(toks[0].ids.to(dev), attention_mask=mask)[0]
            return out.to(device=self.device, dtype=self.dtype), None
        hidden, pooled = [], None
        for tok, encoder in zip(toks, self.text_encoders, strict=True):
            with self._on_device(encoder):
                dev = next(encoder.parameters()).device
                out = encoder(tok.ids.to(dev), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        embeds = torch.cat(hidden, dim=-1).to(device=self.device, dtype=self.dtype)
        return embeds, pooled.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ call
    def _check(
        self, prompt: Any, seed: Any, steps: Any, guidance: float, height: int, width: int
    ) -> None:
        """PipelineError (ConfigError for the size) naming the bad argument, before any work."""
        if not isinstance(prompt, str):
            raise PipelineError(f"prompt must be a string, got {type(prompt).__name__}")
        check_seed(seed)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise PipelineError(f"steps must be >= 1 and <= {MAX_STEPS}, got {steps!r}")
        if not math.isfinite(guidance):
            raise PipelineError(f"guidance={guidance}: expected a finite number")
        self.unet.config.check_size(height, width, scale=self.vae_scale_factor)

    def _prepare(
        self,
        prompt: str,
        negative_prompt: str,
        seed: int,
        steps: int,
        guidance: float | None,
        height: int | None,
        width: int | None,
    ) -> _Call:
        """Everything the denoising loop needs: checked arguments, text embeddings, a fresh
        scheduler, the seeded initial latents and (SDXL) the added conditions."""
        from diffusers.utils.torch_utils import randn_tensor

        guidance = self.default_guidance if guidance is None else _as_float(guidance)
        height = self.default_size if height is None else _as_int("height", height)
        width = self.default_size if width is None else _as_int("width", width)
        seed, steps = _as_int("seed", seed), _as_int("steps", steps)
        self._check(prompt, seed, steps, guidance, height, width)
        cfg = guidance > 1.0
        embeds, pooled, pos, neg = self.encode(prompt, negative_prompt or "", cfg)
        scheduler = copy.deepcopy(self.scheduler)  # steppers keep state: one per call
        scheduler.set_timesteps(steps, device=self.device)
        generator = torch.Generator("cpu").manual_seed(seed)
        latent = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        shape = (1, int(self.unet.config.in_channels), *latent)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        step_params = set(inspect.signature(scheduler.step).parameters)
        step_kwargs = {"eta": 0.0, "generator": generator}
        added = None
        if self.is_xl:
            ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype)
            ids = ids.to(self.device)
            added = {"text_embeds": pooled, "time_ids": torch.cat([ids, ids]) if cfg else ids}
        return _Call(
            facts={
                "prompt": prompt,
                "negative_prompt": negative_prompt or "",
                "seed": seed,
                "steps": steps,
                "guidance": guidance,
            },
            height=height,
            width=width,
            cfg=cfg,
            embeds=embeds,
            added=added,
            pos=pos,
            neg=neg,
            scheduler=scheduler,
            latents=latents * scheduler.init_noise_sigma,
            step_kwargs={k: v for k, v in step_kwargs.items() if k in step_params},
        )

    def _denoise(self, call: _Call, progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """The sampling loop, step for step diffusers' (classifier-free guidance when
        ``call.cfg``); stops with PipelineError naming the step if the UNet's output is not
        finite (one check per step)."""
        scheduler, latents, guidance = call.scheduler, call.latents, call.facts["guidance"]
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            inp = scheduler.scale_model_input(torch.cat([latents] * 2) if call.cfg else latents, t)
            noise = self.unet(inp, t, call.embeds, added_cond_kwargs=call.added)
            check_finite(noise, i + 1, len(timesteps))
            if call.cfg:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + guidance * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents, **call.step_kwargs, return_dict=False)[0]
            if progress is not None:
                progress(i + 1, len(timesteps))
        return latents

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: int = 0,
        steps: int = 25,
        guidance: float | None = None,
        height: int | None = None,
        width: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        detail: str = "layers",
        edits: list[Any] | None = None,
        **capture_kwargs: Any,
    ) -> Run:
        """Generate one image and capture the UNet while sampling (under ``edits``,
        unetviz.edits interventions, if given).

        ``guidance`` None: 7.5 (SD 1.x/2.x) or 5.0 (SDXL), diffusers' defaults; guidance <= 1
        runs without classifier-free guidance. ``capture_kwargs`` go to ``unetviz.capture``
        (``half="uncond"`` captures the negative prompt's maps; ``mode="stream"`` bounds
        memory).
        """
        from unetviz.capture import capture

        call = self._prepare(prompt, negative_prompt, seed, steps, guidance, height, width)
        options = {"attention": True, "temb": True, **capture_kwargs}
        options.update(detail=detail, cfg=call.cfg)
        start = time.perf_counter()
        iv = for_pipeline(
            self,
            edits,
            tokens=call.pos.labels,
            words=call.pos.words,
            steps=call.facts["steps"],
            cfg=call.cfg,
            call={k: v for k, v in call.facts.items() if k != "prompt"}
            | {"height": call.height, "width": call.width},
        )
        with iv, capture(self.unet, **options) as trace:
            latents = self._denoise(call, progress)
        image = self.decode(latents)
        half = "uncond" if call.cfg and capture_kwargs.get("half") == "uncond" else "cond"
        seconds = time.perf_counter() - start
        return self._run(call, trace, image, latents, detail, half, seconds, iv.meta)

    def _run(
        self,
        call: _Call,
        trace: Any,
        image: Any,
        latents: torch.Tensor,
        detail: str,
        half: str,
        seconds: float,
        edit_meta: dict[str, Any],
    ) -> Run:
        """The Run, with every fact written once: ``call.facts`` go to both the trace's meta
        and the Run; the rest only where it belongs."""
        shown = call.neg if half == "uncond" else call.pos
        trace.tokens = list(shown.labels)
        trace.words = list(shown.words)
        trace.meta.update(
            call.facts,
            model=self.name,
            model_path=self.parts.extra.get("path"),
            family=self.family,
            height=call.height,
            width=call.width,
            batch=2 if call.cfg else 1,
            cfg=call.cfg,
            detail=detail,
            scheduler=type(call.scheduler).__name__,
            dtype=str(self.dtype).removeprefix("torch."),
            tokens_of="negative_prompt" if half == "uncond" else "prompt",
            truncated=call.pos.truncated,
            config=self.unet.config.to_dict(),
            seconds=seconds,
            **edit_meta,
        )
        extra = {
            "negative_tokens": list(call.neg.labels),
            "negative_words": list(call.neg.words),
            "truncated": call.pos.truncated,
            "family": self.family,
        }
        tokens, words = list(call.pos.labels), list(call.pos.words)
        return Run(image, trace, tokens, words, latents=latents, extra=extra, **call.facts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Any:
        """Latents -> PIL image through the VAE, exactly as diffusers post-processes."""
        import numpy as np
        from PIL import Image

        vae = self.vae
        with self._on_device(vae):
            upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
            if upcast:
                vae.to(torch.float32)
            dev = next(vae.parameters()).device
            z = latents.to(device=dev, dtype=next(vae.parameters()).dtype)
            mean = getattr(vae.config, "latents_mean", None)
            std = getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(z)
                std_t = torch.tensor(std).view(1, -1, 1, 1).to(z)
                z = z * std_t / vae.config.scaling_factor + mean_t
            else:
                z = z / vae.config.scaling_factor
            image = vae.decode(z, return_dict=False)[0]
            if upcast:
                vae.to(torch.float16)
        image = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
        return Image.fromarray((image[0] * 255).round().astype(np.uint8))


# ---------------------------------------------------------------------------------- loading
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
            lambda c=enc_cls, d=enc_dir, v=variants[enc_name]: c.from_pretrained(
                d, use_safetensors=True, variant=v
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


def from_hf_cache(repo_id: str) -> Path | None:
    """The local snapshot folder of a Hugging Face repo id (``org/name``) already in the cache,
    found offline; None if it is not a repo id or not cached."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not available offline"
        return None
    return Path(folder)


def load_sd_pipeline(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    scheduler: str | None = None,
    offload: bool | None = None,
    config: str | Path | None = None,
    prediction_type: str | None = None,
) -> SDPipeline:
    """Open a local Stable Diffusion model (offline) as a pipeline with the demo's call shape.

    ``path``: a diffusers folder (SD 1.x, 2.x, SDXL), a repo id already in the local Hugging
    Face cache (``stabilityai/stable-diffusion-xl-base-1.0``), or a single original-format
    ``.safetensors`` file (``config``: an optional diffusers folder whose configs/tokenizers
    describe it; otherwise the shipped SD 1.x/2.x/XL configs are used). ``.ckpt`` and other
    pickles are refused. ``dtype``: ``float32`` / ``float16`` / ``bfloat16`` (None: float32 on
    CPU, float16 on CUDA). ``device`` None: CUDA when present. ``offload`` (default: on when
    the device is CUDA) keeps the text encoders and the VAE on the CPU between uses.
    ``scheduler`` swaps the scheduler class (``ddim``, ``euler``, ``euler_a``, ``dpm``, ...);
    ``prediction_type`` (``epsilon`` / ``v_prediction``) overrides the scheduler's, e.g. for an
    SD 2.x 512-base single file (2.x files default to the 768-v releases' ``v_prediction``).
    """
    from unetviz.detect import detect_model

    require_sd_extra()
    kind = detect_model(path)
    dev = _default_device(device)
    torch_dtype = _default_dtype(dtype, dev)
    path = kind.path
    if kind.kind == "hub":
        cached = from_hf_cache(str(path))
        if cached is None:
            raise PipelineError(
                f"model not found: {str(path)!r} is neither 'demo' nor an existing diffusers "
                "folder or .safetensors file, nor a repo id in the local Hugging Face cache "
                "(unetviz works offline: download models beforehand)"
            )
        path = cached
    if kind.kind == "single":
        parts = _single_file_components(path, torch_dtype, scheduler, config, prediction_type)
    else:
        with quiet_loading():
            parts = load_diffusers_components(
                path, torch_dtype, scheduler=scheduler, prediction_type=prediction_type
            )
    use_offload = dev.type == "cuda" if offload is None else bool(offload)
    return SDPipeline(parts, device=dev, offload=use_offload)
