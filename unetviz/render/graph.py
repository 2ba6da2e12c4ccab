"""The architecture graph of a Trace as plain data: nodes, clusters and edges.

Building the graph is separate from drawing it (as in torchview): :func:`build_graph` turns a
Trace into an :class:`ArchGraph`; ``diagram.py`` draws that with graphviz and ``export.py``
writes it as JSON. Everything here is pure Python on the Trace's records: no torch, no model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..names import UnknownNameError, unet_names

DETAILS = ("blocks", "layers", "modules")
_LEVELS = {
    "blocks": ("block",),
    "layers": ("block", "layer"),
    "modules": ("block", "layer", "module"),
}
EDGE_KINDS = ("data", "skip", "temb", "context")
_EMBEDDINGS = ("time_proj", "time_embedding", "class_embedding", "add_time_proj", "add_embedding")

#: ids of the nodes that stand for the UNet's inputs and output (not modules)
SAMPLE, TIMESTEP, CONTEXT, ADDED, TEMB, OUTPUT = (
    "sample",
    "timestep",
    "encoder_hidden_states",
    "added_cond_kwargs",
    "temb",
    "noise_pred",
)


def field_of(obj: Any, key: str, default: Any = None) -> Any:
    """``obj.key`` or ``obj[key]``: records may be dataclasses or plain dicts (loaded JSON)."""
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


@dataclass
class Node:
    """One box of the diagram (a module record, an input or the output)."""

    id: str
    name: str
    type: str
    kind: str  # "module" | "input" | "temb" | "output"
    level: str | None = None
    parent: str | None = None
    cluster: bool = False  # drawn as a cluster holding other nodes
    ldm: str | None = None
    a1111: str | None = None
    params: int | None = None
    macs: int | None = None
    calls: int | None = None
    time_ms: float | None = None
    dtype: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    composition: str | None = None  # "2x ResnetBlock2D, 2x Transformer2DModel (depth 10), ..."
    temb_ratio: float | None = None  # filled by build_graph(temb_step=...)


@dataclass
class Edge:
    """One arrow: ``kind`` is data / skip / temb / context; ``shape`` the tensor it carries."""

    source: str
    target: str
    kind: str
    shape: list[int] | None
    label: str = ""
    index: int | None = None  # skip-stack position for skip edges
    via: str | None = None  # the module the arrow stands for when drawn at a coarser detail


@dataclass
class ArchGraph:
    """Nodes (leaves and clusters) and edges of one diagram, plus facts for its title."""

    nodes: list[Node]
    edges: list[Edge]
    detail: str
    meta: dict[str, Any] = field(default_factory=dict)
    temb_step: int | None = None
    temb_range: tuple[float, float] | None = None  # the range of the nodes' fill values
    fill_label: str = "temb ratio"  # what the fill means (a sweep's score, ...)

    def node(self, node_id: str) -> Node:
        """The node with this id (KeyError if absent)."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def leaves(self) -> list[Node]:
        """Nodes drawn as boxes (not clusters)."""
        return [n for n in self.nodes if not n.cluster]

    def to_dict(self) -> dict[str, Any]:
        """``{"nodes": [...], "edges": [...], "detail", "meta"}``: the JSON export."""
        return {
            "detail": self.detail,
            "meta": {k: v for k, v in self.meta.items() if k != "config"},
            "temb_step": self.temb_step,
            "nodes": [asdict(n) for n in self.nodes],
            "edges": [asdict(e) for e in self.edges],
        }


def fmt_shape(shape: Any) -> str:
    """``[2, 320, 64, 64]`` -> ``(2,320,64,64)``."""
    if shape is None:
        return "?"
    if shape and isinstance(shape[0], (list, tuple)):
        return ", ".join(fmt_shape(s) for s in shape)
    return "(" + ",".join(str(int(d)) for d in shape) + ")"


def trace_detail(trace: Any) -> str:
    """The detail a trace was captured at (from ``meta["detail"]`` or its records' levels)."""
    detail = field_of(trace, "meta", {}).get("detail")
    if detail in DETAILS:
        return detail
    levels = {field_of(b, "level") for b in field_of(trace, "blocks", [])}
    return "modules" if "module" in levels else "layers" if "layer" in levels else "blocks"


def _config(trace: Any) -> dict[str, Any] | None:
    cfg = field_of(trace, "meta", {}).get("config")
    if cfg is not None and not isinstance(cfg, Mapping):
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return cfg


def _composition(name: str, cfg: Mapping[str, Any] | None, all_names: list[str]) -> str | None:
    """ "2x ResnetBlock2D, 2x Transformer2DModel (depth 10), Downsample2D" for a block."""
    if name in ("mid_block",) or name.startswith(("down_blocks.", "up_blocks.")):
        kids = [n for n in all_names if n.startswith(name + ".") and n.count(".") <= 3]
        res = sum(".resnets." in n for n in kids)
        att = sum(".attentions." in n for n in kids)
        parts = [f"{res}x ResnetBlock2D"] if res else []
        if att:
            depth = _depth(name, cfg)
            parts.append(f"{att}x Transformer2DModel" + (f" (depth {depth})" if depth else ""))
        if any(".downsamplers." in n for n in kids):
            parts.append("Downsample2D")
        if any(".upsamplers." in n for n in kids):
            parts.append("Upsample2D")
        return ", ".join(parts) or None
    return None


def _depth(name: str, cfg: Mapping[str, Any] | None) -> int | None:
    if not cfg:
        return None
    n = len(cfg.get("down_block_types") or ())
    tl = cfg.get("transformer_layers_per_block", 1)
    tl = list(tl) if isinstance(tl, (list, tuple)) else [tl] * n
    if not tl:
        return None
    if name == "mid_block":
        return int(tl[-1])
    i = int(name.split(".")[1])
    return int(tl[i] if name.startswith("down") else list(reversed(tl))[i])


def build_graph(
    trace: Any,
    detail: str = "blocks",
    temb_step: int | None = None,
) -> ArchGraph:
    """The diagram of ``trace`` at ``detail`` (blocks / layers / modules) as plain data.

    ``temb_step`` (a forward index) puts the mean temb ratio (temb RMS / feature RMS) of every
    node's resnets at that step in ``Node.temb_ratio``. Raises ValueError for an unknown detail,
    a detail finer than the trace was captured at, or a step the trace does not have.
    """
    if detail not in DETAILS:
        raise ValueError(f"unknown detail {detail!r}: expected one of {list(DETAILS)}")
    have = trace_detail(trace)
    if DETAILS.index(detail) > DETAILS.index(have):
        raise ValueError(
            f"this trace was captured at detail {have!r}; capture with detail={detail!r} "
            f"(or finer) to draw {detail}"
        )
    records = list(field_of(trace, "blocks", []))
    if not records:
        raise ValueError("the trace has no block records: nothing to draw")
    cfg = _config(trace)
    names = None
    if cfg:
        try:
            names = unet_names(cfg)
        except ValueError:
            names = None
    levels = _LEVELS[detail]
    shown = [r for r in records if field_of(r, "level") in levels]
    shown_names = {field_of(r, "name") for r in shown}

    def shown_parent(name: str) -> str | None:
        """Nearest shown ancestor by name (records' ``parent`` may be a ModuleList)."""
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in shown_names:
                return prefix
        return None

    parents = {shown_parent(field_of(r, "name")) for r in shown}
    # the config's layer names, for composition labels and temb/context targets
    layer_names = names.layer_names() if names else [field_of(r, "name") for r in records]

    def display(name: str) -> str | None:
        """The shown node standing for ``name``: itself or its nearest shown ancestor."""
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in shown_names:
                return prefix
        return None

    nodes: list[Node] = []
    for r in shown:
        name = field_of(r, "name")
        ldm = a1111 = None
        if names is not None:
            try:
                ldm, a1111 = names.ldm(name), names.a1111(name)
            except UnknownNameError:
                pass
        nodes.append(
            Node(
                id=name,
                name=name,
                type=field_of(r, "type", "?"),
                kind="module",
                level=field_of(r, "level"),
                parent=shown_parent(name),
                cluster=name in parents,
                ldm=ldm,
                a1111=a1111,
                params=field_of(r, "params"),
                macs=field_of(r, "macs"),
                calls=field_of(r, "calls"),
                time_ms=field_of(r, "time_ms"),
                dtype=field_of(r, "dtype"),
                inputs=dict(field_of(r, "inputs", {}) or {}),
                outputs=dict(field_of(r, "outputs", {}) or {}),
                composition=_composition(name, cfg, layer_names),
            )
        )
    by_id = {n.id: n for n in nodes}
    leaves = [n for n in nodes if not n.cluster]

    def out_shape(n: Node) -> list[int] | None:
        return n.outputs.get("sample")

    # ---- inputs and output
    first = next((n for n in leaves if n.name.split(".")[0] not in _EMBEDDINGS), None)
    conv_in = by_id.get("conv_in") or first
    sample_shape = conv_in.inputs.get("sample") if conv_in else None
    extra: list[Node] = [Node(SAMPLE, SAMPLE, "input", "input", outputs={"sample": sample_shape})]
    context_shape = None
    for r in records:
        ehs = (field_of(r, "inputs", {}) or {}).get("encoder_hidden_states")
        if ehs:
            context_shape = ehs
            break
    temb_shape = None
    for r in records:
        if field_of(r, "name") == "time_embedding":
            temb_shape = (field_of(r, "outputs", {}) or {}).get("sample")
        t = (field_of(r, "inputs", {}) or {}).get("temb")
        if temb_shape is None and t:
            temb_shape = t
    timestep_shape = None
    for r in records:
        if field_of(r, "name") == "time_proj":
            ins = field_of(r, "inputs", {}) or {}
            timestep_shape = ins.get("timestep", ins.get("sample"))

    edges: list[Edge] = []
    emb_leaves = [n for n in leaves if n.name.split(".")[0] in _EMBEDDINGS]
    main = [n for n in leaves if n.name.split(".")[0] not in _EMBEDDINGS]

    # ---- time embedding: timestep -> time_proj -> time_embedding -> temb (+ add_embedding)
    extra.append(Node(TIMESTEP, TIMESTEP, "input", "input", outputs={"sample": timestep_shape}))
    has_added = any(n.name.split(".")[0] in ("add_time_proj", "add_embedding") for n in emb_leaves)
    if has_added:
        extra.append(Node(ADDED, ADDED, "input", "input"))
    extra.append(Node(TEMB, TEMB, "temb", "temb", outputs={"sample": temb_shape}))
    for group, src in (
        (("time_proj", "time_embedding", "class_embedding"), TIMESTEP),
        (("add_time_proj", "add_embedding"), ADDED),
    ):
        chain = [n for n in emb_leaves if n.name.split(".")[0] in group]
        if not chain:
            continue
        prev: str = src
        prev_shape = timestep_shape if src == TIMESTEP else None
        for n in chain:
            if n.name.startswith("class_embedding"):
                continue
            edges.append(Edge(prev, n.id, "data", prev_shape, fmt_shape(prev_shape)))
            prev, prev_shape = n.id, out_shape(n)
        edges.append(Edge(prev, TEMB, "data", prev_shape, fmt_shape(prev_shape)))
    if any(n.name.startswith("class_embedding") for n in emb_leaves):
        for n in emb_leaves:
            if n.name.startswith("class_embedding"):
                edges.append(Edge(n.id, TEMB, "data", out_shape(n), fmt_shape(out_shape(n))))

    # ---- the main data path: leaves in call order
    prev_id, prev_shape = SAMPLE, sample_shape
    for n in main:
        edges.append(Edge(prev_id, n.id, "data", prev_shape, fmt_shape(prev_shape)))
        prev_id, prev_shape = n.id, out_shape(n)
    extra.append(Node(OUTPUT, OUTPUT, "output", "output", inputs={"sample": prev_shape}))
    edges.append(Edge(prev_id, OUTPUT, "data", prev_shape, fmt_shape(prev_shape)))

    # ---- skips: one arc per skip tensor, at every detail
    for s in sorted(field_of(trace, "skips", []), key=lambda s: field_of(s, "index")):
        idx, src, dst = field_of(s, "index"), field_of(s, "source"), field_of(s, "target")
        shape = list(field_of(s, "shape"))
        a, b = display(src), display(dst)
        if a is None or b is None:
            continue
        label = f"res[{idx}] {fmt_shape(shape)}"
        if b != dst:
            label += f" \u2192 {dst}"
        edges.append(Edge(a, b, "skip", shape, label, index=idx, via=dst if b != dst else None))

    # ---- temb acts in every resnet (its time_emb_proj); context in every attn2
    all_module_names = [field_of(r, "name") for r in records]
    resnets = [n for n in layer_names if ".resnets." in n and n.count(".") <= 3]
    if not resnets:  # no config: fall back to the trace's temb records
        resnets = list(dict.fromkeys(field_of(t, "block") for t in field_of(trace, "temb", [])))
    attn2 = list(field_of(trace, "attention", {}) or {})
    if not attn2:
        attn2 = [n for n in all_module_names if n.endswith(".attn2")]
    if not attn2:  # blocks-level trace: the config's transformers stand for their attn2s
        attn2 = [n for n in layer_names if ".attentions." in n and n.count(".") <= 3]
    seen: set[tuple[str, str]] = set()
    for kind, targets, src, shape in (
        ("temb", [n + ".time_emb_proj" for n in resnets], TEMB, temb_shape),
        ("context", attn2, CONTEXT, context_shape),
    ):
        if kind == "context" and targets:
            extra.append(
                Node(CONTEXT, CONTEXT, "input", "input", outputs={"sample": context_shape})
            )
        for t in targets:
            if detail == "modules" and kind == "context":
                tgt = [display(t + ".to_k"), display(t + ".to_v")]
            else:
                tgt = [display(t)]
            for d in tgt:
                if d is None or (src, d) in seen:
                    continue
                seen.add((src, d))
                edges.append(Edge(src, d, kind, shape, "", via=t if d != t else None))

    graph = ArchGraph(
        extra[:1] + nodes + extra[1:], edges, detail, meta=dict(field_of(trace, "meta", {}))
    )
    if temb_step is not None:
        _fill_temb(graph, trace, temb_step, display)
    return graph


def _fill_temb(graph: ArchGraph, trace: Any, step: int, display: Any) -> None:
    records = [t for t in field_of(trace, "temb", []) if field_of(t, "step") == step]
    if not records:
        steps = sorted({field_of(t, "step") for t in field_of(trace, "temb", [])})
        if not steps:
            raise ValueError("this trace has no temb records: capture with temb=True")
        raise ValueError(f"temb step {step} is not in this trace: steps {steps[0]}..{steps[-1]}")
    sums: dict[str, list[float]] = {}
    for t in records:
        d = display(field_of(t, "block"))
        ratio = field_of(t, "ratio")
        if d is not None and ratio is not None:
            sums.setdefault(d, []).append(float(ratio))
    by_id = {n.id: n for n in graph.nodes}
    for d, vals in sums.items():
        by_id[d].temb_ratio = sum(vals) / len(vals)
    # clusters (at layers detail) get the mean of their resnets too
    for n in graph.nodes:
        if n.cluster and n.temb_ratio is None:
            vals = [v for k, vs in sums.items() if k.startswith(n.id + ".") for v in vs]
            if vals:
                n.temb_ratio = sum(vals) / len(vals)
    ratios = [n.temb_ratio for n in graph.nodes if n.temb_ratio is not None]
    graph.temb_step = step
    graph.temb_range = (min(ratios), max(ratios)) if ratios else None
