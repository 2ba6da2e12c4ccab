"""``unetviz batch prompts.jsonl --model M -o out/``: attention statistics over a prompt set.

    unetviz batch prompts.jsonl -o out/                   # in-process, demo model
    unetviz batch prompts.jsonl -o out/ --workers 2       # two worker processes here
    unetviz batch prompts.jsonl -o out/ --ray auto        # actors on a running Ray cluster
    unetviz batch --demo-set 500 -o out/                  # demo captions + exact masks

A rerun of the same command skips every prompt already in ``out/``; Ctrl-C keeps what finished.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import typer

from ..detect import detect_model
from ..outputs import sigterm_raises


def _engine(workers: int | None, ray: str | None, gpus: float) -> Any:
    from unetviz.callargs import as_float

    from .engines import InProcessEngine, LocalEngine, RayEngine
    from .rows import BatchError

    gpus = as_float(gpus, "--gpus-per-worker", 0.0, 1024.0, error=BatchError)
    if ray is not None:
        return RayEngine(ray, workers, gpus)
    if gpus:
        raise BatchError("--gpus-per-worker is for --ray (local workers share --device)")
    if workers is None or workers == 1:
        return InProcessEngine()
    return LocalEngine(workers)


def _term_as_interrupt() -> contextlib.AbstractContextManager[None]:
    """SIGTERM (a scheduler stopping the job) ends the run like Ctrl-C: finished prompts are
    written and the tables rebuilt before exiting."""
    return sigterm_raises(lambda signum: KeyboardInterrupt())


def register(app: typer.Typer) -> None:
    """Add ``batch`` to the ``unetviz`` command (called by unetviz.cli)."""
    from unetviz.cli import CliError

    @app.command()
    def batch(
        prompts: Path = typer.Argument(None, help="A .jsonl file: one JSON object per line."),
        model: str = typer.Option("demo", "--model", "-m", help="demo, an SD folder or file."),
        output: Path = typer.Option(..., "--output", "-o", help="Output folder (resumable)."),
        demo_set: int = typer.Option(
            None, "--demo-set", help="Generate N demo captions with exact masks and run them."
        ),
        steps: int = typer.Option(None, "--steps", help="Default steps for rows without one."),
        guidance: float = typer.Option(None, "--guidance", "-g", help="Default CFG scale."),
        buckets: int = typer.Option(4, "--buckets", help="Step buckets along the schedule."),
        tau: float = typer.Option(0.4, "--tau", help="Threshold for area and IoU (DAAM: 0.4)."),
        mask_source: str = typer.Option(
            None,
            "--mask-source",
            help="file (the row's masks) or generated (demo: objects found in the generated "
            "image; the --demo-set default).",
        ),
        keep_traces: bool = typer.Option(False, "--keep-traces", help="Save trace bundles."),
        workers: int = typer.Option(None, "--workers", "-w", help="Worker processes / actors."),
        ray: str = typer.Option(
            None, "--ray", help="Run on Ray: a cluster address, 'auto' or 'local'."
        ),
        gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="Ray GPUs/actor."),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="Rerun failed rows."),
        timeout: float = typer.Option(
            None,
            "--timeout",
            help="Seconds one prompt may take before its worker is replaced and the prompt "
            "retried (default: 120 + steps x max(1, 20 per GB of weights)).",
        ),
        dtype: str = typer.Option(None, "--dtype", help="SD only: float32/float16/bfloat16."),
        device: str = typer.Option(None, "--device", help="SD only: cpu, cuda, cuda:1."),
        scheduler: str = typer.Option(None, "--scheduler", help="SD only: ddim, euler, ..."),
        force: bool = typer.Option(
            False, "--force", help="Write into a non-empty folder unetviz did not create."
        ),
    ) -> None:
        """Attention statistics over a prompt set (in-process, local workers or Ray)."""
        from .worker import JobSpec

        if (prompts is None) == (demo_set is None):
            raise CliError("give a prompts .jsonl file or --demo-set N (one of them)")
        options = {"dtype": dtype, "device": device, "scheduler": scheduler}
        spec = JobSpec(
            model=model,
            pipeline_options={k: v for k, v in options.items() if v is not None},
            steps=steps,
            guidance=guidance,
            buckets=buckets,
            tau=tau,
            keep_traces=keep_traces,
            mask_source=mask_source or ("generated" if demo_set is not None else "file"),
            timeout=timeout,
        )
        _execute(
            spec, prompts, output, demo_set, (workers, ray, gpus_per_worker),
            retry_failed, force, CliError,
        )  # fmt: skip


def _execute(
    spec: Any,
    prompts: Path | None,
    output: Path,
    demo_set: int | None,
    engine_args: tuple,
    retry_failed: bool,
    force: bool,
    cli_error: type[Exception],
) -> None:
    """Run the job, print its outcome; user errors -> ``cli_error``, Ctrl-C -> exit 130."""
    from unetviz.errors import UnetvizError

    from .run import run_batch, run_demo_set, text_progress

    try:
        if detect_model(spec.model).is_demo:
            from .demo_set import known_classes

            spec.known_classes = known_classes()
        engine = _engine(*engine_args)
        kw = {"engine": engine, "retry_failed": retry_failed, "progress": text_progress()}
        with warnings.catch_warnings(), _term_as_interrupt():
            warnings.simplefilter("ignore", UserWarning)
            if demo_set is not None:
                res = run_demo_set(demo_set, output, spec, force=force, **kw)
            else:
                res = run_batch(prompts, output, spec, force=force, **kw)
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted: finished prompts are in {output}/ (tables rebuilt); run the same "
            "command again to resume"
            if output.exists()
            else "interrupted before any prompt finished: nothing was written",
            err=True,
        )
        raise SystemExit(130) from None
    except (UnetvizError, OSError) as exc:
        raise cli_error(str(exc)) from None
    typer.echo(
        f"{res.ran} prompts run, {res.skipped} already done, {res.failed} failed, "
        f"{res.worker_deaths} worker restarts, {res.seconds:.1f} s -> {output}/table.parquet, "
        f"{output}/summary.html",
        err=True,
    )
    for line, error in res.errors[:5]:
        typer.echo(f"failed: line {line}: {error}", err=True)
