"""``unetviz report RUN_OR_TRACE -o out.html``: one self-contained HTML report of a saved run.

RUN_OR_TRACE is a trace bundle written by ``Trace.save`` (a zip, or a folder with
``folder=True``; with ``image=`` it keeps the image as ``image.png``), the app's downloaded
bundle, a ``unetviz attention -o`` output folder or its ``run.trace`` (which carries the
image). A trace saved without its image gets a report that says so and how to keep it. Bad
input prints one ``error:`` line and exits with status 2, leaving no file behind.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to the ``unetviz`` Typer app."""

    @app.command(name="report")
    def report(
        source: Path = typer.Argument(
            ...,
            metavar="RUN_OR_TRACE",
            help="A saved trace (.trace zip or folder) or a `unetviz attention` folder.",
        ),
        output: Path = typer.Option(..., "--output", "-o", help="The HTML file to write."),
        title: str = typer.Option(None, "--title", help="Page title (default: the prompt)."),
    ) -> None:
        """One self-contained HTML report (diagram, image, heatmaps, temb plots, options)."""
        from unetviz.cli import CliError
        from unetviz.errors import UnetvizError

        from .html import write_report

        try:
            path = write_report(source, output, title=title)
        except UnetvizError as exc:
            raise CliError(str(exc)) from None
        typer.echo(f"wrote {path} ({path.stat().st_size:,} bytes)", err=True)
