"""A user's files are sacred: unetviz writes only what it was asked to, replaces only what it
wrote itself, and never touches ``.``, ``..``, ``/``, ``$HOME`` or an ancestor of the working
directory (issue: ``unetviz attention -o ..`` once emptied the parent folder)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from unetviz.errors import OutputError, UnetvizError
from unetviz.outputs import MARKER, protected_reason, write_file, write_folder


def _snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def _attention(args, cwd, monkeypatch, capsys):
    """The real command, in-process (``main`` as the ``unetviz`` script calls it): returns
    (exit status, stderr)."""
    from unetviz.cli import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        main(["attention", "a red circle", "--steps", "2", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture
def workdir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("precious")
    (tmp_path / "sibling.txt").write_text("sib")
    return work


@pytest.mark.parametrize("target", ["..", ".", "/"])
def test_attention_never_writes_into_cwd_its_ancestors_or_root(
    workdir, target, monkeypatch, capsys
):
    before = _snapshot(workdir.parent)
    code, err = _attention(["-o", target, "--force"], workdir, monkeypatch, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to write outputs into")
    assert _snapshot(workdir.parent) == before


def test_home_and_ancestors_are_protected(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    assert protected_reason(tmp_path / "a") == "it is your home folder"
    assert protected_reason(tmp_path) == "it is an ancestor of the working directory"
    assert protected_reason(deep / ".." / "b") == "it is the working directory"
    assert protected_reason(deep / "out") is None
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert protected_reason(link) is not None  # resolved: a symlink is no way around


def test_foreign_folder_refused_then_merged_with_force(workdir, monkeypatch, capsys):
    out = workdir / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "image.png").write_text("old image of the user's")
    code, err = _attention(["-o", "results"], workdir, monkeypatch, capsys)
    assert code == 2 and "--force" in err
    assert (out / "notes.txt").read_text() == "mine"

    code, err = _attention(["-o", "results", "--force"], workdir, monkeypatch, capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"  # kept
    assert (out / "image.png").read_bytes()[:4] == b"\x89PNG"  # same name: replaced
    assert (out / "run.trace").is_file() and (out / "heatmaps").is_dir()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".")]


def test_own_folder_is_replaced_but_not_if_the_user_added_a_file(workdir, monkeypatch, capsys):
    out = workdir / "out"
    assert _attention(["-o", "out"], workdir, monkeypatch, capsys)[0] == 0
    assert json.loads((out / MARKER).read_text())["tool"] == "unetviz"
    first = (out / "tokens.json").read_text()
    code, err = _attention(["-o", "out", "--seed", "1"], workdir, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((out / "tokens.json").read_text())["seed"] == 1 != json.loads(first)["seed"]
    (out / "analysis.ipynb").write_text("{}")
    code, err = _attention(["-o", "out"], workdir, monkeypatch, capsys)
    assert code == 2 and "not written by unetviz" in err
    assert (out / "analysis.ipynb").read_text() == "{}"


def test_failure_leaves_the_folder_as_it_was_and_no_temporary(tmp_path):
    out = tmp_path / "out"
    write_folder(out, lambda d: (d / "a.txt").write_text("1"))
    before = _snapshot(out)

    def boom(d):
        (d / "a.txt").write_text("2")
        raise RuntimeError("half-way")

    with pytest.raises(RuntimeError):
        write_folder(out, boom)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_folder(tmp_path / "out", lambda d: (d / "x.txt").write_text("x"))
        write_file(tmp_path / "f.svg", b"<svg/>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "out" / "x.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "f.svg").stat().st_mode) == 0o640


def test_write_file_never_replaces_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.svg"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="special file"):
        write_file(fifo, b"<svg/>")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.svg"]


def test_write_file_refuses_a_folder_and_a_missing_parent(tmp_path):
    with pytest.raises(OutputError, match="it is a folder"):
        write_file(tmp_path, b"x")
    with pytest.raises(UnetvizError, match="does not exist"):
        write_file(tmp_path / "nope" / "x.svg", b"x")


def test_trace_save_folder_never_deletes_a_foreign_folder(tmp_path):
    from tests.conftest import tiny_capture

    trace = tiny_capture(timesteps=(900,))
    user = tmp_path / "data"
    user.mkdir()
    (user / "keep.csv").write_text("1,2")
    with pytest.raises(OutputError, match="not written by unetviz"):
        trace.save(user, folder=True)
    assert (user / "keep.csv").read_text() == "1,2"
    trace.save(tmp_path / "t", folder=True)
    trace.save(tmp_path / "t", folder=True)  # its own: replaced
    assert (tmp_path / "t" / "trace.json").is_file()


def test_sigterm_mid_write_leaves_no_partial_folder(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from unetviz.outputs import write_folder
        def fill(d):
            (d / "a").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        write_folder({str(tmp_path / "out")!r}, fill)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
