"""``run_batch``: a prompt set through an engine into an output folder, resumably."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rows import BatchError, PromptRow, load_masks, read_prompts
from .store import SUMMARY, Store
from .worker import MASK_SOURCES, JobSpec

PART_SIZE = 16
PART_SECONDS = 30.0


@dataclass
class Progress:
    """Where a running job stands; given to the ``progress`` callback after every prompt."""

    done: int
    total: int
    failed: int
    skipped: int
    elapsed: float
    engine: Any

    @property
    def rate(self) -> float:
        """Prompts per second in this session."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None before the first prompt)."""
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass
class BatchResult:
    """What a finished (or interrupted) job did."""

    output: Path
    rows: int
    ran: int
    skipped: int
    failed: int
    worker_deaths: int
    seconds: float
    interrupted: bool = False
    errors: list[tuple[int, str]] = field(default_factory=list)


def text_progress(stream: Any = None) -> Callable[[Progress], None]:
    """A progress line on stderr: prompts done, rows/s, ETA (rewritten in place on a TTY)."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = [0.0]

    def show(p: Progress) -> None:
        now = time.monotonic()
        final = p.done == p.total
        if not final and now - last[0] < (0.5 if tty else 10.0):
            return
        last[0] = now
        eta = "?" if p.eta is None else f"{int(p.eta) // 60}m{int(p.eta) % 60:02d}s"
        line = (
            f"[batch {p.engine.name} x{p.engine.workers}] {p.done}/{p.total} prompts "
            f"({p.failed} failed, {p.skipped} already done)  {p.rate:.2f} rows/s  ETA {eta}"
        )
        stream.write(("\r" + line + ("\n" if final else "")) if tty else line + "\n")
        stream.flush()

    return show


def _tasks(rows: list[PromptRow], base: Path, spec: JobSpec) -> Iterator[dict[str, Any]]:
    """One task per row; masks are read here (lazily), a bad mask file fails only its row."""
    for row in rows:
        task: dict[str, Any] = {"row": row.to_dict(), "attempt": 1, "masks": None}
        if row.masks is not None:
            try:
                task["masks"] = load_masks(base, row.masks)
            except BatchError as exc:
                task["error"] = f"BatchError: {exc}"
        yield task


def _job(spec: JobSpec, prompts: Path) -> dict[str, Any]:
    return {"tool": "unetviz batch", "prompts": str(prompts), "identity": spec.identity()}


def run_batch(
    prompts: str | os.PathLike,
    output: str | os.PathLike,
    spec: JobSpec | None = None,
    engine: Any = None,
    force: bool = False,
    retry_failed: bool = False,
    part_size: int = PART_SIZE,
    progress: Callable[[Progress], None] | None = None,
) -> BatchResult:
    """Run every prompt of ``prompts`` (a .jsonl file) not already in ``output`` with
    ``engine`` (default in-process), then write table.parquet, prompts.parquet and
    summary.html. Ctrl-C writes what finished, rebuilds the tables, and re-raises."""
    from .engines import InProcessEngine

    spec = spec or JobSpec()
    if spec.mask_source not in MASK_SOURCES:
        raise BatchError(f"mask source {spec.mask_source!r}: expected one of {MASK_SOURCES}")
    if not 1 <= spec.buckets <= 100 or not 0 < spec.tau < 1:
        raise BatchError(f"buckets {spec.buckets} / tau {spec.tau}: expected 1..100 / (0, 1)")
    if part_size < 1:
        raise BatchError(f"part size {part_size}: expected at least 1")
    engine = engine or InProcessEngine()
    prompts = Path(prompts)
    rows = read_prompts(prompts)
    if hasattr(engine, "connect"):
        engine.connect()  # a cluster that cannot be reached fails before out/ is touched
    store = Store.open(output, _job(spec, prompts.resolve()), force=force)
    done = store.done()
    todo = [r for r in rows if r.key not in done or (retry_failed and done[r.key] == "error")]
    result = BatchResult(Path(output), len(rows), 0, len(rows) - len(todo), 0, 0, 0.0)
    buffer: list[dict[str, Any]] = []
    try:
        _consume(engine, spec, store, todo, prompts, result, buffer, part_size, progress)
    except KeyboardInterrupt:
        result.interrupted = True
    except BaseException:
        if store.created and result.ran == 0:  # e.g. the model does not load: leave nothing
            shutil.rmtree(store.out, ignore_errors=True)
            raise
        _finish(store, buffer, rows, result, engine)
        raise
    _finish(store, buffer, rows, result, engine)
    if result.interrupted:
        raise KeyboardInterrupt
    return result


def _consume(
    engine: Any,
    spec: JobSpec,
    store: Store,
    todo: list[PromptRow],
    prompts: Path,
    result: BatchResult,
    buffer: list[dict[str, Any]],
    part_size: int,
    progress: Callable[[Progress], None] | None,
) -> None:
    """Run ``todo`` through ``engine``, writing a part every ``part_size`` prompts (or
    ``PART_SECONDS``); results not yet in a part stay in ``buffer``."""
    by_key = {r.key: r for r in todo}
    start = time.perf_counter()
    last_flush = time.monotonic()
    for res in engine.run(spec, _tasks(todo, prompts.resolve().parent, spec)):
        row = by_key[res["key"]]
        res["row_info"] = {
            **row.to_dict(),
            "steps": row.steps if row.steps is not None else spec.steps,
            "guidance": row.guidance if row.guidance is not None else spec.guidance,
        }
        buffer.append(res)
        result.ran += 1
        result.seconds = time.perf_counter() - start
        if res["status"] != "ok":
            result.failed += 1
            result.errors.append((row.line, res["error"]))
        if len(buffer) >= part_size or time.monotonic() - last_flush > PART_SECONDS:
            store.write_part(buffer)
            buffer.clear()
            last_flush = time.monotonic()
        if progress is not None:
            progress(
                Progress(
                    result.ran, len(todo), result.failed, result.skipped, result.seconds, engine
                )
            )


def _finish(
    store: Store, buffer: list[dict[str, Any]], rows: list[PromptRow], result: BatchResult, engine
) -> None:
    """Write what finished, then rebuild table.parquet, prompts.parquet and summary.html."""
    from .summary import write_summary

    store.write_part(buffer)
    buffer.clear()
    result.worker_deaths = engine.deaths
    table, ptable = store.consolidate([r.key for r in rows])
    store.claim([SUMMARY])
    write_summary(store.out / SUMMARY, table, ptable)


def run_demo_set(
    n: int, output: str | os.PathLike, spec: JobSpec | None = None, force: bool = False, **kw: Any
) -> BatchResult:
    """``unetviz batch --demo-set N``: write N demo captions with their exact masks into
    ``output`` (prompts.jsonl, masks/), then run them like any prompt set (resumable: the
    same N gives the same set)."""
    from .demo_set import known_classes, make_demo_set

    spec = spec or JobSpec(mask_source="generated")
    if not spec.known_classes:
        spec.known_classes = known_classes()
    prompts = Path(output) / "prompts.jsonl"
    store = Store.open(output, _job(spec, prompts.resolve()), force=force, extra=("masks",))
    make_demo_set(n, Path(output), spec.model, claim=store.claim)
    return run_batch(prompts, output, spec, force=force, **kw)
