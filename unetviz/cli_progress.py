"""Progress the command lines print on stderr: a bar on a terminal; on a pipe or a log file
(CI, ``nohup``, a notebook's ``!unetviz``), where a bar prints only its label, one line every
:data:`LINE_EVERY_S` seconds with the seconds per step and the time left — a full-size model
on a CPU takes minutes a step, and a silent command reads as a hung one."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import typer

#: seconds between two progress lines when stderr is not a terminal
LINE_EVERY_S = 10.0


class StepProgress:
    """``progress(step, total)`` for the pipelines and sweeps (1-based steps): a bar or lines.
    Use as a context manager; :meth:`summary` says how long the steps took."""

    def __init__(self, label: str, stream: TextIO | None = None, runs: int = 1) -> None:
        #: ``runs``: sampling loops reported as one (an edit's base and edited runs): a step
        #: count that starts again continues the same bar
        self.runs = runs
        self.offset = self.last_raw = self.raw_total = 0
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.bar: Any = None
        self.done = 0
        self.total = 0
        self.start = time.perf_counter()
        self.last_line = self.start

    def __call__(self, step: int, total: int) -> None:
        now = time.perf_counter()
        if step < self.last_raw:  # the next sampling loop of this command
            self.offset += self.raw_total
        self.last_raw, self.raw_total = step, int(total or self.raw_total)
        step, self.total = self.offset + step, self.raw_total * self.runs
        if self.tty:
            if self.bar is None:
                self.bar = typer.progressbar(
                    length=max(self.total, 1), label=self.label, file=self.stream
                ).__enter__()
            if self.bar.length != self.total:
                self.bar.length = self.total
            self.bar.update(step - self.done)
        elif now - self.last_line >= LINE_EVERY_S and step < self.total:
            per = (now - self.start) / max(step, 1)
            print(
                f"{self.label}: {step}/{self.total}, {per:.1f} s each, "
                f"about {per * (self.total - step):.0f} s left",
                file=self.stream,
                flush=True,
            )
            self.last_line = now
        self.done = step

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None

    def summary(self, unit: str = "steps") -> str:
        """``25 steps in 12.3 s, 0.49 s each`` (empty before the first step)."""
        if not self.done:
            return ""
        took = time.perf_counter() - self.start
        return f"{self.done} {unit} in {took:.1f} s, {took / self.done:.2f} s each"


def loading(model: Any) -> tuple[float, str]:
    """Before a model loads: its start time, and on a terminal a line saying what loads (a
    full-size checkpoint takes minutes on a CPU)."""
    if sys.stderr.isatty():
        print(f"loading {model} ...", file=sys.stderr, flush=True)
    return time.perf_counter(), str(model)


def loaded(started: tuple[float, str]) -> None:
    """After a model loaded: one line with the time it took, when it took more than a second
    (the demo's sub-second load stays quiet)."""
    took = time.perf_counter() - started[0]
    if took >= 1.0:
        print(f"loaded {started[1]} in {took:.1f} s", file=sys.stderr, flush=True)
