"""The app's download folder may be a caller's own folder (``create_app(workdir=...)``): its
pruning of old download folders must touch only the folders the app made."""

from __future__ import annotations

import os
import time

from unetviz.app.common import OUT_MARKER, HandlerBase


def test_pruning_removes_only_the_apps_own_old_folders(tmp_path):
    mine = tmp_path / "my-results"  # a user's folder, old, in the workdir they gave
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    handlers = HandlerBase(registry=None, workdir=tmp_path)
    made = handlers._outdir()
    assert (made / OUT_MARKER).is_file()
    old = time.time() - 10 * HandlerBase.KEEP_S
    for d in (mine, made):
        os.utime(d, (old, old))
    fresh = handlers._outdir()
    assert not made.exists(), "the app's own old folder is pruned"
    assert (mine / "keep.txt").read_text() == "precious", "a caller's folder is never touched"
    assert fresh.is_dir() and fresh != made
