"""Draw a Trace's architecture graph with graphviz: the UNet as a U.

The down path runs down the left arm, the mid block sits at the bottom and the up path climbs
the right arm (``direction="TB"``); ``direction="LR"`` turns the U on its side. Every skip
tensor is an arc across the U labelled ``res[i] (shape)``; the time embedding and the text
context are inputs with arrows to every resnet / cross-attention they act in. Nodes are coloured
by type (legend included); tooltips carry parameters, MACs, the LDM key and the A1111 label.
"""

from __future__ import annotations

from typing import Any

import graphviz

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

# a small viridis LUT for the temb-ratio fill (no plotly import: the CLI stays fast)
_VIRIDIS = (
    (0.0, (68, 1, 84)),
    (0.25, (59, 82, 139)),
    (0.5, (33, 145, 140)),
    (0.75, (94, 201, 98)),
    (1.0, (253, 231, 37)),
)


def color_of(type_name: str) -> str:
    """The fill colour of a node type (stable pastel for types not in TYPE_COLORS)."""
    if type_name in TYPE_COLORS:
        return TYPE_COLORS[type_name]
    return _PASTELS[sum(map(ord, type_name)) % len(_PASTELS)]


def viridis(x: float) -> str:
    """``x`` in [0, 1] -> a viridis ``#rrggbb``."""
    x = min(max(float(x), 0.0), 1.0)
    for (x0, c0), (x1, c1) in zip(_VIRIDIS, _VIRIDIS[1:], strict=False):
        if x <= x1:
            f = (x - x0) / (x1 - x0)
            return "#" + "".join(
                f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1, strict=True)
            )
    return "#fde725"


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


def _title(graph: ArchGraph) -> str:
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


def draw(
    graph: ArchGraph,
    direction: str = "TB",
    shape: str = "u",
    legend: bool = True,
    edge_labels: bool = True,
    markers: bool = True,
) -> graphviz.Digraph:
    """Draw an :class:`ArchGraph` (see :func:`diagram`)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}: expected one of {list(DIRECTIONS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: expected one of {list(SHAPES)}")
    detail = graph.detail
    g = graphviz.Digraph("unet", engine="dot")
    g.attr(
        rankdir=direction,
        fontname=FONT,
        fontsize="16",
        label=_title(graph),
        labelloc="t",
        newrank="true",
        nodesep="0.25",
        ranksep="0.3" if detail == "modules" else "0.4",
        compound="true",
        tooltip=_title(graph),
    )
    g.attr(
        "node",
        fontname=FONT,
        fontsize="10",
        shape="box",
        style="rounded,filled",
        margin="0.1,0.04",
    )
    g.attr("edge", fontname=FONT, fontsize="8")
    lo, hi = graph.temb_range or (0.0, 1.0)
    by_id = {n.id: n for n in graph.nodes}

    def node_attrs(n: Node) -> dict[str, str]:
        fill = color_of(n.type if n.kind == "module" else n.kind)
        attrs = {"label": _label(n, detail), "tooltip": tooltip(n), "fillcolor": fill}
        if n.kind in ("input", "output"):
            attrs.update(shape="box", style="rounded,filled,bold")
        if n.kind == "temb":
            attrs.update(shape="ellipse", style="filled")
        if markers and n.id in (TEMB, CONTEXT):
            where = "resnet" if n.id == TEMB else "cross-attention"
            attrs["tooltip"] += f"\nacts in every {where}: see the small '{n.id}' markers"
        if n.temb_ratio is not None:
            t = (n.temb_ratio - lo) / (hi - lo) if hi > lo else 0.5
            attrs.update(
                fillcolor=viridis(t),
                fontcolor=_text_color(viridis(t)),
                color=fill,
                penwidth="3",
            )
        return attrs

    # ---- temb / context markers: a small local node per cluster (or per target at blocks
    # detail) instead of dozens of long arrows from one source across the whole U
    marker_edges = [e for e in graph.edges if e.kind in ("temb", "context")] if markers else []
    stubs: dict[str | None, list[tuple[str, str, list[str]]]] = {}
    grouped: dict[tuple[str | None, str], list[str]] = {}
    for e in marker_edges:
        home = by_id[e.target].parent if detail != "blocks" else e.target
        grouped.setdefault((home, e.kind), []).append(e.target)
    for (home, kind), targets in grouped.items():
        stub = f"{home or 'top'}~{kind}"
        stubs.setdefault(home, []).append((stub, kind, targets))

    def add_stubs(container: graphviz.Digraph, key: str | None) -> None:
        for stub, kind, targets in stubs.get(key, []):
            src = by_id[TEMB if kind == "temb" else CONTEXT]
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
                container.edge(stub, t, weight="20", **EDGE_STYLES[kind])
            with container.subgraph() as s:
                s.attr(rank="same")
                s.node(stub)
                s.node(targets[0])

    # ---- clusters (layers / modules detail): nest by parent
    children: dict[str | None, list[Node]] = {}
    for n in graph.nodes:
        children.setdefault(n.parent if n.kind == "module" else None, []).append(n)
    first_leaf: dict[str, str] = {}
    last_leaf: dict[str, str] = {}
    for n in graph.nodes:
        if n.cluster:
            continue
        parent = n.parent
        while parent is not None:
            first_leaf.setdefault(parent, n.id)
            last_leaf[parent] = n.id
            parent = by_id[parent].parent

    def add(container: graphviz.Digraph, n: Node) -> None:
        if not n.cluster and n.id in stubs:  # blocks detail: keep the markers beside the node
            with container.subgraph(name=f"cluster_wrap_{n.id}") as c:
                c.attr(label="", peripheries="0", margin="2")
                c.node(n.id, **node_attrs(n))
                add_stubs(c, n.id)
            return
        if not n.cluster:
            container.node(n.id, **node_attrs(n))
            return
        with container.subgraph(name=f"cluster_{n.id}") as c:
            fill = color_of(n.type)
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
                fillcolor=fill + "66",
                color="#999999",
                fontname=FONT,
                fontsize="11" if n.level == "block" else "9",
            )
            if n.temb_ratio is not None:
                t = (n.temb_ratio - lo) / (hi - lo) if hi > lo else 0.5
                c.attr(penwidth="3", color=viridis(t))
            kids = children.get(n.id, [])
            for k in kids:
                add(c, k)
            add_stubs(c, n.id)
            if shape == "u" and n.id == "mid_block" and detail == "layers":
                with c.subgraph() as s:
                    s.attr(rank="same")
                    for k in kids:
                        s.node(k.id)

    for n in children.get(None, []):
        add(g, n)
    add_stubs(g, None)

    # ---- edges; in a U the up path's edges point the other way so it climbs back up.
    # Parallel skip arcs (blocks detail) share one label, one line per arc, so labels of
    # arcs drawn on top of each other do not overprint.
    skip_labels: dict[tuple[str, str], list[str]] = {}
    for e in graph.edges:
        if e.kind == "skip":
            skip_labels.setdefault((e.source, e.target), []).append(e.label)
    labelled: set[tuple[str, str]] = set()
    for e in graph.edges:
        if e.kind in ("temb", "context") and markers:
            continue
        attrs = dict(EDGE_STYLES[e.kind])
        if e.kind == "skip" and edge_labels:
            if (e.source, e.target) not in labelled:
                labelled.add((e.source, e.target))
                attrs["label"] = "\n".join(skip_labels[(e.source, e.target)])
        elif e.label and edge_labels and e.label != "?":
            attrs["label"] = e.label
        shape_txt = fmt_shape(e.shape) if e.shape else ""
        attrs["tooltip"] = f"{e.kind}: {e.source} \u2192 {e.target}" + (
            f"  {shape_txt}" if shape_txt else ""
        )
        if e.via:
            attrs["tooltip"] += f"  (at {e.via})"
        tail, head = e.source, e.target
        if by_id[tail].cluster:
            attrs["ltail"] = f"cluster_{tail}"
            tail = last_leaf[tail]
        if by_id[head].cluster:
            attrs["lhead"] = f"cluster_{head}"
            head = first_leaf[head]
        if e.kind != "data":
            attrs["constraint"] = "false"
        elif shape == "u" and _is_up_path(e.target):
            tail, head = head, tail
            attrs["dir"] = "back"
        g.edge(tail, head, **attrs)

    if shape == "u":
        _u_ranks(g, graph, first_leaf, last_leaf)
    if legend:
        _legend(g, graph, markers)
    return g


def _same_rank(g: graphviz.Digraph, ids: list[str]) -> None:
    with g.subgraph() as s:
        s.attr(rank="same")
        for i in ids:
            s.node(i)


def _u_ranks(
    g: graphviz.Digraph, graph: ArchGraph, first_leaf: dict[str, str], last_leaf: dict[str, str]
) -> None:
    """Rank constraints that make the U: inputs on the top row, the output path beside
    conv_in, each skip's two ends (or each down block and its up block) side by side."""
    ids = {n.id: n for n in graph.nodes}
    _same_rank(g, [i for i in (SAMPLE, TIMESTEP, ADDED, CONTEXT) if i in ids])
    out_row = [i for i in ("conv_in", "conv_norm_out", "conv_act", "conv_out", OUTPUT) if i in ids]
    if graph.detail != "modules" and len(out_row) > 1:
        _same_rank(g, [i for i in out_row if not ids[i].cluster])
    if graph.detail == "blocks":
        downs = [n.id for n in graph.nodes if n.id.startswith("down_blocks.")]
        ups = [n.id for n in graph.nodes if n.id.startswith("up_blocks.")]
        for d, u in zip(downs, reversed(ups), strict=False):
            _same_rank(g, [d, u])
        return


def _legend(g: graphviz.Digraph, graph: ArchGraph, markers: bool) -> None:
    """One HTML-table node: a swatch per node type, a line per edge kind, the temb scale."""
    types: list[str] = []
    for n in graph.nodes:
        if n.kind == "module" and n.type not in types:
            types.append(n.type)
    rows = []
    per_row = 4
    cells = [
        f'<td bgcolor="{color_of(t)}" border="1" style="rounded"><font point-size="9">{t}</font></td>'
        for t in types
    ]
    for i in range(0, len(cells), per_row):
        rows.append("<tr>" + "".join(cells[i : i + per_row]) + "</tr>")
    kinds = [
        k for k in ("data", "skip", "temb", "context") if any(e.kind == k for e in graph.edges)
    ]
    words = {
        "data": "\u2501 data (shape)",
        "skip": "\u2504 skip res[i] (shape)",
        "temb": "\u2508 temb: time embedding" + (" (marker)" if markers else ""),
        "context": "\u2508 text context" + (" (marker)" if markers else ""),
    }
    cells = [
        f'<td><font color="{EDGE_STYLES[k]["color"]}" point-size="9">{words[k]}</font></td>'
        for k in kinds
    ]
    rows.append("<tr>" + "".join(cells) + "</tr>")
    if graph.temb_range is not None:
        lo, hi = graph.temb_range
        cells = []
        for x in (0.0, 0.25, 0.5, 0.75, 1.0):
            col = viridis(x)
            cells.append(
                f'<td bgcolor="{col}"><font color="{_text_color(col)}" point-size="8">'
                f"{lo + (hi - lo) * x:.3g}</font></td>"
            )
        rows.append('<tr><td colspan="4"><font point-size="9">fill: temb ratio</font></td></tr>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = (
        '<<table border="0" cellborder="0" cellspacing="3" cellpadding="3">'
        + "".join(rows)
        + "</table>>"
    )
    g.node("legend", label=table, shape="box", style="rounded", color="#bbbbbb", tooltip="legend")


def diagram(
    trace: Any,
    detail: str = "blocks",
    direction: str = "TB",
    temb_step: int | None = None,
    shape: str = "u",
    legend: bool = True,
    edge_labels: bool = True,
    markers: bool = True,
) -> graphviz.Digraph:
    """The architecture diagram of ``trace`` as a ``graphviz.Digraph``.

    - ``detail``: ``"blocks"`` (one box per down/mid/up block), ``"layers"`` (blocks as
      clusters of their resnets, transformers and samplers) or ``"modules"`` (every submodule);
      not finer than the trace was captured at.
    - ``direction``: ``"TB"`` (a U: down path on the left, up path climbing the right) or
      ``"LR"`` (the U on its side).
    - ``temb_step``: fill every node by its mean temb ratio at that forward (viridis), the type
      colour moving to the border.
    - ``shape="flat"`` draws one straight pipeline instead of a U.
    - ``markers``: draw temb / text context as small local markers beside every block (or
      inside every cluster) with arrows to the resnets / cross-attentions they act in, rather
      than long arrows from one source node (the JSON export always has the full edges).

    A pure function of the trace: no torch, no model. Render with ``unetviz.render.export``.
    """
    graph = build_graph(trace, detail=detail, temb_step=temb_step)
    if graph.temb_step is not None:
        graph.meta["timesteps"] = list(field_of(trace, "timesteps", None) or [])
    return draw(
        graph,
        direction=direction,
        shape=shape,
        legend=legend,
        edge_labels=edge_labels,
        markers=markers,
    )
