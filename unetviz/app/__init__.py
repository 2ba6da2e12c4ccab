"""The unetviz web app (Gradio): ``create_app(...)`` builds it, ``launch(...)`` serves it.

Offline by construction: analytics and hub telemetry are switched off before gradio is
imported, the server binds 127.0.0.1 unless told otherwise, and share links are never made.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

# must happen before gradio is imported anywhere
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from .registry import ModelAccessError, ModelRegistry  # noqa: E402
from .sessions import DEFAULT_MAX_SESSIONS, DEFAULT_TTL_S, SessionStore  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ModelAccessError",
    "ModelRegistry",
    "create_app",
    "launch",
    "launch_kwargs",
]


def create_app(
    model_roots: Iterable[str | os.PathLike] | None = None,
    demo_folder: str | os.PathLike | None = None,
    preload: bool = True,
    threads: int | None = None,
    session_ttl_s: float = DEFAULT_TTL_S,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
) -> tuple[Any, ModelRegistry]:
    """Build the Blocks and their registry; ``preload`` loads the demo model in the
    background so the first Run does not wait for it; ``threads``: torch threads (default
    ``$UNETVIZ_TORCH_THREADS`` or 1, see ``ModelRegistry.apply_thread_policy``); a session's
    results are freed after ``session_ttl_s`` idle seconds, on disconnect, or when more than
    ``max_sessions`` are live (least recently used first)."""
    from .ui import build_blocks

    registry = ModelRegistry(roots=model_roots, demo_folder=demo_folder, threads=threads)
    sessions = SessionStore(ttl_s=session_ttl_s, max_sessions=max_sessions)
    sessions.start_sweeper()
    blocks = build_blocks(registry, sessions=sessions)
    if preload:
        registry.preload()  # imports torch and applies the thread policy in the background
    else:
        registry.apply_thread_policy()
    return blocks, registry


def launch_kwargs() -> dict[str, Any]:
    """What gradio 6 takes at ``launch()`` (theme, css) plus the offline-safe settings and
    the limits (upload size, live gradio sessions)."""
    import gradio as gr

    from .ui import CSS
    from .views import MAX_UPLOAD_MB

    theme = gr.themes.Soft(
        primary_hue="orange",
        font=[gr.themes.Font("DejaVu Sans"), gr.themes.Font("sans-serif")],
        font_mono=[gr.themes.Font("DejaVu Sans Mono"), gr.themes.Font("monospace")],
    )
    return {
        "theme": theme,
        "css": CSS,
        "share": False,
        "ssr_mode": False,
        "mcp_server": False,
        "show_error": True,
        "footer_links": [],
        "pwa": False,
        "max_file_size": f"{MAX_UPLOAD_MB}mb",
        "state_session_capacity": 2 * DEFAULT_MAX_SESSIONS,
        "allowed_paths": [],
    }


def launch(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    model_roots: Iterable[str | os.PathLike] | None = None,
    demo_folder: str | os.PathLike | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    threads: int | None = None,
) -> tuple[Any, ModelRegistry, str]:
    """Build and serve the app on ``host:port``; returns (blocks, registry, local url)."""
    blocks, registry = create_app(model_roots=model_roots, demo_folder=demo_folder, threads=threads)
    blocks.queue(default_concurrency_limit=1)
    _, url, _ = blocks.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        **launch_kwargs(),
    )
    return blocks, registry, url
