"""capture(features=...): per-block PCA pictures, norm maps and RMS, saved and loaded, bounded,
and meaningful on the demo model (the last up block's first component finds the objects)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from unetviz import UNet2DConditionModel, UNetConfig, capture
from unetviz.capture import Trace, TraceError
from unetviz.capture.features import SKETCH, bytes_per_step, features_level

SMALL = dict(
    sample_size=8,
    block_out_channels=[32, 64],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=16,
    attention_head_dim=2,
)


def _unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(UNetConfig.from_dict(SMALL)).eval()


def _run(unet, steps=3, **options):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 8, 8)
    ctx = torch.randn(2, 5, 16)
    outs = []
    with torch.no_grad(), capture(unet, **options) as trace:
        for t in range(steps):
            outs.append(unet(x, torch.tensor(900.0 - 300 * t), ctx))
    return trace, outs


def test_blocks_and_layers_levels_and_outputs_unchanged():
    unet = _unet()
    plain, outs_plain = _run(unet)
    blocks, outs = _run(unet, features=True)
    layers, _ = _run(unet, features="layers")
    for a, b in zip(outs_plain, outs, strict=True):
        assert torch.equal(a, b)  # recording never changes what flows
    assert plain.features == {}
    assert blocks.meta["features"] == "blocks" and layers.meta["features"] == "layers"
    names = list(blocks.features)
    assert {"conv_in", "down_blocks.0", "mid_block", "up_blocks.1", "conv_out"} <= set(names)
    assert not any(".resnets." in n for n in names)
    assert "down_blocks.0.resnets.0" in layers.features
    assert "up_blocks.1.attentions.0" in layers.features
    rec = blocks.features["down_blocks.0"]
    assert rec.channels == 32 and rec.res == (4, 4) and rec.steps == [0, 1, 2]
    assert [tuple(p.shape) for p in rec.pca] == [(3, 4, 4)] * 3
    assert rec.pca[0].dtype == torch.float16 and rec.norm[0].shape == (4, 4)
    assert all(math.isfinite(v) and v > 0 for v in rec.rms)
    assert rec.rgb(1).dtype == torch.uint8 and rec.rgb(1).shape == (4, 4, 3)
    assert 0 < sum(rec.explained) <= 1 + 1e-6


def test_values_match_a_direct_computation():
    """RMS and norm are those of the conditional half's first image; the components are the
    PCA of the last step's output (C <= SKETCH here: exact), up to sign."""
    unet = _unet()
    seen = []
    handle = unet.up_blocks[1].register_forward_hook(lambda m, a, o: seen.append(o[1].clone()))
    trace, _ = _run(unet, features=True)
    handle.remove()
    rec = trace.features["up_blocks.1"]
    assert rec.channels <= SKETCH * 4
    for i, x in enumerate(seen):
        assert rec.rms[i] == pytest.approx(float(x.pow(2).mean().sqrt()), rel=1e-5)
        norm = x.norm(dim=0) / math.sqrt(x.shape[0])
        torch.testing.assert_close(rec.norm[i].float(), norm, rtol=2e-3, atol=2e-3)
    last = seen[-1].flatten(1).double()
    centred = last - last.mean(1, keepdim=True)
    _, vecs = torch.linalg.eigh(centred @ centred.T)
    pc1 = (vecs[:, -1] @ centred).reshape(rec.res)
    ours = rec.pca[-1][0].double()
    cos = float((pc1 * ours).sum() / (pc1.norm() * ours.norm()))
    if rec.channels <= SKETCH:
        assert abs(cos) > 0.999
    else:  # 32 channels, 16 directions sketched at the first step: close, not exact
        assert abs(cos) > 0.5


def test_saved_and_loaded_and_hostile_bundles_refused(tmp_path):
    trace, _ = _run(_unet(), features="layers")
    path = trace.save(tmp_path / "t.zip")
    back = Trace.load(path)
    assert list(back.features) == list(trace.features)
    a, b = trace.features["mid_block"], back.features["mid_block"]
    assert b.steps == a.steps and b.rms == a.rms and b.res == a.res
    assert all(torch.equal(x, y) for x, y in zip(a.pca, b.pca, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a.norm, b.norm, strict=True))
    assert back.nbytes() == trace.nbytes()
    state, tensors = trace.to_state()
    bad = dict(state, features={"mid_block": dict(state["features"]["mid_block"], res=[9, 9])})
    with pytest.raises(TraceError, match="features/mid_block/pca"):
        Trace.from_state(bad, tensors)
    bad = dict(state, features={"x": dict(state["features"]["mid_block"], level="evil")})
    with pytest.raises(TraceError, match="level"):
        Trace.from_state(bad, tensors)
    older = {k: v for k, v in state.items() if k != "features"}
    assert Trace.from_state(older, tensors).features == {}


def test_option_checked():
    assert features_level(True) == "blocks" and features_level(False) is None
    with pytest.raises(TraceError, match="features='modules'"):
        capture(_unet(), features="modules")


def test_memory_per_step_is_independent_of_channels():
    """Two UNets alike but for width keep the same feature bytes per step."""
    narrow = _run(_unet(), features=True)[0]
    torch.manual_seed(0)
    wide_cfg = dict(SMALL, block_out_channels=[64, 128], norm_num_groups=16)
    wide = UNet2DConditionModel(UNetConfig.from_dict(wide_cfg)).eval()
    wide_trace = _run(wide, features=True)[0]
    assert _feature_bytes(narrow) == _feature_bytes(wide_trace) > 0
    # SD 1.5 at 512 px, blocks detail: the 4-D block outputs of its structure trace
    from unetviz.structure import structure_trace

    sd = structure_trace("sd15", 512, 512, detail="blocks")
    shapes = [b.outputs["sample"] for b in sd.blocks if len(b.outputs.get("sample", [])) == 4]
    assert bytes_per_step(shapes) == 218_624  # 213.5 KiB, as docs/trace.md says


def _feature_bytes(trace: Trace) -> int:
    return sum(f.nbytes() for f in trace.features.values())


def _otsu(v: torch.Tensor) -> float:
    """The threshold between two classes of ``v`` with the largest between-class variance."""
    v = v.flatten()
    best, best_t = -1.0, 0.0
    for t in torch.quantile(v, torch.linspace(0.05, 0.95, 91)):
        a = v <= t
        score = float(a.float().mean() * (~a).float().mean() * (v[a].mean() - v[~a].mean()) ** 2)
        if score > best:
            best, best_t = score, float(t)
    return best_t


def objects_of(pc1: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The pixels a first-component map sets apart from the background, at image ``size``.

    - Smoothing: the last up block's output feeds ``conv_out``, which predicts the noise left
      in the latent: at the last step its map carries pixel-scale noise over the layout. The
      question is whether the component separates *objects*, so each value is averaged with
      its 8 neighbours (3 x 3 at the map's resolution) before the cut.
    - Threshold: Otsu's, on the map upsampled (bilinear) to the image.
    - Polarity: a component's sign is arbitrary; the side most of the image border falls on
      is the background (the scenes' objects lie inside the frame), the other the objects.
    """
    smooth = F.avg_pool2d(pc1[None, None], 3, stride=1, padding=1, count_include_pad=False)
    up = F.interpolate(smooth, size=size, mode="bilinear")[0, 0]
    above = up > _otsu(up)
    border = torch.cat([above[0], above[-1], above[:, 0], above[:, -1]])
    return ~above if border.float().mean() > 0.5 else above


def test_objects_of_a_map_takes_the_background_from_the_border():
    pc1 = torch.zeros(12, 12)
    pc1[3:7, 4:9] = -2.0  # the object on the low side of the component: polarity from the border
    pc1 += 0.05 * torch.randn(12, 12, generator=torch.Generator().manual_seed(0))
    found = objects_of(pc1, (48, 48))
    truth = torch.zeros(48, 48, dtype=torch.bool)
    truth[12:28, 16:36] = True
    inter, union = (found & truth).sum(), (found | truth).sum()
    assert float(inter / union) > 0.7


@pytest.mark.slow
def test_first_component_of_the_last_up_block_finds_the_objects():
    """At the last step, the first component of up_blocks[-1]'s output, cut into objects and
    background (:func:`objects_of`), overlaps the generated objects' masks (the training
    evaluator's) with mean IoU >= 0.6 over a fixed set of one- and two-object prompts (the
    first 8 evaluation scenes of each kind, seeds 0..7: none chosen or left out)."""
    from unetviz.pipelines.demo import DemoPipeline
    from unetviz.training.data import eval_scenes
    from unetviz.training.evaluate import generated_masks, iou

    pipe = DemoPipeline()
    last_up = f"up_blocks.{len(pipe.unet.up_blocks) - 1}"
    scores = []
    for n_objects in (1, 2):
        for i, scene in enumerate(eval_scenes(8, pipe.size, n_objects, words=pipe.tokenizer.words)):
            run = pipe(scene.caption, seed=i, steps=25, features=True)
            image = np.asarray(run.image, np.float32) / 255
            objects = np.any(generated_masks(scene, image), 0)
            pc1 = run.trace.features[last_up].pca[-1][0].float()
            scores.append(iou(objects_of(pc1, image.shape[:2]).numpy(), objects))
    assert np.mean(scores) >= 0.6, [round(s, 3) for s in scores]
    print(f"feature PCA vs masks: mean IoU {np.mean(scores):.3f}, min {np.min(scores):.3f}")


def _main(args: list[str]) -> int:
    from unetviz import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    return exc.value.code or 0


def test_cli_contact_sheet_report_and_bad_input(tmp_path, capsys):
    """``unetviz features`` writes the sheet, the image and a loadable trace; a bad --at is
    one error line, exit 2, nothing written. The report and the notebook show the sheet."""
    from PIL import Image

    out = tmp_path / "sheet"
    assert _main(["features", "a red circle", "-o", str(out), "--steps", "3"]) == 0
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 3 * 96 and sheet.height > 8 * 96
    trace = Trace.load(out / "run.trace")
    assert trace.features["up_blocks.2"].steps == [0, 1, 2]
    capsys.readouterr()
    assert _main(["features", "a red circle", "-o", str(tmp_path / "x"), "--at", "30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --at '30': step 30 is outside 0..24"]
    assert not (tmp_path / "x").exists()
    html = trace._repr_html_()
    assert "Feature PCA per block" in html and "data:image/png;base64," in html
    report = trace.report(tmp_path / "r.html").read_text()
    assert 'id="features"' in report


def test_sketch_above_64_channels_spans_the_top_directions_and_leaves_rng_alone():
    from unetviz.capture.features import top_directions

    g = torch.Generator().manual_seed(3)
    x = torch.randn(320, 12, generator=g) @ torch.randn(12, 1024, generator=g) * 3
    x = x + torch.randn(320, 1024, generator=g)
    x = x - x.mean(1, keepdim=True)
    state = torch.random.get_rng_state()
    v = top_directions(x, 16)
    assert torch.equal(state, torch.random.get_rng_state())
    exact = torch.linalg.eigh((x @ x.T).double())[1][:, -3:].float()
    assert torch.linalg.svdvals(exact.T @ v).min() > 0.999  # the top 3 lie in the sketch
    assert torch.allclose(v.T @ v, torch.eye(16), atol=1e-4)
