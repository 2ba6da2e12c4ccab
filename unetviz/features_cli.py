"""``unetviz features PROMPT -o DIR``: what every block of the UNet sees while it denoises.

Generates the prompt with ``capture(features=...)`` and writes into DIR: ``contact_sheet.png``
(rows: the blocks in forward order, columns: the chosen steps; each cell the first three
principal components of the block's output as R, G, B, on one basis per block for the whole
run, so colours compare across a row; captioned with the block, its output shape and RMS),
``image.png``, and the trace bundle ``run.trace`` (``Trace.load`` reads it; its
``trace.features`` hold every step). Bad input prints one ``error:`` line and exits with status
2, leaving no file behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

MAX_COLUMNS = 16


def parse_steps(text: str | None, total: int) -> list[int]:
    """``"0,12,-1"`` -> forward indices in 0..total-1 (negative: from the end); None: five
    steps spread over the run."""
    from unetviz.errors import UnetvizError

    if not text:
        from unetviz.render.features import spread_steps

        return spread_steps(total)
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise UnetvizError(f"--at {text!r}: {part!r} is not a whole number") from None
        if not -total <= value < total:
            raise UnetvizError(f"--at {text!r}: step {value} is outside 0..{total - 1}")
        value %= total
        if value not in out:
            out.append(value)
    if len(out) > MAX_COLUMNS:
        raise UnetvizError(f"--at {text!r}: at most {MAX_COLUMNS} steps")
    return out


def register(app: typer.Typer) -> None:
    """Add the ``features`` command to the ``unetviz`` Typer app."""

    @app.command(name="features")
    def features(
        prompt: str = typer.Argument(..., help="The prompt."),
        output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
        model: str = typer.Option("demo", "--model", "-m", help="'demo' or a model folder."),
        seed: int = typer.Option(0, "--seed", "-s", help="Random seed."),
        steps: int = typer.Option(25, "--steps", help="Sampling steps."),
        guidance: float = typer.Option(None, "--guidance", "-g", help="CFG scale."),
        at: str = typer.Option(
            None, "--at", help="Steps to show, e.g. 0,12,-1 (default: five spread steps)."
        ),
        detail: str = typer.Option("blocks", "--detail", help="blocks or layers."),
        device: str = typer.Option(None, "--device", help="cpu, cuda (default: auto)."),
        force: bool = typer.Option(False, "--force", help="Replace a folder unetviz wrote."),
    ) -> None:
        """A captioned contact sheet of what every block sees (feature PCA, blocks x steps)."""
        from unetviz.callargs import check_seed, check_steps
        from unetviz.cli import CliError
        from unetviz.outputs import check_output_folder, write_folder
        from unetviz.render.features import contact_sheet

        check_seed(seed, "--seed", error=CliError)
        check_steps(steps, name="--steps", error=CliError)
        if detail not in ("blocks", "layers"):
            raise CliError(f"--detail {detail!r}: expected blocks or layers")
        columns = parse_steps(at, steps)
        check_output_folder(output, force)
        from unetviz.pipelines import load_pipeline

        pipe = load_pipeline(model, device=device)
        kwargs: dict[str, Any] = {"seed": seed, "steps": steps, "features": detail}
        if guidance is not None:
            kwargs["guidance"] = guidance
        run = pipe(prompt, **kwargs)
        sheet = contact_sheet(run.trace, columns)

        def fill(tmp: Path) -> None:
            sheet.save(tmp / "contact_sheet.png")
            run.image.save(tmp / "image.png")
            run.trace.save(tmp / "run.trace", image=run.image)

        write_folder(output, fill, force=force)
        typer.echo(f"wrote {output}/contact_sheet.png ({len(columns)} steps)", err=True)
