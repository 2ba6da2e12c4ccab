"""The pipeline call shape on the shipped demo model: ``load_pipeline("demo")(prompt, ...)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.demo_support import latent_demo_folder
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
        "a red circle and a blue square",
        seed=3,
        steps=4,
        progress=lambda i, n: steps_seen.append((i, n)),
    )
    assert isinstance(run, Run)
    assert run.image.size == (pipe.size, pipe.size) and run.image.mode == "RGB"
    assert steps_seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert run.tokens[:9] == ["<bos>", "a", "red", "circle", "and", "a", "blue", "square", "<eos>"]
    trace = run.trace
    assert trace.tokens == run.tokens and trace.words[3] == "circle" and trace.words[0] is None
    meta = trace.meta
    assert meta["prompt"] == "a red circle and a blue square" and meta["seed"] == 3
    assert meta["steps"] == 4 and meta["guidance"] == 4.0 and meta["cfg"] is True
    assert meta["height"] == meta["width"] == pipe.size and meta["model"] == "demo"
    assert len(trace.timesteps) == 4
    assert len(trace.attention) == 7  # 2 down + 1 mid + 4 up cross-attention layers
    heat = trace.heatmap("circle", preset="daam-approx", size=pipe.size)
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
    with pytest.raises(PipelineError, match=f"{pipe.size}x{pipe.size} images only"):
        pipe("a red circle", height=512, width=512)
    with pytest.raises(PipelineError, match="steps"):
        pipe("a red circle", steps=0)
    assert issubclass(UnknownWordError, PipelineError) and issubclass(PipelineError, ValueError)


def test_demo_folder_path_loads_as_demo(tmp_path):
    assert isinstance(load_pipeline(DEMO_DIR), DemoPipeline)


def test_daam_preset_needs_and_gets_per_head_sums(pipe, monkeypatch):
    from unetviz.capture import aggregate
    from unetviz.capture.errors import TraceError

    run = pipe("a green square", seed=0, steps=2, daam=True)
    heat = run.trace.heatmap("square", preset="daam", size=pipe.size)
    assert heat.shape == (pipe.size, pipe.size)
    # an app drops a trace's sums to free memory while another request draws it: the draw
    # gets a TraceError naming the layer (the interleaving is forced: the sums go right after
    # the layers were chosen), never an AttributeError
    choose = aggregate._daam_layers

    def chosen_then_dropped(trace):
        recs = choose(trace)
        recs[0].head_sum = None
        return recs

    monkeypatch.setattr(aggregate, "_daam_layers", chosen_then_dropped)
    with pytest.raises(TraceError, match="dropped while drawing"):
        run.trace.heatmap("square", preset="daam")


def test_latent_demo_folder_decodes_with_its_vae(tmp_path):
    vae = latent_demo_folder(tmp_path / "v2")
    pipe = load_pipeline(tmp_path / "v2")
    assert isinstance(pipe, DemoPipeline) and pipe.vae is not None
    assert (pipe.size, pipe.latent_size, pipe.vae_scale_factor) == (32, 8, 4)
    assert pipe.vae.config.scaling_factor == 2.0 and not pipe.schedule.clip_sample
    run = pipe("a big white diamond on the top", seed=0, steps=2)
    assert run.image.size == (32, 32) and run.latents.shape == (1, 4, 8, 8)
    meta = run.trace.meta
    assert meta["latent_shape"] == [4, 8, 8] and meta["vae_scale_factor"] == 4
    assert meta["height"] == meta["width"] == 32 and meta["config"]["in_channels"] == 4
    conv_in = next(b for b in run.trace.blocks if b.name == "conv_in")
    assert [2, 4, 8, 8] in conv_in.inputs.values() or (2, 4, 8, 8) in conv_in.inputs.values(), (
        conv_in.inputs  # the UNet sees latents, as in SD
    )
    with torch.no_grad():  # the image is the VAE's decoding of the final latents
        ref = vae.decode(run.latents / 2.0 + 0.1).clamp(-1, 1)
    ref = ((ref[0] + 1) * 127.5).round().permute(1, 2, 0).byte().numpy()
    assert np.abs(np.asarray(run.image).astype(int) - ref.astype(int)).max() <= 1
    with pytest.raises(PipelineError, match="32x32 images only"):
        pipe("a red circle", height=8, width=8)


def test_incomplete_latent_folder_is_a_clear_error(tmp_path):
    latent_demo_folder(tmp_path / "v2")
    (tmp_path / "v2" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PipelineError, match="vae.*diffusion_pytorch_model.safetensors"):
        DemoPipeline(tmp_path / "v2")


@pytest.mark.parametrize(
    "part, file, key, value",
    [
        ("text_encoder", "config.json", "width", 16_000),
        ("tokenizer", "vocab.json", "max_length", 10**9),
        ("scheduler", "scheduler_config.json", "num_train_timesteps", 10**9),
    ],
)
def test_hostile_demo_part_configs_fail_before_allocating(tmp_path, part, file, key, value):
    """Issue 10 item 5: a demo-format folder's sizes are bounded before anything is built."""
    import json
    import shutil

    from unetviz.config import ConfigError
    from unetviz.detect import DEMO_DIR
    from unetviz.pipelines import load_pipeline

    folder = tmp_path / "demo"
    shutil.copytree(DEMO_DIR, folder)
    path = folder / part / file
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=key):
        load_pipeline(str(folder))


def test_non_finite_guidance_and_output_are_refused_naming_the_step():
    import torch

    from unetviz.pipelines import load_pipeline
    from unetviz.pipelines.base import PipelineError

    pipe = load_pipeline("demo")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(PipelineError, match="guidance"):
            pipe("a red circle", steps=2, guidance=bad)
    weight = pipe.unet.conv_out.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("nan"))
        with pytest.raises(PipelineError, match=r"step 1/2 is not finite"):
            pipe("a red circle", steps=2)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_demo_reads_a1111_emphasis():
    pipe = DemoPipeline(DEMO_DIR)
    plain = pipe("a red circle", seed=0, steps=2)
    run = pipe("a (red:1.5) [circle]", seed=0, steps=2)
    assert run.tokens == plain.tokens and run.trace.words == plain.trace.words
    assert run.trace.meta["emphasis"] == [
        {"word": "red", "weight": 1.5, "tokens": [2]},
        {"word": "circle", "weight": pytest.approx(1 / 1.1), "tokens": [3]},
    ]
    assert run.trace.meta["prompt"] == "a (red:1.5) [circle]"
    assert run.trace.heatmap("red").shape == plain.trace.heatmap("red").shape
    assert not np.array_equal(np.asarray(run.image), np.asarray(plain.image))
    rew = pipe("a (red:1.5) circle", seed=0, steps=2, emphasis="reweight")
    assert [e["edit"] for e in rew.trace.meta["edits"]] == ["Reweight"]
    with pytest.raises(UnknownWordError, match="'\\(red\\)'"):
        pipe("a (red) circle", steps=1, syntax="literal")
