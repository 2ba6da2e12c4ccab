"""The one skeleton of a captured pipeline run, shared by the demo and the SD pipelines.

A pipeline checks its call once (:func:`check_call`), prepares its own conditioning, then hands
:func:`captured_run` two closures: ``denoise(progress) -> final latents`` and ``decode(latents)
-> PIL image``. The skeleton enters the edits (``unetviz.edits``), enters the capture, runs the
loop, decodes, writes the trace's meta in the one schema documented in ``docs/trace.md``
("Pipeline meta") and builds the :class:`Run`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import unetviz.callargs as callargs

from .base import PipelineError, ProgressCallback, Run

#: the largest image side (pixels) a call may ask for before the model's own size check
MAX_SIDE = 16384


@dataclass(frozen=True)
class Call:
    """One call's checked arguments; ``facts`` go once into both the trace's meta and the Run."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    height: int
    width: int

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance on: diffusers' rule ``guidance > 1`` (``callargs.uses_cfg``)."""
        return callargs.uses_cfg(self.guidance)

    @property
    def facts(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
        }


def check_call(
    prompt: Any,
    negative_prompt: Any,
    seed: Any,
    steps: Any,
    guidance: Any,
    height: Any,
    width: Any,
) -> Call:
    """Every call argument checked before any work (PipelineError naming the bad one); the
    numbers through ``unetviz.callargs``, so every pipeline, the CLI and the app agree."""
    if not isinstance(prompt, str):
        raise PipelineError(f"prompt must be a string, got {type(prompt).__name__}")
    negative_prompt = "" if negative_prompt is None else negative_prompt
    if not isinstance(negative_prompt, str):
        raise PipelineError(
            f"negative_prompt must be a string, got {type(negative_prompt).__name__}"
        )
    err = {"error": PipelineError}
    return Call(
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=callargs.check_seed(seed, **err),
        steps=callargs.check_steps(steps, **err),
        guidance=callargs.check_guidance(guidance, **err),
        height=callargs.as_int(height, "height", 1, MAX_SIDE, **err),
        width=callargs.as_int(width, "width", 1, MAX_SIDE, **err),
    )


@dataclass
class Prepared:
    """What a pipeline hands the skeleton: its checked call, the tokens of the prompt and of the
    negative prompt, and the pipeline-specific meta (see ``docs/trace.md``, "Pipeline meta")."""

    call: Call
    tokens: list[str]
    words: list[str | None]
    negative_tokens: list[str]
    negative_words: list[str | None]
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def captured_run(
    pipe: Any,
    prep: Prepared,
    denoise: Callable[[ProgressCallback | None], Any],
    decode: Callable[[Any], Any],
    *,
    progress: ProgressCallback | None,
    detail: str,
    edits: Sequence[Any] | Any | None,
    capture_kwargs: dict[str, Any],
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Run:
    """Edits entered, capture entered, ``denoise`` run, ``decode``d, the meta written, the Run
    built. ``context`` wraps the model work (the demo pins torch to one thread)."""
    from unetviz.capture import capture  # the capture engine loads with the first call

    from ..edits.session import for_pipeline

    call = prep.call
    options = {"attention": True, "temb": True, "daam": True, **capture_kwargs}
    options.update(detail=detail, cfg=call.cfg)
    facts = {k: v for k, v in call.facts.items() if k != "prompt"}
    start = time.perf_counter()
    iv = for_pipeline(
        pipe,
        edits,
        tokens=prep.tokens,
        words=prep.words,
        steps=call.steps,
        cfg=call.cfg,
        call=facts | {"height": call.height, "width": call.width},
    )
    with context(), iv, capture(pipe.unet, **options) as trace:
        latents = denoise(progress)
    with context():
        image = decode(latents)
    uncond = call.cfg and options.get("half") == "uncond"
    trace.tokens = list(prep.negative_tokens if uncond else prep.tokens)
    trace.words = list(prep.negative_words if uncond else prep.words)
    trace.meta.update(
        call.facts,
        **prep.meta,
        height=call.height,
        width=call.width,
        latent_shape=list(latents.shape[1:]),
        vae_scale_factor=int(pipe.vae_scale_factor),
        batch=2 if call.cfg else 1,
        cfg=call.cfg,
        detail=detail,
        tokens_of="negative_prompt" if uncond else "prompt",
        loras=describe_loras(getattr(pipe, "loras", None)),
        config=pipe.unet.config.to_dict(),
        seconds=time.perf_counter() - start,
        **iv.meta,
    )
    extra = {
        "negative_tokens": list(prep.negative_tokens),
        "negative_words": list(prep.negative_words),
        **prep.extra,
    }
    return Run(
        image,
        trace,
        list(prep.tokens),
        list(prep.words),
        latents=latents,
        extra=extra,
        **call.facts,
    )


# ------------------------------------------------------------------------------ prompts
def prompt_meta(
    weights: Sequence[float],
    words: Sequence[str | None],
    syntax: str,
    emphasis: str,
    chunks: int = 1,
) -> dict[str, Any]:
    """The prompt-reading keys of the trace meta (``docs/trace.md``, "Pipeline meta")."""
    from unetviz.prompts import word_weights

    return {
        "syntax": syntax,
        "emphasis_mode": emphasis,
        "chunks": chunks,
        "token_weights": [float(w) for w in weights],
        "emphasis": word_weights(words, weights),
    }


def emphasis_edits(weights: Sequence[float], words: Sequence[str | None], edits: Any) -> list[Any]:
    """``edits`` plus one ``Reweight(index, weight)`` per weighted token position: the
    emphasis as prompt-to-prompt's attention equalizer instead of embedding scaling."""
    from unetviz.edits import Reweight

    given = [] if edits is None else list(edits) if isinstance(edits, (list, tuple)) else [edits]
    weighted = [(i, w) for i, w in enumerate(weights) if w != 1.0 and words[i]]
    return given + [Reweight(i, float(w)) for i, w in weighted]


# ------------------------------------------------------------------------------ LoRAs
def describe_loras(fused: Any) -> list[dict[str, Any]]:
    """``[{"file", "scale"}]`` of a FusedLoras (``[]`` for None): the trace meta's ``loras``."""
    if fused is None:
        return []
    return [{"file": str(path), "scale": float(scale)} for path, scale in fused.files]


def fuse_pipeline_loras(pipe: Any, loras: Sequence[Any]) -> Any:
    """Fuse ``[(file, scale), ...]`` into the pipeline's UNet and text encoders
    (``pipe.lora_models()``); kept as ``pipe.loras`` (the last fused set) and returned, so
    ``.unfuse()`` restores the weights bit for bit."""
    from unetviz.lora import fuse_loras

    fused = fuse_loras(pipe.lora_models(), loras)
    pipe.loras = fused
    return fused


def compare_runs(
    pipe: Any,
    prompt: str,
    edits: Sequence[Any] | Any | None = None,
    seed: int = 0,
    loras: Sequence[Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``pipe.compare(prompt, edits=[...], seed=0)`` (``unetviz.edits``) or
    ``pipe.compare(prompt, loras=[(file, scale)], seed=0)``: the same seed and settings run
    without, then with the LoRAs fused (unfused again afterwards, bit for bit); a Comparison
    whose ``edited`` run is the one with the LoRAs."""
    from ..edits.session import Comparison, compare, pixel_diff

    if loras is None:
        return compare(pipe, prompt, edits=edits, seed=seed, **kwargs)
    if edits:
        raise PipelineError("compare takes edits=[...] or loras=[...], not both")
    from unetviz.lora import fuse_loras

    base = pipe(prompt, seed=seed, **kwargs)
    fused = fuse_loras(pipe.lora_models(), loras)
    try:
        with_lora = pipe(prompt, seed=seed, **kwargs)
    finally:
        fused.unfuse()
    described = [{"edit": "LoRA", **d} for d in describe_loras(fused)]
    with_lora.trace.meta["loras"] = with_lora.trace.meta["loras"] + describe_loras(fused)
    return Comparison(
        base=base, edited=with_lora, diff=pixel_diff(base.image, with_lora.image), edits=described
    )
