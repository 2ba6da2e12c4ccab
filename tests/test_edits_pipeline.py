"""Edits through the pipelines, the CLI and sweeps: the demo model (few steps) and a tiny
random Stable Diffusion pipeline saved with diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import unetviz
from unetviz import edits
from unetviz.edits import EditError

STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield unetviz.load_pipeline("demo")
    torch.set_num_threads(before)


def _pixels(run) -> np.ndarray:
    return np.asarray(run.image, np.int16)


def test_pipeline_edits_are_recorded_and_scale_one_changes_nothing(pipe, tmp_path):
    base = pipe("a red circle", seed=1, steps=STEPS)
    same = pipe(
        "a red circle",
        seed=1,
        steps=STEPS,
        edits=[edits.Reweight("red", 1.0), edits.AblateSkip(3, mode=1.0)],
    )
    assert torch.equal(same.latents, base.latents)
    assert "edits" not in base.trace.meta
    assert [e["edit"] for e in same.trace.meta["edits"]] == ["Reweight", "AblateSkip"]
    assert same.trace.meta["edits"][0]["tokens"] == [same.words.index("red")]
    same.trace.save(tmp_path / "run.trace")
    loaded = unetviz.Trace.load(tmp_path / "run.trace")
    assert loaded.meta["edits"] == same.trace.meta["edits"]


def test_compare_gives_base_edited_and_per_pixel_diff(pipe):
    cmp = pipe.compare("a red circle", edits=[edits.Reweight("red", 0.0)], seed=1, steps=STEPS)
    assert cmp.diff.shape == (pipe.size, pipe.size) or cmp.diff.shape == cmp.base.image.size[::-1]
    expected = np.abs(_pixels(cmp.base) - _pixels(cmp.edited)).mean(-1) / 255
    assert np.allclose(cmp.diff, expected, atol=1e-6)
    assert cmp.score > 0 and cmp.edits[0]["token"] == "red"
    assert "edits" in cmp.edited.trace.meta and "edits" not in cmp.base.trace.meta


def test_bad_word_fails_before_the_model_runs(pipe):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(EditError, match="its words are: a, red, circle"):
            pipe("a red circle", steps=STEPS, edits=[edits.Reweight("dog", 0.0)])
        with pytest.raises(EditError, match="has no module"):
            pipe.compare("a red circle", edits=[edits.Patch("mid", "a blue circle")])
    finally:
        handle.remove()
    assert not calls


def test_patch_and_replace_run_their_source_prompt(pipe):
    own = pipe("a red circle", seed=2, steps=STEPS)
    patched = pipe(
        "a red circle", seed=2, steps=STEPS, edits=[edits.Patch("mid_block", "a red circle")]
    )
    assert torch.equal(patched.latents, own.latents)  # its own activations: no change
    swapped = pipe(
        "a red circle", seed=2, steps=STEPS, edits=[edits.Replace("a blue circle", 1.0, 1.0)]
    )
    assert swapped.trace.meta["edits"][0]["self_layers"]
    assert np.abs(_pixels(swapped) - _pixels(own)).max() > 0
    with pytest.raises(EditError, match="same token length"):
        pipe("a red circle", steps=STEPS, edits=[edits.Replace("a red circle and a blue square")])


def test_sweep_fills_the_diagram_and_is_saved_with_the_trace(pipe, tmp_path):
    from unetviz.render.edits import sweep_diagram
    from unetviz.training.edit_scores import scorer_for

    mm = edits.ModelMap(pipe.unet)
    targets = ("mid_block", mm.blocks[-1])
    result = edits.sweep(pipe, "a red circle", targets=targets, steps=STEPS, score=scorer_for(pipe))
    assert [r["target"] for r in result.rows] == list(targets)
    assert all(r["change"] > 0 and "colour_ok" in r for r in result.rows)
    from unetviz.training.edit_scores import unscorable

    assert unscorable(["a", "red", "circle"]) == {"position_ok", "size_ok"}
    assert unscorable(["red", "circle", "left", "big"]) == set()
    # no column the model's vocabulary cannot ask for (the shipped demo has no position words)
    assert all(k not in r for k in unscorable(pipe.tokenizer.words) for r in result.rows)
    source = sweep_diagram(result).source
    assert "mean abs pixel change" in source and "temb ratio" not in source
    result.base.trace.save(tmp_path / "s.trace")
    saved = unetviz.Trace.load(tmp_path / "s.trace").meta["sweep"]
    assert saved["rows"] == json.loads(json.dumps(result.rows))
    last = mm.skips[-1].index
    skips = edits.sweep(pipe, "a red circle", over="skips", targets=(0, last), steps=2)
    assert [r["target"] for r in skips.rows] == ["skip 0", f"skip {last}"]
    assert "\u0394" in sweep_diagram(skips).source


def test_cli_edit_writes_the_folder_and_user_errors_are_one_line(tmp_path, capsys):
    from unetviz.cli import main

    out = tmp_path / "out"
    args = ["--reweight", "red=0", "--ablate-skip", "3", "--steps", "2", "-o", str(out)]
    with pytest.raises(SystemExit) as ok:
        main(["edit", "a red circle", *args])
    assert ok.value.code == 0
    names = {"base.png", "edited.png", "diff.png", "strip.png", "base.trace", "edited.trace"}
    assert names | {"summary.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert [e["edit"] for e in summary["edits"]] == ["Reweight", "AblateSkip"]
    assert {"colour_ok", "shape_ok", "colour"} <= set(summary["base_scores"])
    with pytest.raises(SystemExit) as exc:
        main(["edit", "a red circle", "--ablate-skip", "77", "-o", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no skip 77" in err[-1]
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_sd_pipeline_edits_and_compare():
    from tests.sd_tiny import tiny_sd_dir
    from unetviz.pipelines.sd import load_sd_pipeline

    sd = load_sd_pipeline(tiny_sd_dir("sd1"))
    kwargs = dict(seed=0, steps=2, height=64, width=64)
    base = sd("a red cat", **kwargs)
    same = sd("a red cat", edits=[edits.Reweight("cat", 1.0)], **kwargs)
    assert torch.equal(same.latents, base.latents)
    cmp = sd.compare("a red cat", edits=[edits.Reweight("cat", 0.0, layers="up")], **kwargs)
    assert cmp.edits[0]["tokens"] == [base.words.index("cat")]
    assert (cmp.edited.latents - base.latents).abs().max().item() > 0
    with pytest.raises(EditError, match="its words are: a, red, cat"):
        sd("a red cat", edits=[edits.Reweight("dog", 0.0)], **kwargs)
    patched = sd("a red cat", edits=[edits.Patch("mid_block", "a red cat")], **kwargs)
    assert torch.equal(patched.latents, base.latents)
    swapped = sd("a red cat", edits=[edits.Replace("a blue cat", 1.0, 1.0)], **kwargs)
    assert swapped.trace.meta["edits"][0]["self_layers"]
    assert (swapped.latents - base.latents).abs().max().item() > 0


@pytest.mark.slow
def test_experiments_tab_builds_and_its_events_run():
    import gradio as gr

    from unetviz.app.experiments import build_experiments, edited, swept
    from unetviz.app.registry import ModelRegistry
    from unetviz.app.ui import TabContext

    registry = ModelRegistry()
    ctx = TabContext(None, registry)
    with gr.Blocks(analytics_enabled=False):
        build_experiments(ctx)
    call = ("demo", "a red circle", 0, 2, 4.0)
    strip, heat, table, note = edited(
        registry, *call, "red", 0.0, "up", ["3: x"], [], "mean", "none", 1
    )
    assert strip.size[1] >= 24 and heat.size == (392, 192)
    assert table["data"][0][0].startswith("pixels: mean |edited − base|")
    assert "2 edit(s)" in note
    html, rows, note = swept(registry, *call, "skips", "ablate", "", "zero", 0.0)
    n_skips = len(edits.ModelMap(registry.pipeline("demo").unet).skips)
    assert "<svg" in html and len(rows["data"]) == n_skips and "edited runs" in note
    strip, heat, table, note = edited(registry, *call, "dog", 0, "all", [], [], "zero", "none", 1)
    assert strip is None and "its words are: a, red, circle" in note  # shown, app stays up
