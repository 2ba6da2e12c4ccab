"""The command lines' progress: lines with seconds per step and time left when stderr is a
pipe (a bar prints only its label there), a bar on a terminal, and two sampling loops (an
edit's runs) reported as one."""

from __future__ import annotations

import io

from unetviz import cli_progress
from unetviz.cli_progress import StepProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_lines_with_the_time_left_and_no_bar(monkeypatch):
    monkeypatch.setattr(cli_progress, "LINE_EVERY_S", 0.0)
    out = io.StringIO()
    with StepProgress("sampling", stream=out) as tick:
        for i in range(1, 5):
            tick(i, 4)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "sampling: 1/4",
        "sampling: 2/4",
        "sampling: 3/4",
    ]
    assert all("s each" in line and "s left" in line for line in lines)
    assert tick.summary().startswith("4 steps in ")


def test_two_runs_continue_one_count(monkeypatch):
    monkeypatch.setattr(cli_progress, "LINE_EVERY_S", 0.0)
    out = io.StringIO()
    with StepProgress("edited and base runs", stream=out, runs=2) as tick:
        for _ in range(2):
            for i in range(1, 4):
                tick(i, 3)
    counts = [line.split(":")[1].split(",")[0].strip() for line in out.getvalue().splitlines()]
    assert counts == ["1/6", "2/6", "3/6", "4/6", "5/6"]
    assert tick.summary().startswith("6 steps in ")


def test_a_terminal_gets_a_bar_and_quiet_lines():
    out = Terminal()
    with StepProgress("sampling", stream=out) as tick:
        for i in range(1, 4):
            tick(i, 3)
    text = out.getvalue()
    assert "sampling" in text and "s left" not in text
    assert StepProgress("x", stream=io.StringIO()).summary() == ""  # no step yet
