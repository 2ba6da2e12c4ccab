"""Pipelines: prompt -> tokens -> embeddings -> sampling loop that calls the UNet under capture.

``load_pipeline("demo")`` gives the small offline model shipped with unetviz; any other name or
path goes through :func:`unetviz.detect.detect_model`: a demo-format folder opens as the demo
pipeline, a Stable Diffusion folder, single file or cached repo id as the SD pipeline
(``unetviz.pipelines.sd``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetviz.detect import detect_model

from .base import Pipeline, PipelineError, ProgressCallback, Run

__all__ = ["Pipeline", "PipelineError", "ProgressCallback", "Run", "load_pipeline"]


def load_pipeline(
    name_or_path: str | Path = "demo",
    loras: Sequence[Any] | None = None,
    **sd_options: Any,
) -> Pipeline:
    """``"demo"`` or a demo-format folder -> DemoPipeline; a diffusers SD folder, a single-file
    ``.safetensors`` or a cached repo id -> ``load_sd_pipeline(path, **sd_options)``.

    ``loras``: ``[(file, scale), ...]`` (or plain paths, scale 1) fused into the UNet and text
    encoder(s) (:mod:`unetviz.lora`; ``pipe.loras.unfuse()`` takes them out). ``device`` and
    ``dtype`` apply to every model; the other ``sd_options`` (scheduler, offload, config,
    prediction_type) are only for Stable Diffusion models: given (not None) for a demo model
    they raise PipelineError."""
    kind = detect_model(name_or_path)
    if kind.is_demo:
        where = {k: sd_options.pop(k, None) for k in ("device", "dtype")}
        given = sorted(k for k, v in sd_options.items() if v is not None)
        if given:
            raise PipelineError(
                f"{', '.join(given)}: only for Stable Diffusion models, and "
                f"{str(name_or_path)!r} is a demo model"
            )
        from .demo import DemoPipeline

        pipe = DemoPipeline(kind.path, **where)
        if loras:
            pipe.fuse_loras(loras)
        return pipe
    from .sd import load_sd_pipeline  # imports diffusers/transformers only when it loads

    return load_sd_pipeline(name_or_path, loras=loras, **sd_options)
