"""Start the unetviz web app: ``python app.py [--host 127.0.0.1] [--port 7860] [--model-root DIR]``.

Binds 127.0.0.1 by default; analytics and telemetry are off; no share links.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="unetviz web app")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("UNETVIZ_PORT", 7860)))
    p.add_argument(
        "--model-root",
        action="append",
        default=None,
        metavar="DIR",
        help="folder under which local models may be opened (repeatable; default: "
        "$UNETVIZ_MODEL_ROOTS or <repo>/assets and ./models)",
    )
    p.add_argument(
        "--demo", default=None, metavar="DIR", help="demo model folder (default: assets/demo)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: $UNETVIZ_TORCH_THREADS or 1; SD pipelines use torch's "
        "default while generating)",
    )
    p.add_argument(
        "--session-mb",
        type=int,
        default=None,
        help="memory budget in MiB for all sessions' traces and images together (default 2048)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        help="Stable Diffusion models: float32 (default), float16, bfloat16",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: auto)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse options and serve until interrupted."""
    args = parse_args(argv)
    from unetviz.app import launch
    from unetviz.errors import UnetvizError

    try:
        launch(
            host=args.host,
            port=args.port,
            model_roots=args.model_root,
            demo_folder=args.demo,
            threads=args.threads,
            session_mb=args.session_mb,
            dtype=args.dtype,
            device=args.device,
        )
    except UnetvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
