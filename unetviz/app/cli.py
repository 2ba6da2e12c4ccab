"""``unetviz app``: start the web app (registered lazily by ``unetviz.cli``)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``app`` command to the ``unetviz`` Typer app."""

    @app.command(name="app", help="Start the web app (http://127.0.0.1:7860 by default).")
    def app_command(
        host: str = typer.Option("127.0.0.1", help="Interface to bind."),
        port: int = typer.Option(7860, help="Port to listen on."),
        model_root: list[Path] = typer.Option(  # noqa: B008
            None,
            "--model-root",
            help="Folder under which local models may be opened (repeatable; default: "
            "$UNETVIZ_MODEL_ROOTS or <repo>/assets and ./models).",
        ),
        demo: Path = typer.Option(None, help="Demo model folder (default: assets/demo)."),  # noqa: B008
        threads: int = typer.Option(
            None, help="Torch threads (default: $UNETVIZ_TORCH_THREADS or 1)."
        ),
        session_mb: int = typer.Option(
            None,
            help="MiB all browser sessions' results may hold together (default 2048; the "
            "least recently used give up DAAM's per-head sums first, then go).",
        ),
        dtype: str = typer.Option(
            None, help="Stable Diffusion models: float32 (default), float16 or bfloat16."
        ),
        device: str = typer.Option(None, help="cpu, cuda, cuda:N or mps (default: auto)."),
    ) -> None:
        from unetviz.app import launch

        launch(
            host=host,
            port=port,
            model_roots=model_root or None,
            demo_folder=demo,
            threads=threads,
            session_mb=session_mb,
            dtype=dtype,
            device=device,
        )
