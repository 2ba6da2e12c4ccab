"""Notebook display: the Heatmap tensor, Trace / Run / edit-comparison HTML, static plotly SVG.

Everything is checked on real objects: captures of a tiny random UNet and runs of the shipped
demo model (5 steps).
"""

from __future__ import annotations

import copy
import io
import pickle
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_capture
from unetviz import colors

PROMPT = "a red circle and a blue square"
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def trace():
    tr = tiny_capture()
    tr.tokens = ["<bos>", "a", "big", "cat", "<eos>", "<pad>", "<pad>", "<pad>"]
    tr.words = [None, "a", "big", "cat", None, None, None, None]
    return tr


@pytest.fixture(scope="module")
def pipe():
    from unetviz.pipelines import load_pipeline

    return load_pipeline("demo")


@pytest.fixture(scope="module")
def run(pipe):
    return pipe(PROMPT, seed=0, steps=5)


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).convert("RGB")


def _offline(html: str) -> None:
    """No script, nothing fetched from anywhere."""
    assert "<script" not in html.lower()
    assert not EXTERNAL.search(html), EXTERNAL.search(html)


# ---------------------------------------------------------------------------- Heatmap
def test_heatmap_is_a_tensor_that_knows_its_word_and_recipe(trace):
    from unetviz.capture.heatmap import Heatmap

    h = trace.heatmap("cat", size=12, normalize=None)
    assert isinstance(h, Heatmap) and isinstance(h, torch.Tensor)
    assert h.word == "cat" and h.tokens == [3]
    assert h.recipe["size"] == 12 and h.recipe["normalize"] is None
    assert h.recipe["upsample"] == "bicubic" and h.recipe["preset"] is None  # defaults kept
    assert "'cat'" in h.caption and "raw probabilities" in h.caption and "12x12" in h.caption
    plain = h.tensor()
    assert type(plain) is torch.Tensor and plain.data_ptr() == h.data_ptr()
    # ops return plain tensors; the old call shapes keep working
    for out in (h + 1, h * 2, h.clone(), h.detach(), h[0], torch.sigmoid(h), h.mean()):
        assert type(out) is torch.Tensor
    assert np.array_equal(h.float().numpy(), plain.numpy())
    assert torch.allclose(h, plain) and torch.equal(h, plain)
    torch.testing.assert_close(h * 2, plain * 2)
    assert type(pickle.loads(pickle.dumps(h))) is torch.Tensor
    dup = copy.deepcopy(h)
    assert isinstance(dup, Heatmap) and dup.word == "cat" and torch.equal(dup, h)
    assert repr(h).startswith("Heatmap('cat'")


def test_heatmap_png_shows_the_map_in_the_colour_map(trace):
    h = trace.heatmap([2, 3], preset="daam-approx", normalize=None)
    assert h.word == "big cat" and "DAAM-like" in h.caption
    img = _png(h._repr_png_())
    side = h.shape[0] * max(1, 256 // h.shape[0])
    assert img.width >= side and img.height > side  # colour bar and caption below the map
    a = h.numpy()
    r, c = np.unravel_index(a.argmax(), a.shape)
    r0, c0 = np.unravel_index(a.argmin(), a.shape)
    k = side // a.shape[0]
    assert tuple(img.getpixel((4 + c * k + k // 2, 4 + r * k + k // 2))) == tuple(colors.LUT[255])
    assert tuple(img.getpixel((4 + c0 * k + k // 2, 4 + r0 * k + k // 2))) == tuple(colors.LUT[0])


# ---------------------------------------------------------------------------- Trace
def test_trace_html_has_summary_svg_diagram_and_folded_table(trace):
    html = trace._repr_html_()
    _offline(html)
    assert "<svg" in html and "<details>" in html
    for fact in ("model", "size", "steps", "captured", "memory", "3 forward(s)"):
        assert fact in html
    assert "down_blocks.0" in html  # the module table and the diagram name real blocks
    svg = html[html.index("<svg") : html.index("</svg>") + 6]
    ET.fromstring(svg)  # inline SVG is well-formed XML (no prolog, no doctype)


def test_trace_without_attention_or_temb_displays(trace):
    state, _ = trace.to_state()
    state.update(attention={}, self_attention={}, temb=[], temb_vectors=[])
    bare = type(trace).from_state(state, {})
    html = bare._repr_html_()
    assert "<svg" in html and "cross-attention" not in html
    _offline(html)


# ---------------------------------------------------------------------------- Run
def test_run_mimebundle_has_image_tokens_and_shared_scale_heatmaps(run):
    bundle = run._repr_mimebundle_()
    html = bundle["text/html"]
    _offline(html)
    words = ["a", "red", "circle", "and", "blue", "square"]
    figures = re.findall(r"<figure>.*?</figure>", html)
    assert len(figures) == 1 + len(words)  # the image, then one map per distinct word
    for w in words:
        assert f"<b>{w}</b>" in html
    assert html.count('class="tok word"') == 7  # "a" twice
    m = re.search(r'data-vmin="([^"]+)" data-vmax="([^"]+)"', html)
    from unetviz.report.display import word_maps

    recipe = word_maps(run.trace)[0][1].recipe
    maps = [run.trace.heatmap(w, **recipe).numpy() for w in words]
    assert float(m.group(1)) == pytest.approx(min(float(x.min()) for x in maps), rel=1e-5)
    assert float(m.group(2)) == pytest.approx(max(float(x.max()) for x in maps), rel=1e-5)
    from unetviz.report.display import run_png

    sheet = _png(run_png(run))  # the same as one PNG: the image + one tile per word
    assert sheet.width > 3 * 256 and sheet.height > 2 * 160
    assert "Run(" in bundle["text/plain"]


def test_comparison_display(pipe):
    from unetviz import edits

    cmp = pipe.compare(PROMPT, edits=[edits.Reweight("red", 0.0)], seed=0, steps=5)
    bundle = cmp._repr_mimebundle_()  # EDITS' display hook calls unetviz.report.display
    html = bundle["text/html"]
    _offline(html)
    assert html.count("<figure>") == 3 and "Reweight" in html and "red" in html
    assert f"{cmp.score:.4f}" in html and "Comparison(1 edit" in bundle["text/plain"]


# ---------------------------------------------------------------------------- static plots
def test_every_plot_renders_as_static_svg(trace):
    from unetviz.render import plots
    from unetviz.report.static import figure_svg

    figs = {
        "token_grid": plots.token_grid(trace, image=np.zeros((16, 16, 3), np.uint8)),
        "layer_token_grid": plots.layer_token_grid(trace),
        "attention_stats": plots.attention_stats(trace),
        "temb_heatmap": plots.temb_heatmap(trace),
        "temb_lines": plots.temb_lines(trace),
    }
    for name, fig in figs.items():
        svg = figure_svg(fig)
        root = ET.fromstring(svg)
        ns = "{http://www.w3.org/2000/svg}"
        images = root.findall(f".//{ns}image")
        lines = root.findall(f".//{ns}polyline")
        kinds = {t.type for t in fig.data}
        if "heatmap" in kinds:
            assert images, name
        if "scatter" in kinds:
            assert len(lines) == len(fig.data), name
        assert "not drawn statically" not in svg, name
        title = fig.layout.title.text
        if title:
            assert title.split("(")[0].strip() in svg, name


def test_static_heatmap_colours_follow_the_figure_scale():
    import base64

    import plotly.graph_objects as go

    from unetviz.report.static import figure_svg

    z = np.array([[0.0, 1.0], [np.nan, 0.5]])
    fig = go.Figure(go.Heatmap(z=z, colorscale=[[0, "rgb(0,0,255)"], [1, "rgb(255,0,0)"]]))
    svg = figure_svg(fig)
    uri = re.search(r'href="data:image/png;base64,([^"]+)"', svg).group(1)
    img = Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGBA")
    # y axis not reversed: row 0 is drawn at the bottom, like plotly
    assert img.getpixel((0, 1)) == (0, 0, 255, 255)
    assert img.getpixel((1, 1)) == (255, 0, 0, 255)
    assert img.getpixel((0, 0))[3] == 0  # NaN is transparent
    assert img.getpixel((1, 0))[:3] in ((128, 0, 128), (127, 0, 128), (128, 0, 127))


def test_enable_static_plots_adds_an_svg_to_every_figure(trace):
    import plotly.io as pio

    from unetviz.render import plots
    from unetviz.report import enable_static_plots

    old = pio.renderers.default
    try:
        assert enable_static_plots() == "plotly_mimetype+unetviz_static"
        bundle = plots.temb_lines(trace)._repr_mimebundle_()
        assert "application/vnd.plotly.v1+json" in bundle
        assert bundle["image/svg+xml"].startswith("<svg")
    finally:
        pio.renderers.default = old


def test_token_list_folds_padding_but_keeps_the_end_token():
    from unetviz.report.display import tokens_html

    clip = ["<|startoftext|>", "a</w>", "cat</w>", *["<|endoftext|>"] * 74]
    html = tokens_html(clip, [None, "a", "cat", *[None] * 74])
    assert html.count("&lt;|endoftext|&gt;") == 1 and "+ 73 padding" in html
    assert '<span class="tok word" title="#2">cat</span>' in html
    html = tokens_html(["<bos>", "a", "<eos>", "<pad>", "<pad>"], [None, "a", None, None, None])
    assert "&lt;eos&gt;" in html and "&lt;pad&gt;" not in html and "+ 2 padding" in html


def test_readable_svg_fits_the_width_but_never_shrinks_text_under_9_px():
    from unetviz.report.display import readable_svg

    def widths(svg: str) -> tuple[int, int]:
        m = re.search(r"min-width:(\d+)px;max-width:(\d+)px", svg)
        return int(m.group(1)), int(m.group(2))

    # graphviz: 1000 pt = 1333 px; 8 pt text = 10.7 px -> at most shrunk to 9/10.7
    small = '<svg width="1000pt" height="50pt" viewBox="0.00 0.00 1000.00 50.00">'
    assert widths(readable_svg(small + '<text font-size="8.00">x</text></svg>')) == (1125, 1333)
    # text too small even at its own size: drawn larger than its own size, never smaller
    tiny = '<svg width="600" height="50" viewBox="0 0 600 50" font-size="6"><text>x</text></svg>'
    assert widths(readable_svg(tiny)) == (900, 900)
    plain = '<svg width="100%" viewBox="0 0 10 10"><text font-size="8">x</text></svg>'
    assert readable_svg(plain) == plain  # no absolute size: left alone


def test_emphasis_weights_show_on_chips_and_captions(trace):
    from unetviz.report.display import heatmap_grid, tokens_html

    weighted = copy.copy(trace)
    weighted.meta = {**trace.meta, "token_weights": [1.0, 1.0, 1.3, 0.5, 1.0, 1.0, 1.0, 1.0]}
    chips = tokens_html(weighted.tokens, weighted.words, weighted.meta["token_weights"])
    assert '>big<sup class="w">×1.3</sup></span>' in chips
    assert '>cat<sup class="w">×0.5</sup></span>' in chips and ">a</span>" in chips
    grid = heatmap_grid(weighted)
    assert "<b>big</b> ×1.3 (token 2)" in grid and "<b>a</b> (token 1)" in grid
    for bad in (["x"] * 8, [float("nan")] * 8, None, [1.0]):  # unreadable: no badge
        assert "sup" not in tokens_html(trace.tokens, trace.words, bad)
