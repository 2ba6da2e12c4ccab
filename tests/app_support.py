"""Helpers shared by the app tests: an in-process server on a free port,
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
        from unetviz.app import create_app, serve

        self.root = tmp / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        assert DEMO_WEIGHTS.is_file(), f"the shipped demo model is missing: {DEMO_WEIGHTS}"
        self.blocks, self.registry = create_app(model_roots=[self.root], preload=False)
        self.handlers = self.blocks.unetviz_handlers
        self.runs = 0  # generations through the registry (re-aggregation must not add any)
        generate = self.registry.generate

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.runs += 1
            return generate(*args, **kwargs)

        self.registry.generate = counted  # type: ignore[method-assign]
        self.port = free_port()
        t0 = time.perf_counter()
        self.url = serve(self.blocks, port=self.port)
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
    scale: str = "shared",
    threshold: float = 0.0,
    opacity: float = 0.6,
) -> tuple:
    """Positional inputs of the /heatmaps endpoint (the controls, in ui.CONTROL_NAMES order)."""
    return (
        tokens or [],
        {"lo": step_from, "hi": step_to, "max": max(step_to, TEST_STEPS - 1)},
        list(locations),
        resolutions or [],
        heads or [],
        preset,
        normalize,
        scale,
        threshold,
        opacity,
    )


class Request:
    """What handlers read of ``gr.Request``: the session key."""

    def __init__(self, session_hash: str = "test") -> None:
        self.session_hash = session_hash


def controls_form(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """The heatmap controls by name (same arguments as :func:`heatmap_args`)."""
    from unetviz.app.attention import CONTROLS

    return dict(zip(CONTROLS, heatmap_args(*args, **kwargs), strict=True))


def run_form(prompt: str = "a red circle", steps: Any = TEST_STEPS, **kw: Any) -> dict[str, Any]:
    """A Run's named inputs: model, prompt, negative, seed, steps, guidance and the controls
    (``controls=`` a dict of :func:`controls_form` arguments)."""
    return {
        "run_model": kw.get("model", "demo"),
        "prompt": prompt,
        "negative": kw.get("negative", ""),
        "seed": kw.get("seed", "0"),
        "steps": steps,
        "guidance": kw.get("guidance", 4.0),
        **controls_form(**kw.get("controls", {})),
    }


def arch_form(model: str = "demo", folder: str = "", h: Any = None, w: Any = None,
              batch: Any = 2, detail: str = "blocks") -> dict[str, Any]:  # fmt: skip
    """The Architecture tab's named inputs."""
    return {"arch_model": model, "arch_folder": folder, "arch_h": h, "arch_w": w,
            "arch_batch": batch, "arch_detail": detail}  # fmt: skip


def named(fn: Any, values: Any) -> dict[str, Any]:
    """An API route's result (a tuple in the handler's output order, without the gr.State
    outputs, which never leave the server) by output name."""
    values = values if isinstance(values, list | tuple) else (values,)
    names = [n for n in fn.outputs if n not in STATES]
    return dict(zip(names, values, strict=True))


#: the app's gr.State components (per-browser values the API does not return)
STATES = ("arch_state",)


def local_page(browser: Any, url: str, **context_kw: Any) -> tuple[Any, Any]:
    """(context, page) at ``url`` where any request to a host other than 127.0.0.1 is recorded
    in ``page.outside`` and aborted, and console errors are printed (shown on a failure)."""
    from urllib.parse import urlparse

    context = browser.new_context(viewport={"width": 1440, "height": 1000}, **context_kw)
    outside: list[str] = []

    def route(r: Any) -> None:
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and print("console error:", m.text[:300]))
    page.outside = outside
    page.goto(url)
    return context, page
