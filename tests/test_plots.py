"""plotly figures and PNG heatmaps from a real capture of a tiny random-weight UNet."""

from __future__ import annotations

import io
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image
from plotly.colors import get_colorscale

from unetviz import UNet2DConditionModel, UNetConfig, capture, colors
from unetviz.render import plots
from unetviz.render.heatmaps import layer_order

from .conftest import tiny_capture

TOKENS = ["<bos>", "a", "red", "cat</w>", "on", "a", "mat</w>", "<eos>"]
WORDS = [None, "a", "red", "cat", "on", "a", "mat", None]
TIMESTEPS = (900, 500, 100)


@pytest.fixture(scope="module")
def trace():
    tr = tiny_capture(TIMESTEPS)
    tr.tokens, tr.words = list(TOKENS), list(WORDS)
    return tr


def _heatmaps(fig: go.Figure) -> list[go.Heatmap]:
    return [t for t in fig.data if isinstance(t, go.Heatmap)]


def test_token_grid_shows_each_word_token(trace):
    fig = plots.token_grid(trace)
    heat = _heatmaps(fig)
    assert len(heat) == 6  # the six word tokens, no <bos>/<eos>
    raw = [trace.heatmap(i, normalize=None).numpy() for i in (1, 2, 3, 4, 5, 6)]
    assert np.allclose(np.asarray(heat[2].z), raw[2])  # "cat": raw probabilities
    # one shared colour range (and one colour bar), so tokens compare
    lo, hi = min(r.min() for r in raw), max(r.max() for r in raw)
    assert all(h.zmin == pytest.approx(lo) and h.zmax == pytest.approx(hi) for h in heat)
    assert [h.showscale for h in heat] == [True] + [False] * 5
    per = _heatmaps(plots.token_grid(trace, scale="per-token"))
    assert per[2].zmax == pytest.approx(raw[2].max()) and per[2].zmax < hi
    titles = [a.text for a in fig.layout.annotations]
    assert titles[2] == "cat (#3)"
    one = plots.token_grid(trace, tokens="cat", steps=0, size=32, normalize="minmax")
    assert np.asarray(_heatmaps(one)[0].z).shape == (32, 32)
    assert np.allclose(np.asarray(_heatmaps(one)[0].z), trace.heatmap(3, steps=0, size=32).numpy())


def test_token_grid_over_an_image(trace):
    image = (np.random.default_rng(0).random((128, 96, 3)) * 255).astype(np.uint8)
    fig = plots.token_grid(trace, tokens=[2, 3], image=image, opacity=0.4)
    images = [t for t in fig.data if isinstance(t, go.Image)]
    assert len(images) == 2 and images[0].source.startswith("data:image/jpeg;base64,")
    import base64

    sent = Image.open(io.BytesIO(base64.b64decode(images[0].source.split(",", 1)[1])))
    px = np.asarray(sent.convert("RGB"), dtype=int)
    assert np.abs(px - px.mean(-1, keepdims=True)).max() <= 2  # a greyscale copy
    heat = _heatmaps(fig)
    assert heat[0].opacity == 0.4
    # the heatmap spans the image: its cells are image-pixel sized
    h, w = np.asarray(heat[0].z).shape
    assert heat[0].dx * w == pytest.approx(96) and heat[0].dy * h == pytest.approx(128)


def test_layer_token_grid_mosaic(trace):
    fig = plots.layer_token_grid(trace, cell=16, scale="per-cell")
    (heat,) = _heatmaps(fig)
    layers = layer_order(list(trace.attention))
    z = np.asarray(heat.z, dtype=float)
    gap = 2
    assert z.shape == (len(layers) * 18 - gap, 6 * 18 - gap)
    assert len(fig.layout.yaxis.ticktext) == len(layers)
    assert list(fig.layout.xaxis.ticktext) == ["a", "red", "cat", "on", "a", "mat"]
    cell = z[:16, 36:52]  # first layer, "cat": its native map, min-max normalised
    native = trace.layer_maps(3)[layers[0]].numpy()
    native = (native - native.min()) / (native.max() - native.min())
    rows = np.arange(16) * native.shape[0] // 16
    cols = np.arange(16) * native.shape[1] // 16
    assert np.allclose(cell, native[rows][:, cols], atol=1e-6)


def test_layer_grid_in_unet_order_with_readable_labels_and_a_shared_scale(trace):
    fig = plots.layer_token_grid(trace, cell=8)
    (heat,) = _heatmaps(fig)
    labels = list(fig.layout.yaxis.ticktext)
    kinds = [lab.split(" \u00b7 ")[1].split(".")[0] for lab in labels]
    assert kinds == sorted(kinds, key=["down_blocks", "mid_block", "up_blocks"].index)
    assert "mid_block" in kinds
    first = labels[0].split(" \u00b7 ")
    assert first[0].startswith("IN") and first[1] == "down_blocks.0.attentions.0"
    res = trace.attention[next(iter(trace.attention))].res
    assert first[2] == f"{res[0]}\u00d7{res[1]}"
    raw = [m.numpy() for t in (1, 2, 3, 4, 5, 6) for m in trace.layer_maps(t).values()]
    assert heat.zmin == pytest.approx(min(m.min() for m in raw))
    assert heat.zmax == pytest.approx(max(m.max() for m in raw))
    assert heat.colorscale[0][1] == "rgb(0,0,4)"  # magma, the one colour map


def test_attention_entropy_and_mass(trace):
    fig = plots.attention_stats(trace, stat="entropy")
    (heat,) = _heatmaps(fig)
    z = np.asarray(heat.z, dtype=float)
    layers = layer_order(list(trace.attention))  # rows in UNet order: down, mid, up
    assert z.shape == (len(layers), 6)
    assert np.all((z > 0) & (z <= 1))
    m = trace.layer_maps(3)[layers[1]].double().numpy().ravel()
    p = m / m.sum()
    expected = -(p * np.log(p)).sum() / math.log(p.size)
    assert z[1, 2] == pytest.approx(expected, rel=1e-5)
    mass = np.asarray(_heatmaps(plots.attention_stats(trace, stat="mass"))[0].z, dtype=float)
    assert mass[1, 2] == pytest.approx(float(m.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="stat"):
        plots.attention_stats(trace, stat="kurtosis")


def test_temb_heatmap_and_lines(trace):
    rows, steps, z = plots.temb_table(trace)
    resnets = list(dict.fromkeys(r.block for r in trace.temb))
    assert rows == resnets and steps == [0, 1, 2]
    rec = next(r for r in trace.temb if r.block == resnets[2] and r.step == 1)
    assert z[2, 1] == pytest.approx(rec.ratio)
    fig = plots.temb_heatmap(trace)
    (heat,) = _heatmaps(fig)
    assert list(heat.x) == ["0: t=900", "1: t=500", "2: t=100"]
    assert list(fig.layout.yaxis.ticktext) == resnets  # every row labelled
    assert list(fig.layout.yaxis.tickvals) == list(range(len(resnets)))
    brows, _, bz = plots.temb_table(trace, by="block")
    assert brows == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    up0 = [r.ratio for r in trace.temb if r.block.startswith("up_blocks.0.") and r.step == 0]
    assert bz[3, 0] == pytest.approx(sum(up0) / len(up0))
    lines = plots.temb_lines(trace)
    assert [t.name for t in lines.data] == brows
    assert list(lines.data[0].x) == [900, 500, 100]
    assert lines.layout.yaxis.type == "log"
    per_resnet = plots.temb_lines(trace, by="layer")
    assert len(per_resnet.data) == len(resnets)
    colours = [t.line.color for t in per_resnet.data]
    assert None not in colours and len(set(colours)) == len(colours)  # no two lines alike


def test_eleven_temb_lines_have_eleven_colours():
    """SD 1.5's per-resnet plot has more lines than plotly's 10-colour cycle."""
    assert len(set(plots.LINE_COLOURS)) == len(plots.LINE_COLOURS) >= 24


def test_static_png_heatmap_without_a_browser(trace):
    hm = trace.heatmap("cat")
    png = plots.heatmap_png(hm, size=64)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"
    lut = colors.lut()
    assert tuple(lut[0]) == (0, 0, 4) and tuple(lut[-1]) == (252, 253, 191)  # magma
    viridis = colors.lut("Viridis")
    assert tuple(viridis[0]) == (68, 1, 84) and tuple(viridis[-1]) == (253, 231, 37)
    assert (colors.lut(get_colorscale("Viridis")) == viridis).all()  # a name or its pairs
    a = np.asarray(img).reshape(-1, 3)
    assert (a == lut[-1]).all(1).any()  # the maximum maps to the map's top colour
    photo = Image.new("RGB", (80, 40), (255, 0, 0))
    blended = plots.heatmap_image(hm, image=photo, alpha=0.5)
    assert blended.size == (80, 40)
    px = np.asarray(blended).astype(int)
    grey = round(0.299 * 255)  # the red photo shows through as its grey, never as red
    colour = (2 * px - grey).reshape(-1, 1, 3)  # what the colour map contributed
    nearest = np.abs(colour - lut[None].astype(int)).max(-1).min(-1)
    assert nearest.max() <= 3


def test_clear_errors_without_maps_or_temb(trace):
    cfg = UNetConfig.from_dict(trace.meta["config"])
    with torch.device("meta"):
        unet = UNet2DConditionModel(cfg)
    x = torch.zeros(2, 4, 16, 16, device="meta")
    with torch.no_grad(), capture(unet, attention=False, temb=False) as empty:
        unet(x, 10, torch.zeros(2, 8, 32, device="meta"))
    with pytest.raises(ValueError, match="no cross-attention maps"):
        plots.layer_token_grid(empty, tokens=[1])
    with pytest.raises(ValueError, match="no temb records"):
        plots.temb_heatmap(empty)
