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

from .fast_import import install as _fast_gradio_import  # noqa: E402

_fast_gradio_import()  # before gradio is imported: skip its .pyi stub rewrite (~2 s)

from unetviz.errors import UnetvizError  # noqa: E402

from .registry import ModelAccessError, ModelRegistry  # noqa: E402
from .sessions import (  # noqa: E402
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_TTL_S,
    SessionStore,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


class LaunchError(UnetvizError):
    """An ``app`` option that cannot work (bad host or port, port in use, missing folder)."""


#: the dtypes ``unetviz app --dtype`` takes (``unetviz.weights`` reads them)
DTYPES = ("float32", "float16", "bfloat16", "fp32", "fp16", "bf16")


def check_launch(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    threads: int | None = None,
    model_roots: Iterable[str | os.PathLike] | None = None,
    demo_folder: str | os.PathLike | None = None,
    session_mb: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> None:
    """Refuse, before anything is imported or served, options that cannot work: LaunchError
    naming the value (the CLI prints it as one ``error:`` line, exit 2)."""
    import ipaddress
    import re
    import socket
    from pathlib import Path

    if dtype is not None and dtype not in DTYPES:
        raise LaunchError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if device is not None and not re.fullmatch(r"cpu|mps|cuda(:[0-9]{1,2})?", str(device)):
        raise LaunchError(f"--device {device!r}: expected cpu, cuda, cuda:N or mps")

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise LaunchError(f"--port {port}: expected a port number 0..65535")
    if threads is not None and not 1 <= int(threads) <= 1024:
        raise LaunchError(f"--threads {threads}: expected a whole number 1..1024")
    if session_mb is not None and not 16 <= int(session_mb) <= 1024**2:
        raise LaunchError(
            f"--session-mb {session_mb}: expected a whole number of MiB 16..1048576 (memory "
            "all sessions' results may hold together)"
        )
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
        if os.name != "nt":  # as uvicorn binds: a restart's closed connections (TIME_WAIT)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # don't block the port
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
    "serve",
    "warm_up",
    "check_launch",
    "launch_kwargs",
]


def create_app(
    model_roots: Iterable[str | os.PathLike] | None = None,
    demo_folder: str | os.PathLike | None = None,
    preload: bool | None = True,
    threads: int | None = None,
    session_ttl_s: float = DEFAULT_TTL_S,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    max_session_bytes: int = DEFAULT_MAX_BYTES,
    dtype: str | None = None,
    device: str | None = None,
) -> tuple[Any, ModelRegistry]:
    """Build the Blocks and their registry; ``preload`` warms the app in the background (see
    :func:`warm_up`) so the first Run and the first model choice do not wait; ``preload=None``
    leaves that to the caller (``launch`` starts it once the page is served); ``threads``:
    torch threads (default ``$UNETVIZ_TORCH_THREADS`` or 1, see
    ``ModelRegistry.apply_thread_policy``); a session's results are freed after
    ``session_ttl_s`` idle seconds, on disconnect, or when more than ``max_sessions`` are live
    (least recently used first); beyond ``max_session_bytes`` held together, the least
    recently used first give up their DAAM per-head sums, then go (``sessions.SessionStore``).
    ``dtype`` / ``device``: how Stable Diffusion models load (the demo takes the device).
    Building imports gradio but not torch."""
    from .ui import build_blocks

    registry = ModelRegistry(
        roots=model_roots, demo_folder=demo_folder, threads=threads, dtype=dtype, device=device
    )
    sessions = SessionStore(session_ttl_s, max_sessions, max_session_bytes)
    sessions.start_sweeper()
    blocks = build_blocks(registry, sessions=sessions)
    if preload:
        warm_up(blocks)
    elif preload is not None:
        registry.apply_thread_policy()
    return blocks, registry


#: seconds a served app waits for its first page before it warms up anyway
WARM_UP_WAIT_S = 10.0


def warm_up(blocks: Any, after: Any = None, wait_s: float = WARM_UP_WAIT_S) -> Any:
    """In a background thread: import torch, apply the thread policy, load the demo pipeline,
    then draw the preset models' block diagrams into the handlers' cache (a model choice
    then costs one round trip). With ``after`` (a ``threading.Event``), first wait until it
    is set or ``wait_s`` pass: ``launch`` waits for the first page's load event, because the
    warm-up's imports hold the GIL in bursts and slowed the ~100 scripts that page fetches
    (bench/app.py, restart -> first diagram drawn, machine under load: median 5.7-5.9 s at
    serve, 4.5 s gated). Returns the thread."""
    import threading

    handlers = blocks.unetviz_handlers

    def work() -> None:
        if after is not None:
            after.wait(wait_s)
        handlers.registry.preload().join()
        handlers.prerender()

    t = threading.Thread(target=work, name="unetviz-warm-up", daemon=True)
    t.start()
    return t


def launch_kwargs() -> dict[str, Any]:
    """What gradio 6 takes at ``launch()`` (theme, css) plus the offline-safe settings, the
    limits (upload size, live gradio sessions) and no run history in the browser."""
    import gradio as gr

    from .i18n import i18n
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
        # gradio 6 records every event's inputs and outputs (our SVG panels, tiles, figures)
        # in the browser's localStorage by default: ~1 s of JSON and storage writes per few
        # clicks on this machine, and prompts kept in the browser. Off.
        "run_history": False,
        "max_file_size": f"{MAX_UPLOAD_MB}mb",
        "state_session_capacity": DEFAULT_MAX_SESSIONS,
        "allowed_paths": [],
        "i18n": i18n(),  # English and Simplified Chinese (app/i18n.py)
    }


def serve(blocks: Any, host: str = DEFAULT_HOST, port: int | None = None) -> str:
    """Queue ``blocks`` (one event at a time) and serve it on ``host:port`` (a free port when
    None) without blocking, offline-safe and without gradio's banner (it suggests share
    links); returns the local url. The one way the app, benches, scripts and tests serve it."""
    if port is None:
        import socket

        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
    blocks.queue(default_concurrency_limit=1)
    _, url, _ = blocks.launch(
        server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs()
    )
    return url


def launch(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    model_roots: Iterable[str | os.PathLike] | None = None,
    demo_folder: str | os.PathLike | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    threads: int | None = None,
    session_mb: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> tuple[Any, ModelRegistry, str]:
    """Build and serve the app on ``host:port``; returns (blocks, registry, local url).
    ``session_mb``: MiB all sessions' results may hold (default 2048). LaunchError (before
    anything starts) for options that cannot work."""
    check_launch(host, port, threads, model_roots, demo_folder, session_mb, dtype, device)
    budget = int(session_mb) * 2**20 if session_mb else DEFAULT_MAX_BYTES
    blocks, registry = create_app(
        model_roots=model_roots,
        demo_folder=demo_folder,
        threads=threads,
        preload=None,
        max_session_bytes=budget,
        dtype=dtype,
        device=device,
    )
    url = serve(blocks, host, port)  # gradio's banner silenced; ours says where the page is
    # torch, the demo model, the preset diagrams: once the first page is drawn
    warm_up(blocks, after=blocks.unetviz_handlers.page_seen)
    if not quiet:
        print(f"[unetviz] the app is ready: {url}  (Ctrl+C stops it)", flush=True)
    if not prevent_thread_lock:
        blocks.block_thread()
    return blocks, registry, url
