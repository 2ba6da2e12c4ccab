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


def test_the_apps_dtype_and_device_reach_the_stable_diffusion_pipeline(tmp_path):
    """``unetviz app --dtype bfloat16``: a Stable Diffusion model chosen in the page loads in
    that dtype (SDXL's weights in half the memory); the demo keeps its float32."""
    import shutil

    import torch

    from tests.sd_tiny import tiny_sd_dir
    from unetviz.app.registry import ModelRegistry

    shutil.copytree(tiny_sd_dir("sd1"), tmp_path / "tiny")
    registry = ModelRegistry(roots=[tmp_path], dtype="bfloat16", device="cpu")
    pipe = registry.pipeline(str(tmp_path / "tiny"))
    assert next(pipe.unet.parameters()).dtype == torch.bfloat16
    assert next(pipe.text_encoders[0].parameters()).dtype == torch.bfloat16
    demo = registry.pipeline("demo")
    assert next(demo.unet.parameters()).dtype == torch.float32
