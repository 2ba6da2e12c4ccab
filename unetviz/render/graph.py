"""The architecture graph of a Trace as plain data: nodes, clusters and edges.

Building the graph is separate from drawing it (as in torchview): :func:`build_graph` turns a
Trace into an :class:`ArchGraph`; ``diagram.py`` draws that with graphviz and ``export.py``
writes it as JSON. Everything here is pure Python on the Trace's records: no torch, no model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..capture.options import DETAILS
from ..errors import UnetvizError
from ..names import UnknownNameError, unet_names

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


def _depth(name: str, cfg: Mapping[str, Any] | None) -> str | None:
    if not cfg:
        return None
    n = len(cfg.get("down_block_types") or ())
    tl = cfg.get("transformer_layers_per_block", 1)
    tl = list(tl) if isinstance(tl, (list, tuple)) else [tl] * n
    if not tl:
        return None
    up = cfg.get("reverse_transformer_layers_per_block") or list(reversed(tl))
    i = 0 if name == "mid_block" else int(name.split(".")[1])
    depth = tl[-1] if name == "mid_block" else tl[i] if name.startswith("down") else up[i]
    if isinstance(depth, (list, tuple)):  # per-layer depths (SSD-1B: up_blocks.0 4/4/10)
        depth = depth[:1] if name == "mid_block" else depth
        return "/".join(map(str, depth)) if len(set(depth)) > 1 else str(depth[0])
    return str(int(depth))


class GraphError(UnetvizError):
    """A diagram the trace cannot give: unknown or too fine a detail, no records, no step."""


def _check_detail(trace: Any, detail: str) -> None:
    if detail not in DETAILS:
        raise GraphError(f"unknown detail {detail!r}: expected one of {list(DETAILS)}")
    have = trace_detail(trace)
    if DETAILS.index(detail) > DETAILS.index(have):
        raise GraphError(
            f"this trace was captured at detail {have!r}; capture with detail={detail!r} "
            f"(or finer) to draw {detail}"
        )


@dataclass
class _Builder:
    """The phases of :func:`build_graph`, sharing the trace's records and names."""

    trace: Any
    detail: str
    records: list[Any]
    shown: list[Any]
    shown_names: set[str]
    cfg: dict[str, Any] | None
    names: Any  # UNetNames | None
    nodes: list[Node] = field(default_factory=list)
    extra: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    @classmethod
    def of(cls, trace: Any, detail: str) -> _Builder:
        records = list(field_of(trace, "blocks", []))
        if not records:
            raise GraphError("the trace has no block records: nothing to draw")
        cfg = _config(trace)
        names = None
        if cfg:
            try:
                names = unet_names(cfg)
            except ValueError:
                names = None
        shown = [r for r in records if field_of(r, "level") in _LEVELS[detail]]
        shown_names = {field_of(r, "name") for r in shown}
        return cls(trace, detail, records, shown, shown_names, cfg, names)

    @property
    def layer_names(self) -> list[str]:
        """The config's layer names (the trace's record names without a config)."""
        if self.names is not None:
            return self.names.layer_names()
        return [field_of(r, "name") for r in self.records]

    def display(self, name: str, strict: bool = False) -> str | None:
        """The shown node standing for ``name``: itself (unless ``strict``) or its nearest
        shown ancestor (records' ``parent`` may be a ModuleList)."""
        parts = name.split(".")
        for cut in range(len(parts) - (1 if strict else 0), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in self.shown_names:
                return prefix
        return None

    def module_nodes(self) -> None:
        """One node per shown record, with names, counts, shapes and composition."""
        parents = {self.display(field_of(r, "name"), strict=True) for r in self.shown}
        layer_names = self.layer_names
        for r in self.shown:
            name = field_of(r, "name")
            ldm = a1111 = None
            if self.names is not None:
                try:
                    ldm, a1111 = self.names.ldm(name), self.names.a1111(name)
                except UnknownNameError:
                    pass
            self.nodes.append(
                Node(
                    id=name,
                    name=name,
                    type=field_of(r, "type", "?"),
                    kind="module",
                    level=field_of(r, "level"),
                    parent=self.display(name, strict=True),
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
                    composition=_composition(name, self.cfg, layer_names),
                )
            )

    def _input_of(self, key: str) -> Any:
        """The first record input named ``key`` (its shape), or None."""
        for r in self.records:
            value = (field_of(r, "inputs", {}) or {}).get(key)
            if value:
                return value
        return None

    def embedding_path(self, leaves: list[Node]) -> Any:
        """timestep -> time_proj -> time_embedding -> temb (+ added conditions, class
        embedding); returns temb's shape."""
        timestep_shape = temb_shape = None
        for r in self.records:
            ins = field_of(r, "inputs", {}) or {}
            if field_of(r, "name") == "time_embedding":
                temb_shape = (field_of(r, "outputs", {}) or {}).get("sample")
            if field_of(r, "name") == "time_proj":
                timestep_shape = ins.get("timestep", ins.get("sample"))
        temb_shape = temb_shape or self._input_of("temb")
        emb = [n for n in leaves if n.name.split(".")[0] in _EMBEDDINGS]
        self.extra.append(
            Node(TIMESTEP, TIMESTEP, "input", "input", outputs={"sample": timestep_shape})
        )
        if any(n.name.split(".")[0] in ("add_time_proj", "add_embedding") for n in emb):
            self.extra.append(Node(ADDED, ADDED, "input", "input"))
        self.extra.append(Node(TEMB, TEMB, "temb", "temb", outputs={"sample": temb_shape}))
        for group, src in (
            (("time_proj", "time_embedding", "class_embedding"), TIMESTEP),
            (("add_time_proj", "add_embedding"), ADDED),
        ):
            chain = [n for n in emb if n.name.split(".")[0] in group]
            if chain:
                self._chain(chain, src, timestep_shape if src == TIMESTEP else None)
        for n in emb:
            if n.name.startswith("class_embedding"):
                self.edges.append(Edge(n.id, TEMB, "data", _out(n), fmt_shape(_out(n))))
        return temb_shape

    def _chain(self, chain: list[Node], src: str, shape: Any) -> None:
        prev = src
        for n in chain:
            if n.name.startswith("class_embedding"):
                continue
            self.edges.append(Edge(prev, n.id, "data", shape, fmt_shape(shape)))
            prev, shape = n.id, _out(n)
        self.edges.append(Edge(prev, TEMB, "data", shape, fmt_shape(shape)))

    def main_path(self, main: list[Node], sample_shape: Any) -> None:
        """The data path through the leaves in call order, from the sample to the output."""
        prev_id, prev_shape = SAMPLE, sample_shape
        for n in main:
            self.edges.append(Edge(prev_id, n.id, "data", prev_shape, fmt_shape(prev_shape)))
            prev_id, prev_shape = n.id, _out(n)
        self.extra.append(Node(OUTPUT, OUTPUT, "output", "output", inputs={"sample": prev_shape}))
        self.edges.append(Edge(prev_id, OUTPUT, "data", prev_shape, fmt_shape(prev_shape)))

    def skip_edges(self) -> None:
        """One arc per skip tensor, at every detail, between the shown nodes holding its ends."""
        skips = sorted(field_of(self.trace, "skips", []), key=lambda s: field_of(s, "index"))
        for s in skips:
            idx, src, dst = field_of(s, "index"), field_of(s, "source"), field_of(s, "target")
            shape = list(field_of(s, "shape"))
            a, b = self.display(src), self.display(dst)
            if a is None or b is None:
                continue
            label = f"res[{idx}] {fmt_shape(shape)}"
            if b != dst:
                label += f" \u2192 {dst}"
            via = dst if b != dst else None
            self.edges.append(Edge(a, b, "skip", shape, label, index=idx, via=via))

    def marker_edges(self, temb_shape: Any) -> None:
        """temb acts in every resnet (its time_emb_proj); the text context in every attn2."""
        layer_names = self.layer_names
        resnets = [n for n in layer_names if ".resnets." in n and n.count(".") <= 3]
        if not resnets:  # no config: fall back to the trace's temb records
            temb = field_of(self.trace, "temb", [])
            resnets = list(dict.fromkeys(field_of(t, "block") for t in temb))
        attn2 = list(field_of(self.trace, "attention", {}) or {})
        if not attn2:
            attn2 = [field_of(r, "name") for r in self.records]
            attn2 = [n for n in attn2 if n.endswith(".attn2")]
        if not attn2:  # blocks-level trace: the config's transformers stand for their attn2s
            attn2 = [n for n in layer_names if ".attentions." in n and n.count(".") <= 3]
        context_shape = self._input_of("encoder_hidden_states")
        if attn2:
            self.extra.append(
                Node(CONTEXT, CONTEXT, "input", "input", outputs={"sample": context_shape})
            )
        seen: set[tuple[str, str]] = set()
        for kind, targets, src, shape in (
            ("temb", [n + ".time_emb_proj" for n in resnets], TEMB, temb_shape),
            ("context", attn2, CONTEXT, context_shape),
        ):
            for t in targets:
                if self.detail == "modules" and kind == "context":
                    shown = [self.display(t + ".to_k"), self.display(t + ".to_v")]
                else:
                    shown = [self.display(t)]
                for d in shown:
                    if d is not None and (src, d) not in seen:
                        seen.add((src, d))
                        self.edges.append(Edge(src, d, kind, shape, "", via=t if d != t else None))


def _out(n: Node) -> Any:
    return n.outputs.get("sample")


def build_graph(
    trace: Any,
    detail: str = "blocks",
    temb_step: int | None = None,
    fill: Mapping[str, float] | None = None,
    fill_label: str = "value",
) -> ArchGraph:
    """The diagram of ``trace`` at ``detail`` (blocks / layers / modules) as plain data.

    ``temb_step`` (a forward index) puts the mean temb ratio (temb RMS / feature RMS) of every
    node's resnets at that step in ``Node.temb_ratio`` (the node's fill value). ``fill``
    (node id -> value, e.g. a sweep's effect per block) fills those nodes instead, named
    ``fill_label`` in the legend and title. Raises GraphError (a UnetvizError) for
    an unknown detail, a detail finer than the trace was captured at, or a step the trace does
    not have.
    """
    _check_detail(trace, detail)
    b = _Builder.of(trace, detail)
    b.module_nodes()
    leaves = [n for n in b.nodes if not n.cluster]
    main = [n for n in leaves if n.name.split(".")[0] not in _EMBEDDINGS]
    conv_in = next((n for n in b.nodes if n.id == "conv_in"), main[0] if main else None)
    sample_shape = conv_in.inputs.get("sample") if conv_in else None
    b.extra.append(Node(SAMPLE, SAMPLE, "input", "input", outputs={"sample": sample_shape}))
    temb_shape = b.embedding_path(leaves)
    b.main_path(main, sample_shape)
    b.skip_edges()
    b.marker_edges(temb_shape)
    meta = dict(field_of(trace, "meta", {}))
    graph = ArchGraph(b.extra[:1] + b.nodes + b.extra[1:], b.edges, detail, meta=meta)
    if temb_step is not None:
        _fill_temb(graph, trace, temb_step, b.display)
    elif fill:
        _fill_values(graph, fill, fill_label)
    return graph


def _fill_values(graph: ArchGraph, fill: Mapping[str, float], label: str) -> None:
    """Fill the nodes named in ``fill`` with their values (unknown ids are ignored)."""
    by_id = {n.id: n for n in graph.nodes}
    shown = {k: float(v) for k, v in fill.items() if k in by_id}
    for key, value in shown.items():
        by_id[key].temb_ratio = value
    graph.temb_range = (min(shown.values()), max(shown.values())) if shown else None
    graph.fill_label = label


def _fill_temb(graph: ArchGraph, trace: Any, step: int, display: Any) -> None:
    records = [t for t in field_of(trace, "temb", []) if field_of(t, "step") == step]
    if not records:
        steps = sorted({field_of(t, "step") for t in field_of(trace, "temb", [])})
        if not steps:
            raise GraphError("this trace has no temb records: capture with temb=True")
        raise GraphError(f"temb step {step} is not in this trace: steps {steps[0]}..{steps[-1]}")
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
