"""Real Stable Diffusion checkpoints (SD 1.x, 2.x, SDXL): prompt -> CLIP -> sampling loop with
unetviz's UNet under ``unetviz.capture`` -> VAE decode.

Two inputs, both offline: a local diffusers folder (``model_index.json``, ``unet/``,
``text_encoder/``, ``tokenizer/``, ``vae/``, ``scheduler/``) or a single original-format
``.safetensors`` file (see :mod:`unetviz.single_file`). The denoiser is unetviz's UNet; the text
encoders/tokenizers come from transformers, the VAE and the schedulers from diffusers (the
optional ``sd`` extra: ``pip install unetviz[sd]``).

The sampling loop mirrors diffusers' ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``
step for step (same noise from the same seed, same scheduler calls), so the images match.

This module holds the call; :mod:`.clip_tokens` the tokens, :mod:`.sd_loading` the folder
checks and loading, :mod:`.hf_cache` the offline repo-id lookup.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..prompts import (
    MAX_CHUNKS,
    PromptError,
    apply_emphasis,
    check_emphasis,
    check_syntax,
)
from .base import PipelineError, Run, check_finite
from .captured import (
    Call,
    Prepared,
    captured_run,
    check_call,
    compare_runs,
    emphasis_edits,
    fuse_pipeline_loras,
    prompt_meta,
)
from .clip_tokens import PromptTruncatedWarning, Tokens, tokenize, tokenize_prompt
from .hf_cache import from_hf_cache
from .sd_loading import (
    SCHEDULERS,
    SDComponents,
    _default_device,
    _default_dtype,
    _single_file_components,
    load_diffusers_components,
    make_scheduler,
    quiet_loading,
    require_sd_extra,
)

__all__ = [
    "SCHEDULERS",
    "PromptTruncatedWarning",
    "SDComponents",
    "SDPipeline",
    "Tokens",
    "load_sd_pipeline",
    "make_scheduler",
    "require_sd_extra",
    "tokenize",
]


@dataclass
class _Loop:
    """What the denoising loop needs for one call, prepared before the capture starts."""

    call: Call
    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None
    pos: Tokens
    neg: Tokens
    scheduler: Any
    latents: torch.Tensor
    step_kwargs: dict[str, Any]


class SDPipeline:
    """``pipe(prompt, negative_prompt="", seed=0, steps=25, guidance=None, height=None,
    width=None, progress=None) -> Run``, the same call shape as the demo pipeline.

    The UNet runs inside ``unetviz.capture`` for every call; ``trace.tokens`` are the CLIP
    token labels of the prompt (or of the negative prompt with ``half="uncond"``).
    """

    compare = compare_runs  # pipe.compare(prompt, edits=[...] or loras=[...], seed=0)
    fuse_loras = fuse_pipeline_loras  # pipe.fuse_loras([(file, scale)]) -> FusedLoras
    loras = None  # the FusedLoras of the LoRAs fused at load time

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

    def lora_models(self) -> dict[str, nn.Module]:
        """The modules a LoRA file may change, by the part names its keys use."""
        names = ("text_encoder", "text_encoder_2")
        return {"unet": self.unet, **dict(zip(names, self.text_encoders, strict=False))}

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
    def tokens(
        self, prompt: str, negative_prompt: str = "", syntax: str = "a1111"
    ) -> tuple[list[Tokens], list[Tokens]]:
        """The prompt's and the negative prompt's tokens for every tokenizer, as long as each
        other (the shorter padded with empty chunks, as A1111 and compel do), with a
        :class:`PromptTruncatedWarning` for text beyond ``MAX_CHUNKS`` chunks."""
        parse = check_syntax(syntax) == "a1111"
        pos = [tokenize_prompt(t, prompt, emphasis=parse) for t in self.tokenizers]
        neg = [
            tokenize_prompt(t, negative_prompt, emphasis=parse, min_chunks=pos[0].chunks)
            for t in self.tokenizers
        ]
        if neg[0].chunks > pos[0].chunks:
            pos = [
                tokenize_prompt(t, prompt, emphasis=parse, min_chunks=neg[0].chunks)
                for t in self.tokenizers
            ]
        for name, tok in (("prompt", pos[0]), ("negative prompt", neg[0])):
            if tok.truncated:
                warnings.warn(
                    f"{name} has {tok.n_tokens} tokens but at most {MAX_CHUNKS} chunks of "
                    f"{tok.window - 2} are encoded: truncated, dropped {tok.truncated!r}",
                    PromptTruncatedWarning,
                    stacklevel=4,
                )
        return pos, neg

    @torch.no_grad()
    def encode(
        self,
        prompt: str,
        negative_prompt: str,
        cfg: bool,
        syntax: str = "a1111",
        emphasis: str = "embeddings",
    ) -> tuple[torch.Tensor, torch.Tensor | None, Tokens, Tokens]:
        """Prompt embeddings ``[uncond, cond]`` (or ``cond``), SDXL's pooled embeddings, and
        the tokens of prompt and negative prompt. Long prompts are encoded chunk by chunk and
        concatenated along the sequence; with ``emphasis="embeddings"`` each chunk's vectors
        are weighted as A1111 does (:func:`unetviz.prompts.apply_emphasis`)."""
        weighted = check_emphasis(emphasis) == "embeddings"
        if check_syntax(syntax) == "compel":
            if not weighted:
                raise PromptError("emphasis='reweight' reads A1111's syntax: use syntax='a1111'")
            from .compel_syntax import compel_encode

            return compel_encode(self, prompt, negative_prompt, cfg)
        pos, neg = self.tokens(prompt, negative_prompt, syntax)
        cond, pooled = self._embed(pos, weighted)
        if not cfg:
            return cond, pooled, pos[0], neg[0]
        if self.is_xl and negative_prompt == "" and self.parts.force_zeros_for_empty_prompt:
            uncond, uncond_pooled = torch.zeros_like(cond), torch.zeros_like(pooled)
        else:
            uncond, uncond_pooled = self._embed(neg, weighted)
        embeds = torch.cat([uncond, cond])
        if pooled is not None:
            pooled = torch.cat([uncond_pooled, pooled])
        return embeds, pooled, pos[0], neg[0]

    def _embed(
        self, toks: list[Tokens], weighted: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every chunk through the text encoder(s), emphasis applied per chunk and encoder (as
        A1111's ``process_tokens``), chunks concatenated; SDXL's pooled embedding is the first
        chunk's (A1111's ``zs[0].pooled``)."""
        chunks, pooled = [], None
        window = toks[0].window
        for k in range(toks[0].chunks):
            cut = slice(k * window, (k + 1) * window)
            parts = []
            for tok, encoder in zip(toks, self.text_encoders, strict=True):
                with self._on_device(encoder):
                    dev = next(encoder.parameters()).device
                    ids = tok.ids[:, cut].to(dev)
                    if not self.is_xl:
                        mask = None
                        if getattr(encoder.config, "use_attention_mask", False):
                            mask = tok.mask[:, cut].to(dev)
                        z = encoder(ids, attention_mask=mask)[0]
                    else:
                        out = encoder(ids, output_hidden_states=True)
                        if k == 0 and pooled is None and out[0].ndim == 2:
                            pooled = out[0]
                        z = out.hidden_states[-2]
                parts.append(apply_emphasis(z, tok.weights[cut]) if weighted else z)
            chunks.append(torch.cat(parts, dim=-1))
        embeds = torch.cat(chunks, dim=1).to(device=self.device, dtype=self.dtype)
        if pooled is not None:
            pooled = pooled.to(device=self.device, dtype=self.dtype)
        return embeds, pooled

    # ------------------------------------------------------------------ call
    def _prepare(
        self,
        prompt: Any,
        negative_prompt: Any,
        seed: Any,
        steps: Any,
        guidance: Any,
        height: Any,
        width: Any,
        syntax: str = "a1111",
        emphasis: str = "embeddings",
    ) -> _Loop:
        """Everything the denoising loop needs: checked arguments, text embeddings, a fresh
        scheduler, the seeded initial latents and (SDXL) the added conditions."""
        from diffusers.utils.torch_utils import randn_tensor

        call = check_call(
            prompt,
            negative_prompt,
            seed,
            steps,
            self.default_guidance if guidance is None else guidance,
            self.default_size if height is None else height,
            self.default_size if width is None else width,
        )
        self.unet.config.check_size(call.height, call.width, scale=self.vae_scale_factor)
        embeds, pooled, pos, neg = self.encode(
            call.prompt, call.negative_prompt, call.cfg, syntax, emphasis
        )
        scheduler = copy.deepcopy(self.scheduler)  # steppers keep state: one per call
        scheduler.set_timesteps(call.steps, device=self.device)
        generator = torch.Generator("cpu").manual_seed(call.seed)
        latent = (call.height // self.vae_scale_factor, call.width // self.vae_scale_factor)
        shape = (1, int(self.unet.config.in_channels), *latent)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        step_params = set(inspect.signature(scheduler.step).parameters)
        step_kwargs = {"eta": 0.0, "generator": generator}
        added = None
        if self.is_xl:
            h, w = call.height, call.width
            ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=self.device)
            added = {"text_embeds": pooled, "time_ids": torch.cat([ids, ids]) if call.cfg else ids}
        return _Loop(
            call=call,
            embeds=embeds,
            added=added,
            pos=pos,
            neg=neg,
            scheduler=scheduler,
            latents=latents * scheduler.init_noise_sigma,
            step_kwargs={k: v for k, v in step_kwargs.items() if k in step_params},
        )

    def _denoise(self, loop: _Loop, progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """The sampling loop, step for step diffusers' (classifier-free guidance when
        ``call.cfg``); stops with PipelineError naming the step if the UNet's output is not
        finite (one check per step)."""
        scheduler, latents = loop.scheduler, loop.latents
        cfg, guidance = loop.call.cfg, loop.call.guidance
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            inp = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
            noise = self.unet(inp, t, loop.embeds, added_cond_kwargs=loop.added)
            check_finite(noise, i + 1, len(timesteps))
            if cfg:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + guidance * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents, **loop.step_kwargs, return_dict=False)[0]
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
        syntax: str = "a1111",
        emphasis: str = "embeddings",
        **capture_kwargs: Any,
    ) -> Run:
        """Generate one image and capture the UNet while sampling (under ``edits``,
        unetviz.edits interventions, if given).

        ``guidance`` None: 7.5 (SD 1.x/2.x) or 5.0 (SDXL), diffusers' defaults; guidance <= 1
        runs without classifier-free guidance. ``capture_kwargs`` go to ``unetviz.capture``
        (``half="uncond"`` captures the negative prompt's maps; ``mode="stream"`` bounds
        memory; ``daam=False`` drops DAAM's per-head sums).

        Prompts are read as A1111 reads them (``syntax="a1111"``): ``(word:1.3)``, ``((word))``,
        ``[word]``, ``BREAK``, any length in 75-token chunks. ``syntax="literal"`` takes the
        brackets as text; ``syntax="compel"`` reads compel's ``word++`` / ``(word)1.3``.
        ``emphasis="reweight"`` leaves the embeddings unweighted and applies each weight as a
        ``unetviz.edits.Reweight`` of its tokens' cross-attention instead.
        """
        loop = self._prepare(
            prompt, negative_prompt, seed, steps, guidance, height, width, syntax, emphasis
        )
        if emphasis == "reweight":
            edits = emphasis_edits(loop.pos.weights, loop.pos.words, edits)
        prep = Prepared(
            call=loop.call,
            tokens=loop.pos.labels,
            words=loop.pos.words,
            negative_tokens=loop.neg.labels,
            negative_words=loop.neg.words,
            meta={
                "model": self.name,
                "model_path": self.parts.extra.get("path"),
                "family": self.family,
                "scheduler": type(loop.scheduler).__name__,
                "dtype": str(self.dtype).removeprefix("torch."),
                "truncated": loop.pos.truncated,
                **prompt_meta(loop.pos.weights, loop.pos.words, syntax, emphasis, loop.pos.chunks),
            },
            extra={"truncated": loop.pos.truncated, "family": self.family},
        )
        return captured_run(
            self,
            prep,
            lambda progress: self._denoise(loop, progress),
            self.decode,
            progress=progress,
            detail=detail,
            edits=edits,
            capture_kwargs=capture_kwargs,
        )

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


def load_sd_pipeline(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    scheduler: str | None = None,
    offload: bool | None = None,
    config: str | Path | None = None,
    prediction_type: str | None = None,
    loras: Sequence[Any] | None = None,
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
    ``loras``: ``[(file, scale), ...]`` fused into the UNet and text encoders
    (:mod:`unetviz.lora`); ``pipe.loras.unfuse()`` takes them out again.
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
    pipe = SDPipeline(parts, device=dev, offload=use_offload)
    if loras:
        pipe.fuse_loras(loras)
    return pipe
