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

from unetviz.errors import UnetvizError  # noqa: E402

from .registry import ModelAccessError, ModelRegistry  # noqa: E402
from .sessions import DEFAULT_MAX_SESSIONS, DEFAULT_TTL_S, SessionStore  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


class LaunchError(UnetvizError):
    """An ``app`` option that cannot work (bad host or port, port in use, missing folder)."""


def check_launch(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    threads: int | None = None,
    model_roots: Iterable[str | os.PathLike] | None = None,
    demo_folder: str | os.PathLike | None = None,
) -> None:
    """Refuse, before anything is imported or served, options that cannot work: LaunchError
    naming the value (the CLI prints it as one ``error:`` line, exit 2)."""
    import ipaddress
    import socket
    from pathlib import Path

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise LaunchError(f"--port {port}: expected a port number 0..65535")
    if threads is not None and not 1 <= int(threads) <= 1024:
        raise LaunchError(f"--threads {threads}: expected a whole number 1..1024")
    looks_ip = all(part.isdigit() for part in host.split(".")) or ":" in host
    try:
        if looks_ip:
            ipaddress.ip_address(host)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (ValueError, OSError):
        raise LaunchError(
            f"--host {host!r}: not an IP address or host name of this machine "
            "(e.g. 127.0.0.1, or 0.0.0.0 for every interface)"
        ) from None
    for root in model_roots or ():
        if not Path(root).expanduser().is_dir():
            raise LaunchError(f"--model-root {str(root)!r}: no such folder")
    if demo_folder is not None and not (Path(demo_folder) / "unet" / "config.json").is_file():
        raise LaunchError(
            f"--demo {str(demo_folder)!r}: not a demo model folder (expected unet/config.json)"
        )
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise LaunchError(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                "another program may be using it: pick another --port"
            ) from None


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LaunchError",
    "ModelAccessError",
    "ModelRegistry",
    "create_app",
    "launch",
    "check_launch",
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
        "state_session_capacity": DEFAULT_MAX_SESSIONS,
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
    """Build and serve the app on ``host:port``; returns (blocks, registry, local url).
    LaunchError (before anything starts) for options that cannot work."""
    check_launch(host, port, threads, model_roots, demo_folder)
    blocks, registry = create_app(model_roots=model_roots, demo_folder=demo_folder, threads=threads)
    blocks.queue(default_concurrency_limit=1)
    # gradio's own banner is silenced (it suggests share links); ours says where the page is
    _, url, _ = blocks.launch(
        server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs()
    )
    if not quiet:
        print(f"[unetviz] the app is ready: {url}  (Ctrl+C stops it)", flush=True)
    if not prevent_thread_lock:
        blocks.block_thread()
    return blocks, registry, url
