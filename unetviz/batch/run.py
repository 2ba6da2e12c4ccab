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

from unetviz.callargs import MAX_GUIDANCE, as_float, as_int, check_guidance, check_steps

from .rows import BatchError, PromptRow, load_masks, read_prompts
from .store import SUMMARY, Store
from .worker import MASK_SOURCES, JobSpec

PART_SIZE = 16
PART_SECONDS = 30.0
#: the longest per-prompt timeout a job may set (a day)
MAX_TIMEOUT_S = 86_400.0


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
    """A progress line on stderr: prompts done, prompts/s, ETA (rewritten in place on a TTY)."""
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
            f"({p.failed} failed, {p.skipped} already done)  {p.rate:.2f} prompts/s  ETA {eta}"
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


def check_spec(spec: JobSpec, part_size: int = PART_SIZE) -> None:
    """Every option of a job, checked before anything is read or created (the defaults a row
    falls back on included: a NaN guidance or 10**8 steps is refused here, not per row)."""
    if spec.mask_source not in MASK_SOURCES:
        raise BatchError(f"mask source {spec.mask_source!r}: expected one of {MASK_SOURCES}")
    as_int(spec.buckets, "--buckets", 1, 100, error=BatchError)
    tau = as_float(spec.tau, "--tau", 0.0, 1.0, error=BatchError)
    if tau in (0.0, 1.0):
        raise BatchError(f"--tau={tau:g}: expected a number strictly between 0 and 1")
    if spec.steps is not None:
        check_steps(spec.steps, name="--steps", error=BatchError)
    if spec.guidance is not None:
        check_guidance(spec.guidance, 0.0, MAX_GUIDANCE, name="--guidance", error=BatchError)
    as_int(part_size, "part size", 1, 1_000_000, error=BatchError)
    if spec.timeout is not None:
        as_float(spec.timeout, "--timeout", 1.0, MAX_TIMEOUT_S, error=BatchError)


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
    check_spec(spec, part_size)
    engine = engine or InProcessEngine()
    prompts = Path(prompts)
    rows = read_prompts(prompts)
    engine.connect(spec)  # too many workers, an unreachable cluster: refused before out/ exists
    store = Store.open(output, _job(spec, prompts.resolve()), force=force)
    with store.locked():
        return _run(engine, spec, store, rows, prompts, output, retry_failed, part_size, progress)


def _run(
    engine: Any,
    spec: JobSpec,
    store: Store,
    rows: list[PromptRow],
    prompts: Path,
    output: str | os.PathLike,
    retry_failed: bool,
    part_size: int,
    progress: Callable[[Progress], None] | None,
) -> BatchResult:
    """run_batch once the folder is open and locked."""
    done = store.done()
    todo = [r for r in rows if r.key not in done or (retry_failed and done[r.key] == "error")]
    result = BatchResult(Path(output), len(rows), 0, len(rows) - len(todo), 0, 0, 0.0)
    buffer: list[dict[str, Any]] = []
    try:
        _consume(engine, spec, store, todo, prompts, result, buffer, part_size, progress)
    except BaseException as exc:
        if store.created and result.ran == 0:  # e.g. the model does not load: leave nothing
            shutil.rmtree(store.out, ignore_errors=True)
            raise
        if not isinstance(exc, KeyboardInterrupt):
            _finish(store, buffer, rows, result, engine)
            raise
        result.interrupted = True
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
    tasks = _tasks(todo, prompts.resolve().parent, spec)
    for res in engine.run(spec, tasks, total=len(todo)):
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
    from .demo_set import check_count, demo_vocabulary, known_classes, make_demo_set

    spec = spec or JobSpec(mask_source="generated")
    check_count(n)  # everything is checked before the folder is made
    check_spec(spec, kw.get("part_size", PART_SIZE))
    demo_vocabulary(spec.model)
    if kw.get("engine") is not None:
        kw["engine"].connect(spec)
    if not spec.known_classes:
        spec.known_classes = known_classes()
    prompts = Path(output) / "prompts.jsonl"
    store = Store.open(output, _job(spec, prompts.resolve()), force=force, extra=("masks",))
    with store.locked():
        make_demo_set(n, Path(output), spec.model, claim=store.claim)
    return run_batch(prompts, output, spec, force=force, **kw)
