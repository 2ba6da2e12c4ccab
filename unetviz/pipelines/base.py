"""The call shape every unetviz pipeline shares: ``pipe(prompt, ...) -> Run``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import unetviz.callargs as callargs
from unetviz.callargs import MAX_SEED
from unetviz.errors import UnetvizError
from unetviz.presenters import present

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from unetviz.capture import Trace


__all__ = [
    "MAX_SEED",
    "Pipeline",
    "PipelineError",
    "ProgressCallback",
    "Run",
    "check_finite",
    "check_seed",
]


class PipelineError(UnetvizError):
    """Bad pipeline input or a model folder that cannot be loaded; the message says which."""


def check_finite(noise: torch.Tensor, step: int, total: int) -> None:
    """PipelineError when the UNet's output at ``step`` (1-based) of ``total`` holds NaN/Inf:
    one reduction and one host read per step, the cheapest check that still names the step.
    Every pipeline's sampling loop calls it after each UNet call."""
    import torch

    if not bool(torch.isfinite(noise).all()):
        raise PipelineError(
            f"the UNet's output at step {step}/{total} is not finite (NaN or Inf): the weights "
            "or the inputs overflow at this dtype (try dtype='float32', or check the model)"
        )


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an exact int in 0..MAX_SEED (``unetviz.callargs``), else PipelineError."""
    return callargs.check_seed(seed, name, error=PipelineError)


ProgressCallback = Callable[[int, int], None]
"""``progress(step, total)``: called after each sampling step (1-based)."""


@dataclass
class Run:
    """One generation: the image, the trace captured while sampling, and the token labels."""

    image: Image.Image
    trace: Trace
    tokens: list[str]
    words: list[str | None] = field(default_factory=list)
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 0
    guidance: float = 1.0
    latents: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Notebook display hook: image, tokens, per-word heatmaps (``unetviz.report``)."""
        return present("run_mimebundle", self)

    def report(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Write one self-contained HTML report of this run (``unetviz.report``)."""
        return present("write_report", self, path, title=title)


class Pipeline(Protocol):
    """What the app and the CLI call; ``height``/``width`` are pixels (None: the model's size);
    ``guidance`` None is the model's own default (7.5 SD 1.x/2.x, 5.0 SDXL, 4.0 the demo)."""

    name: str

    def __call__(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: int = 0,
        steps: int = 25,
        guidance: float | None = None,
        height: int | None = None,
        width: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> Run: ...
