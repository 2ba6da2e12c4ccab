"""Draw a Trace's architecture graph with graphviz: the UNet as a U.

The down path runs down the left arm, the mid block sits at the bottom and the up path climbs
the right arm (``direction="TB"``); ``direction="LR"`` turns the U on its side. Every skip
tensor is an arc across the U labelled ``res[i] (shape)``; the time embedding and the text
context are inputs with arrows to every resnet / cross-attention they act in. Nodes are coloured
by type (legend included); tooltips carry parameters, MACs, the LDM key and the A1111 label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

import graphviz

from ..errors import UnetvizError
from .graph import (
    ADDED,
    CONTEXT,
    OUTPUT,
    SAMPLE,
    TEMB,
    TIMESTEP,
    ArchGraph,
    Node,
    build_graph,
    field_of,
    fmt_shape,
)

FONT = "DejaVu Sans"
DIRECTIONS = ("LR", "TB")
SHAPES = ("u", "flat")

#: fill colour per module type (diffusers class names); unknown types get a pastel by hash
TYPE_COLORS: dict[str, str] = {
    "CrossAttnDownBlock2D": "#fdd0a2",
    "DownBlock2D": "#c6dbef",
    "UNetMidBlock2DCrossAttn": "#fcbba1",
    "CrossAttnUpBlock2D": "#fdd0a2",
    "UpBlock2D": "#c6dbef",
    "ResnetBlock2D": "#9ecae1",
    "Transformer2DModel": "#fdae6b",
    "BasicTransformerBlock": "#fdd49e",
    "Attention": "#fd8d3c",
    "FeedForward": "#fee391",
    "GEGLU": "#fee391",
    "Downsample2D": "#a1d99b",
    "Upsample2D": "#bcbddc",
    "Conv2d": "#d9d9d9",
    "Linear": "#e5e5e5",
    "GroupNorm": "#f0f0f0",
    "LayerNorm": "#f0f0f0",
    "SiLU": "#f7f7f7",
    "Dropout": "#fafafa",
    "Timesteps": "#ffeda0",
    "TimestepEmbedding": "#ffeda0",
    "input": "#ffffff",
    "temb": "#fff7bc",
    "output": "#ffffff",
}
_PASTELS = ("#ccebc5", "#decbe4", "#fed9a6", "#ffffcc", "#e5d8bd", "#fddaec", "#b3cde3")

EDGE_STYLES: dict[str, dict[str, str]] = {
    "data": {"color": "#333333", "penwidth": "1.4"},
    "skip": {"color": "#3182bd", "style": "dashed", "penwidth": "1.2", "fontcolor": "#08519c"},
    "temb": {"color": "#e6550d", "style": "dotted", "arrowsize": "0.6"},
    "context": {"color": "#31a354", "style": "dotted", "arrowsize": "0.6"},
}


class DiagramError(UnetvizError):
    """A diagram option that does not exist (direction, shape)."""


def color_of(type_name: str) -> str:
    """The fill colour of a node type (stable pastel for types not in TYPE_COLORS)."""
    if type_name in TYPE_COLORS:
        return TYPE_COLORS[type_name]
    return _PASTELS[sum(map(ord, type_name)) % len(_PASTELS)]


def heat_color(x: float) -> str:
    """``x`` in [0, 1] -> ``#rrggbb`` of unetviz's colour map (:mod:`unetviz.colors`), for
    nodes filled by a value (temb ratio, a sweep's effect). numpy is imported here, not at
    module import: a plain diagram stays numpy-free (``unetviz diagram`` start-up time)."""
    from ..colors import colorize

    r, g, b = (int(v) for v in colorize([min(max(float(x), 0.0), 1.0)], 0.0, 1.0)[0])
    return f"#{r:02x}{g:02x}{b:02x}"


def human(n: float | None, unit: str = "") -> str:
    """``86123456`` -> ``86.1M``; ``None`` -> ``-``."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:g}{unit}"


def human_params(n: int | None) -> str:
    """Parameter counts: ``2.57B``, ``86.1M``, ``640``."""
    return human(n).replace("G", "B")


def title_text(graph: ArchGraph) -> str:
    """The diagram's one-line title: model, size, batch, params, detail, fill (the app shows
    it outside the scrolled diagram; ``draw(title=False)`` leaves it out of the graph)."""
    m = graph.meta
    bits = [str(m.get("model") or "UNet2DConditionModel")]
    if m.get("height") and m.get("width"):
        bits.append(f"{m['width']}\u00d7{m['height']} px")
    if m.get("batch"):
        bits.append(f"batch {m['batch']}")
    total = sum(n.params or 0 for n in graph.nodes if n.level == "block")
    if total:
        bits.append(f"{human_params(total)} params")
    bits.append(f"{graph.detail} detail")
    if graph.temb_step is None and graph.temb_range is not None:
        bits.append(f"fill: {graph.fill_label}")
    if graph.temb_step is not None:
        steps = m.get("timesteps")
        bits.append(f"fill: temb ratio at step {graph.temb_step}")
        if steps:
            bits[-1] += f" (t={steps[graph.temb_step]:g})"
    return "  \u00b7  ".join(bits)


def tooltip(n: Node) -> str:
    """Multi-line tooltip: name, type, LDM key, A1111 label, params, MACs, shapes."""
    lines = [f"{n.name}  ({n.type})"]
    if n.ldm:
        lines.append(f"LDM key: {n.ldm}")
    if n.a1111:
        lines.append(f"A1111: {n.a1111}")
    if n.composition:
        lines.append(n.composition)
    if n.params is not None:
        lines.append(f"params: {n.params:,}")
    if n.macs:
        lines.append(f"MACs per call: {n.macs:,} ({human(n.macs)})")
    if n.calls:
        lines.append(f"calls: {n.calls}" + (f", {n.time_ms:.1f} ms total" if n.time_ms else ""))
    for key, val in n.inputs.items():
        lines.append(f"in  {key}: {fmt_shape(val)}")
    for key, val in n.outputs.items():
        lines.append(f"out {key}: {fmt_shape(val)}")
    if n.temb_ratio is not None:
        lines.append(f"temb ratio: {n.temb_ratio:.3g}")
    return "\n".join(lines)


def _label(n: Node, detail: str) -> str:
    if n.kind == "input":
        what = {
            SAMPLE: "sample (noisy latent)",
            TIMESTEP: "timestep",
            CONTEXT: "text context\nencoder_hidden_states",
            ADDED: "added_cond_kwargs\ntext_embeds, time_ids",
        }[n.id]
        shape = n.outputs.get("sample")
        return what + (f"\n{fmt_shape(shape)}" if shape else "")
    if n.kind == "temb":
        return f"temb\n{fmt_shape(n.outputs.get('sample'))}"
    if n.kind == "output":
        return f"noise prediction\n{fmt_shape(n.inputs.get('sample'))}"
    head = n.name if not n.a1111 else f"{n.name}  \u00b7  {n.a1111}"
    if detail == "modules" and n.level == "module":
        head = n.name.rsplit(".", 1)[-1] if n.parent else n.name
        return f"{head}\n{n.type}"
    lines = [head, n.type]
    if n.composition and detail == "blocks":
        lines.append(
            n.composition.replace(", ", "\n") if len(n.composition) > 44 else n.composition
        )
    ins = n.inputs.get("sample", n.inputs.get("timestep"))
    outs = n.outputs.get("sample")
    if ins is not None and outs is not None and ins != outs:
        lines.append(f"{fmt_shape(ins)} \u2192 {fmt_shape(outs)}")
    elif outs is not None:
        lines.append(fmt_shape(outs))
    if n.params:
        stats = f"{human_params(n.params)} params"
        if n.macs:
            stats += f"  \u00b7  {human(n.macs)} MACs"
        lines.append(stats)
    return "\n".join(lines)


def _is_up_path(node_id: str) -> bool:
    return node_id.startswith(("up_blocks", "conv_norm_out", "conv_act", "conv_out", OUTPUT))


def _text_color(fill: str) -> str:
    r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"


@dataclass
class _Drawing:
    """What the phases of :func:`draw` share: the graph, its lookups and the options."""

    graph: ArchGraph
    shape: str
    markers: bool
    by_id: dict[str, Node] = field(default_factory=dict)
    children: dict[str | None, list[Node]] = field(default_factory=dict)
    first_leaf: dict[str, str] = field(default_factory=dict)
    last_leaf: dict[str, str] = field(default_factory=dict)
    stubs: dict[str | None, list[tuple[str, str, list[str]]]] = field(default_factory=dict)

    @classmethod
    def of(cls, graph: ArchGraph, shape: str, markers: bool) -> _Drawing:
        d = cls(graph, shape, markers, by_id={n.id: n for n in graph.nodes})
        for n in graph.nodes:
            d.children.setdefault(n.parent if n.kind == "module" else None, []).append(n)
            if n.cluster:
                continue
            parent = n.parent
            while parent is not None:  # the first and last leaf inside every cluster
                d.first_leaf.setdefault(parent, n.id)
                d.last_leaf[parent] = n.id
                parent = d.by_id[parent].parent
        d.stubs = _marker_stubs(graph, d.by_id) if markers else {}
        return d

    @property
    def detail(self) -> str:
        return self.graph.detail

    def fill_of(self, value: float) -> str:
        """The heat fill of a node's value on the graph's fill range."""
        lo, hi = self.graph.temb_range or (0.0, 1.0)
        return heat_color((value - lo) / (hi - lo) if hi > lo else 0.5)


def draw(
    graph: ArchGraph,
    direction: str = "TB",
    shape: str = "u",
    legend: bool = True,
    edge_labels: bool = True,
    markers: bool = True,
    title: bool = True,
) -> graphviz.Digraph:
    """Draw an :class:`ArchGraph` (see :func:`diagram`)."""
    if direction not in DIRECTIONS:
        raise DiagramError(f"unknown direction {direction!r}: expected one of {list(DIRECTIONS)}")
    if shape not in SHAPES:
        raise DiagramError(f"unknown shape {shape!r}: expected one of {list(SHAPES)}")
    g = _digraph(graph, direction, title)
    d = _Drawing.of(graph, shape, markers)
    for n in d.children.get(None, []):
        _add(g, d, n)
    _add_stubs(g, d, None)
    _add_edges(g, d, edge_labels)
    if shape == "u":
        _u_ranks(g, graph)
    if legend:
        _legend(g, graph, markers)
    return g


def _digraph(graph: ArchGraph, direction: str, title: bool) -> graphviz.Digraph:
    """An empty Digraph with the diagram's graph, node and edge attributes."""
    g = graphviz.Digraph("unet", engine="dot")
    g.attr(
        rankdir=direction,
        fontname=FONT,
        fontsize="16",
        labelloc="t",
        newrank="true",
        nodesep="0.25",
        ranksep="0.3" if graph.detail == "modules" else "0.4",
        compound="true",
        tooltip=title_text(graph),
    )
    if title:
        g.attr(label=title_text(graph))
    g.attr(
        "node",
        fontname=FONT,
        fontsize="10",
        shape="box",
        style="rounded,filled",
        margin="0.1,0.04",
    )
    g.attr("edge", fontname=FONT, fontsize="8")
    return g


def _node_attrs(d: _Drawing, n: Node) -> dict[str, str]:
    fill = color_of(n.type if n.kind == "module" else n.kind)
    attrs = {"label": _label(n, d.detail), "tooltip": tooltip(n), "fillcolor": fill}
    if n.kind in ("input", "output"):
        attrs.update(shape="box", style="rounded,filled,bold")
    if n.kind == "temb":
        attrs.update(shape="ellipse", style="filled")
    if d.markers and n.id in (TEMB, CONTEXT):
        where = "resnet" if n.id == TEMB else "cross-attention"
        attrs["tooltip"] += f"\nacts in every {where}: see the small '{n.id}' markers"
    if n.temb_ratio is not None:
        heat = d.fill_of(n.temb_ratio)
        attrs.update(fillcolor=heat, fontcolor=_text_color(heat), color=fill, penwidth="3")
    return attrs


def _marker_stubs(
    graph: ArchGraph, by_id: dict[str, Node]
) -> dict[str | None, list[tuple[str, str, list[str]]]]:
    """temb / context markers: a small local node per cluster (or per target at blocks
    detail) instead of dozens of long arrows from one source across the whole U."""
    grouped: dict[tuple[str | None, str], list[str]] = {}
    for e in graph.edges:
        if e.kind in ("temb", "context"):
            home = by_id[e.target].parent if graph.detail != "blocks" else e.target
            grouped.setdefault((home, e.kind), []).append(e.target)
    stubs: dict[str | None, list[tuple[str, str, list[str]]]] = {}
    for (home, kind), targets in grouped.items():
        stubs.setdefault(home, []).append((f"{home or 'top'}~{kind}", kind, targets))
    return stubs


def _add_stubs(container: graphviz.Digraph, d: _Drawing, key: str | None) -> None:
    for stub, kind, targets in d.stubs.get(key, []):
        src = d.by_id[TEMB if kind == "temb" else CONTEXT]
        container.node(
            stub,
            label="temb" if kind == "temb" else "text",
            shape="cds",
            style="filled",
            fillcolor=EDGE_STYLES[kind]["color"] + "33",
            color=EDGE_STYLES[kind]["color"],
            fontsize="8",
            height="0.2",
            margin="0.04,0.01",
            tooltip=f"{kind}: {src.name} {fmt_shape(src.outputs.get('sample'))} acts in "
            + ", ".join(targets),
        )
        for t in targets:
            if d.shape == "u" and d.detail == "blocks" and _is_up_path(t):
                # on the up arm the marker sits outside the U, leaving the inside to skips
                container.edge(t, stub, weight="20", dir="back", **EDGE_STYLES[kind])
            else:
                container.edge(stub, t, weight="20", **EDGE_STYLES[kind])
        _same_rank(container, [stub, targets[0]])


def _add(container: graphviz.Digraph, d: _Drawing, n: Node) -> None:
    """Add node ``n`` (a box, or a cluster holding its children) to ``container``."""
    if not n.cluster and n.id in d.stubs and not _is_up_path(n.id):
        # blocks detail: a down-arm block and its markers in one borderless cluster; an
        # up-arm block stays bare so skip labels can sit between it and the down arm
        with container.subgraph(name=f"cluster_wrap_{n.id}") as c:
            c.attr(label="", peripheries="0", margin="2")
            c.node(n.id, **_node_attrs(d, n))
            _add_stubs(c, d, n.id)
        return
    if not n.cluster:
        container.node(n.id, **_node_attrs(d, n))
        _add_stubs(container, d, n.id)
        return
    with container.subgraph(name=f"cluster_{n.id}") as c:
        label = n.name if not n.a1111 else f"{n.name}  \u00b7  {n.a1111}"
        if n.level == "block":
            label += f"\n{n.type}  \u00b7  {human_params(n.params)} params"
            if n.macs:
                label += f"  \u00b7  {human(n.macs)} MACs"
        else:
            label += f"  ({n.type})"
        c.attr(
            label=label,
            tooltip=tooltip(n),
            style="rounded,filled",
            fillcolor=color_of(n.type) + "66",
            color="#999999",
            fontname=FONT,
            fontsize="11" if n.level == "block" else "9",
        )
        if n.temb_ratio is not None:
            c.attr(penwidth="3", color=d.fill_of(n.temb_ratio))
        kids = d.children.get(n.id, [])
        for k in kids:
            _add(c, d, k)
        _add_stubs(c, d, n.id)
        if d.shape == "u" and n.id == "mid_block" and d.detail == "layers":
            _same_rank(c, [k.id for k in kids])


def _leaf_ends(d: _Drawing, tail: str, head: str, attrs: dict[str, str]) -> tuple[str, str]:
    """Edges to or from a cluster attach to its last / first leaf, clipped at its border."""
    if d.by_id[tail].cluster:
        attrs["ltail"] = f"cluster_{tail}"
        tail = d.last_leaf[tail]
    if d.by_id[head].cluster:
        attrs["lhead"] = f"cluster_{head}"
        head = d.first_leaf[head]
    return tail, head


def _add_edges(g: graphviz.Digraph, d: _Drawing, edge_labels: bool) -> None:
    """Data edges (in a U the up path's point the other way, so it climbs back up) and skip
    arcs. A skip's label is a node of its own on the arc, in the rank of the arc's target:
    graphviz never lets nodes overlap, so skip labels never overprint each other (edge labels
    of arcs drawn across the U did). Parallel arcs (blocks detail) share one label node."""
    skip_labels: dict[tuple[str, str], list[str]] = {}
    for e in d.graph.edges:
        if e.kind == "skip":
            # "res[1] (2,320,64,64) → resnets.1": the arc already ends at up_blocks.3
            label = e.label.replace(f"\u2192 {e.target}.", "\u2192 ")
            skip_labels.setdefault((e.source, e.target), []).append(label)
    label_nodes: dict[tuple[str, str], str] = {}
    for e in d.graph.edges:
        if e.kind in ("temb", "context") and d.markers:
            continue
        attrs = dict(EDGE_STYLES[e.kind])
        if e.kind != "skip" and e.label and edge_labels and e.label != "?":
            attrs["label"] = e.label
        shape_txt = fmt_shape(e.shape) if e.shape else ""
        attrs["tooltip"] = f"{e.kind}: {e.source} \u2192 {e.target}" + (
            f"  {shape_txt}" if shape_txt else ""
        )
        if e.via:
            attrs["tooltip"] += f"  (at {e.via})"
        tail, head = _leaf_ends(d, e.source, e.target, attrs)
        if e.kind == "skip" and edge_labels:
            key = (e.source, e.target)
            if key not in label_nodes:  # parallel arcs: drawn once through a shared label
                lines = skip_labels[key]
                level = d.shape == "u" and d.detail == "blocks"
                k = len(label_nodes)
                label_nodes[key] = _skip_label(g, tail, head, lines, attrs, k, level)
            continue
        if e.kind != "data":
            attrs["constraint"] = "false"
        elif d.shape == "u" and _is_up_path(e.target):
            tail, head = head, tail
            attrs["dir"] = "back"
        g.edge(tail, head, **attrs)


def _skip_label(
    g: graphviz.Digraph,
    tail: str,
    head: str,
    lines: list[str],
    attrs: dict[str, str],
    k: int,
    level: bool = False,
) -> str:
    """Draw one skip arc (or several parallel ones) as tail -> label node -> head, the label
    node in the head's rank just before it (in a U: inside the U, beside the up block)."""
    node = f"skip~{k}"
    g.node(
        node,
        label="\n".join(lines),
        shape="box",
        style="rounded,dashed",
        color=EDGE_STYLES["skip"]["color"],
        fontcolor=EDGE_STYLES["skip"]["fontcolor"],
        fontsize="8",
        margin="0.05,0.02",
        height="0.2",
        tooltip=attrs["tooltip"],
    )
    first = {k: v for k, v in attrs.items() if k != "lhead"}
    second = {k: v for k, v in attrs.items() if k != "ltail"}
    # at blocks detail a down block and the up block it feeds share a rank: both halves are
    # flat edges there, which put the label between them, inside the U
    flat = "true" if level else "false"
    g.edge(tail, node, arrowhead="none", constraint=flat, **first)
    g.edge(node, head, **second)  # a flat edge: the label sits just before the head
    _same_rank(g, [node, head])
    return node


def _same_rank(g: graphviz.Digraph, ids: list[str]) -> None:
    with g.subgraph() as s:
        s.attr(rank="same")
        for i in ids:
            s.node(i)


def _u_ranks(g: graphviz.Digraph, graph: ArchGraph) -> None:
    """Rank constraints that make the U: the inputs on the top row, the output path beside
    conv_in and, at blocks detail, each down block beside the up block that pops its skips
    (at finer detail the skip arcs' label nodes pull the two arms level)."""
    ids = {n.id: n for n in graph.nodes}
    _same_rank(g, [i for i in (SAMPLE, TIMESTEP, ADDED, CONTEXT) if i in ids])
    out_row = [i for i in ("conv_in", "conv_norm_out", "conv_act", "conv_out", OUTPUT) if i in ids]
    if graph.detail != "modules" and len(out_row) > 1:
        _same_rank(g, [i for i in out_row if not ids[i].cluster])
    if graph.detail == "blocks":
        downs = [n.id for n in graph.nodes if n.id.startswith("down_blocks.")]
        ups = [n.id for n in graph.nodes if n.id.startswith("up_blocks.")]
        for down, up in zip(downs, reversed(ups), strict=False):
            _same_rank(g, [down, up])


_EDGE_WORDS = {
    "data": "\u2501 data (shape)",
    "skip": "\u2504 skip res[i] (shape)",
    "temb": "\u2508 temb: time embedding",
    "context": "\u2508 text context",
}


def legend_items(graph: ArchGraph, markers: bool = True) -> dict[str, Any]:
    """What the legend shows, as data: ``types`` [(type, fill)], ``edges`` [(words, colour)],
    ``fill`` (label, [(value, colour)] at 0, 1/4, ..., 1) or None."""
    types: list[str] = []
    for n in graph.nodes:
        if n.kind == "module" and n.type not in types:
            types.append(n.type)
    edges = []
    for k in ("data", "skip", "temb", "context"):
        if any(e.kind == k for e in graph.edges):
            words = _EDGE_WORDS[k] + (" (marker)" if markers and k in ("temb", "context") else "")
            edges.append((words, EDGE_STYLES[k]["color"]))
    fill = None
    if graph.temb_range is not None:
        lo, hi = graph.temb_range
        steps = [(lo + (hi - lo) * x, heat_color(x)) for x in (0.0, 0.25, 0.5, 0.75, 1.0)]
        fill = (graph.fill_label, steps)
    return {"types": [(t, color_of(t)) for t in types], "edges": edges, "fill": fill}


def _legend(g: graphviz.Digraph, graph: ArchGraph, markers: bool) -> None:
    """One HTML-table node: a swatch per node type, a line per edge kind, the fill scale."""
    items = legend_items(graph, markers)
    cells = [
        f'<td bgcolor="{c}" border="1" style="rounded"><font point-size="9">{escape(t)}</font></td>'
        for t, c in items["types"]
    ]
    rows = ["<tr>" + "".join(cells[i : i + 4]) + "</tr>" for i in range(0, len(cells), 4)]
    cells = [
        f'<td><font color="{c}" point-size="9">{escape(w)}</font></td>' for w, c in items["edges"]
    ]
    rows.append("<tr>" + "".join(cells) + "</tr>")
    if items["fill"] is not None:
        label, steps = items["fill"]
        cells = [
            f'<td bgcolor="{c}"><font color="{_text_color(c)}" point-size="8">{v:.3g}</font></td>'
            for v, c in steps
        ]
        rows.append(
            f'<tr><td colspan="4"><font point-size="9">fill: {escape(label)}</font></td></tr>'
        )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = '<<table border="0" cellborder="0" cellspacing="3" cellpadding="3">'
    table += "".join(rows) + "</table>>"
    g.node("legend", label=table, shape="box", style="rounded", color="#bbbbbb", tooltip="legend")


def legend_html(graph: ArchGraph, markers: bool = True) -> str:
    """The legend as a compact HTML fragment (swatches, edge kinds, fill scale) for pages
    that show it beside the diagram rather than inside it."""
    parts = [
        f'<span class="uv-swatch" style="background:{c};border:1px solid #999;border-radius:4px;'
        f'padding:0 4px;margin:1px;display:inline-block">{escape(t)}</span>'
        for t, c in legend_items(graph, markers)["types"]
    ]
    items = legend_items(graph, markers)
    parts += [
        f'<span style="color:{c};margin:0 6px;display:inline-block">{escape(w)}</span>'
        for w, c in items["edges"]
    ]
    if items["fill"] is not None:
        label, steps = items["fill"]
        stops = ", ".join(c for _, c in steps)
        parts.append(
            f'<span style="margin:0 6px;display:inline-block">fill: {escape(label)} '
            f"{steps[0][0]:.3g} "
            f'<span style="display:inline-block;width:90px;height:10px;'
            f'background:linear-gradient(to right, {stops})"></span> {steps[-1][0]:.3g}</span>'
        )
    return (
        '<div class="uv-legend" style="font-size:12px;line-height:1.7">' + "".join(parts) + "</div>"
    )


def diagram(
    trace: Any,
    detail: str = "blocks",
    direction: str = "TB",
    temb_step: int | None = None,
    shape: str = "u",
    legend: bool = True,
    edge_labels: bool = True,
    markers: bool = True,
    title: bool = True,
    fill: dict[str, float] | None = None,
    fill_label: str = "value",
) -> graphviz.Digraph:
    """The architecture diagram of ``trace`` as a ``graphviz.Digraph``.

    - ``detail``: ``"blocks"`` (one box per down/mid/up block), ``"layers"`` (blocks as
      clusters of their resnets, transformers and samplers) or ``"modules"`` (every submodule);
      not finer than the trace was captured at.
    - ``direction``: ``"TB"`` (a U: down path on the left, up path climbing the right) or
      ``"LR"`` (the U on its side).
    - ``temb_step``: fill every node by its mean temb ratio at that forward (the colour map of
      :mod:`unetviz.colors`), the type
      colour moving to the border.
    - ``fill`` (node id -> value) / ``fill_label``: fill those nodes by any value instead (a
      sweep's effect per block), named in the legend and the title.
    - ``shape="flat"`` draws one straight pipeline instead of a U.
    - ``markers``: draw temb / text context as small local markers beside every block (or
      inside every cluster) with arrows to the resnets / cross-attentions they act in, rather
      than long arrows from one source node (the JSON export always has the full edges).

    - ``legend`` / ``title``: draw them in the graph (the app shows :func:`title_text` and
      :func:`legend_html` outside its scrolled diagram instead, so they are never cut off).

    A pure function of the trace: no torch, no model. Render with ``unetviz.render.export``.
    """
    graph = build_graph(trace, detail, temb_step, fill, fill_label)
    if graph.temb_step is not None:
        graph.meta["timesteps"] = list(field_of(trace, "timesteps", None) or [])
    return draw(
        graph,
        direction=direction,
        shape=shape,
        legend=legend,
        edge_labels=edge_labels,
        markers=markers,
        title=title,
    )
