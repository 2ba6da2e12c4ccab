"""Pipelines: prompt -> tokens -> embeddings -> sampling loop that calls the UNet under capture.

``load_pipeline("demo")`` gives the small offline model shipped in ``assets/demo/``; any other
name or path goes to the Stable Diffusion pipeline (``unetviz.pipelines.sd``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Pipeline, PipelineError, ProgressCallback, Run

__all__ = ["Pipeline", "PipelineError", "ProgressCallback", "Run", "load_pipeline"]


def load_pipeline(name_or_path: str | Path = "demo", **kwargs: Any) -> Pipeline:
    """``"demo"`` (or a folder holding a demo model) -> DemoPipeline; anything else -> the SD
    pipeline module's ``load_sd_pipeline(name_or_path, **kwargs)``."""
    from .demo import DEMO_DIR, DemoPipeline

    if str(name_or_path) == "demo":
        return DemoPipeline(DEMO_DIR, **kwargs)
    path = Path(name_or_path)
    if (
        (path / "text_encoder" / "config.json").is_file()
        and (path / "tokenizer" / "vocab.json").is_file()
        and not (path / "model_index.json").is_file()  # real SD folders also have these
    ):
        return DemoPipeline(path, **kwargs)
    from .sd import load_sd_pipeline  # imports diffusers/transformers only when it loads

    return load_sd_pipeline(name_or_path, **kwargs)
