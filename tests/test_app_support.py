"""Helpers shared by the app tests (no tests here): an in-process server on a free port,
running the shipped demo model (assets/demo)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = REPO / "assets" / "demo" / "unet" / "diffusion_pytorch_model.safetensors"
TEST_STEPS = 4


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A running app: ``url``, ``registry``, ``blocks``, ``root`` (its one model root)."""

    def __init__(self, tmp: Path) -> None:
        from unetviz.app import create_app, launch_kwargs

        self.root = tmp / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        assert DEMO_WEIGHTS.is_file(), f"the shipped demo model is missing: {DEMO_WEIGHTS}"
        self.blocks, self.registry = create_app(model_roots=[self.root], preload=False)
        self.blocks.queue(default_concurrency_limit=1)
        self.port = free_port()
        t0 = time.perf_counter()
        _, self.url, _ = self.blocks.launch(
            server_name="127.0.0.1",
            server_port=self.port,
            prevent_thread_lock=True,
            quiet=True,
            **launch_kwargs(),
        )
        self.start_s = time.perf_counter() - t0

    def close(self) -> None:
        self.blocks.close()


def run_args(prompt: str = "a red circle", steps: int = TEST_STEPS, **kw: Any) -> tuple:
    """Positional inputs of the /run endpoint: model, prompt, negative, seed, steps, guidance,
    then the heatmap controls."""
    controls = heatmap_args()
    return (
        kw.get("model", "demo"),
        prompt,
        kw.get("negative", ""),
        kw.get("seed", 0),
        steps,
        kw.get("guidance", 4.0),
        *controls,
    )


def heatmap_args(
    tokens: list[int] | None = None,
    step_from: int = 0,
    step_to: int = 0,
    locations: tuple[str, ...] = ("down", "mid", "up"),
    resolutions: list[int] | None = None,
    heads: list[int] | None = None,
    preset: str = "custom",
    normalize: str = "minmax",
    threshold: float = 0.0,
    opacity: float = 0.6,
) -> tuple:
    """Positional inputs of the /heatmaps endpoint (the controls)."""
    return (
        tokens or [],
        step_from,
        step_to,
        list(locations),
        resolutions or [],
        heads or [],
        preset,
        normalize,
        threshold,
        opacity,
    )
