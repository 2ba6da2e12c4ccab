"""The pipeline call shape on the shipped demo model: ``load_pipeline("demo")(prompt, ...)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetviz.pipelines import PipelineError, Run, load_pipeline
from unetviz.pipelines.demo import DEMO_DIR, DemoPipeline, UnknownWordError


@pytest.fixture(scope="module")
def pipe() -> DemoPipeline:
    torch.set_num_threads(1)
    return load_pipeline("demo")


def test_assets_layout_and_size():
    files = [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "scheduler/scheduler_config.json",
        "model_card.md",
    ]
    for f in files:
        assert (DEMO_DIR / f).is_file(), f
    total = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert total <= 20 * 2**20


def test_run_has_image_trace_tokens_and_meta(pipe):
    steps_seen = []
    run = pipe(
        "a red circle on the left", seed=3, steps=4, progress=lambda i, n: steps_seen.append((i, n))
    )
    assert isinstance(run, Run)
    assert run.image.size == (pipe.size, pipe.size) and run.image.mode == "RGB"
    assert steps_seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert run.tokens[:8] == ["<bos>", "a", "red", "circle", "on", "the", "left", "<eos>"]
    trace = run.trace
    assert trace.tokens == run.tokens and trace.words[3] == "circle" and trace.words[0] is None
    meta = trace.meta
    assert meta["prompt"] == "a red circle on the left" and meta["seed"] == 3
    assert meta["steps"] == 4 and meta["guidance"] == 4.0 and meta["cfg"] is True
    assert meta["height"] == meta["width"] == pipe.size and meta["model"] == "demo"
    assert len(trace.timesteps) == 4
    assert len(trace.attention) == 7  # 2 down + 1 mid + 4 up cross-attention layers
    heat = trace.heatmap("circle", preset="daam", size=pipe.size)
    assert heat.shape == (pipe.size, pipe.size) and float(heat.max()) == pytest.approx(1.0)
    assert trace.temb  # temb records captured


def test_same_seed_same_image_and_guidance_one_has_no_cfg(pipe):
    a = np.asarray(pipe("a blue square", seed=1, steps=3).image)
    b = np.asarray(pipe("a blue square", seed=1, steps=3).image)
    c = np.asarray(pipe("a blue square", seed=2, steps=3).image)
    assert (a == b).all() and not (a == c).all()
    run = pipe("a blue square", seed=1, steps=3, guidance=1.0)
    assert run.trace.meta["cfg"] is False


def test_clear_errors(pipe):
    with pytest.raises(UnknownWordError, match=r"'dog'.*knows only:.*circle"):
        pipe("a red dog")
    with pytest.raises(PipelineError, match="24x24|generates"):
        pipe("a red circle", height=512, width=512)
    with pytest.raises(PipelineError, match="steps"):
        pipe("a red circle", steps=0)
    assert issubclass(UnknownWordError, PipelineError) and issubclass(PipelineError, ValueError)


def test_demo_folder_path_loads_as_demo(tmp_path):
    assert isinstance(load_pipeline(DEMO_DIR), DemoPipeline)
