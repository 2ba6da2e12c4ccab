"""The summary table of a UNet (block, type, in -> out, params, MACs, LDM key, A1111 label):
one set of rows shown by ``unetviz summary`` as text and by the app as its block table."""

from __future__ import annotations

from typing import Any

from .diagram import human, human_params
from .graph import build_graph, field_of, fmt_shape

SUMMARY_HEADERS = ["block", "type", "in \u2192 out", "params", "MACs", "LDM key", "A1111"]
_RIGHT = {3, 4}  # right-aligned columns in text


def _in_out(inputs: dict[str, Any], outputs: dict[str, Any]) -> str:
    """``(2,4,64,64) → (2,320,64,64)``: the main input (sample, hidden states or timestep)
    and output of a module; only the output when it has no tensor input."""
    ins = next(
        (inputs[k] for k in ("sample", "hidden_states", "timestep") if inputs.get(k)),
        next(iter(inputs.values()), None),
    )
    outs = outputs.get("sample") or next(iter(outputs.values()), None)
    if not ins:
        return fmt_shape(outs) if outs else "-"
    return f"{fmt_shape(ins)} \u2192 {fmt_shape(outs) if outs else '-'}"


def summary_rows(
    trace: Any, detail: str = "blocks", indent: bool = False, exact: bool = False
) -> list[list[str]]:
    """One row per module shown at ``detail`` (columns :data:`SUMMARY_HEADERS`). ``indent``
    indents layers under their block; ``exact`` writes params as ``1,234,567`` not ``1.23M``."""
    graph = build_graph(trace, detail=detail)
    rows = []
    for n in graph.nodes:
        if n.kind != "module":
            continue
        params = "-" if n.params is None else f"{n.params:,}" if exact else human_params(n.params)
        rows.append(
            [
                ("  " if indent and n.level == "layer" else "") + n.name,
                n.type,
                _in_out(n.inputs, n.outputs),
                params,
                human(n.macs) if n.macs else "-",
                n.ldm or "-",
                n.a1111 or "-",
            ]
        )
    return rows


def summary_total(trace: Any, detail: str = "blocks") -> list[str]:
    """The total row: params and MACs summed over the top-level blocks."""
    graph = build_graph(trace, detail=detail)
    top = [n for n in graph.nodes if n.kind == "module" and n.level == "block"]
    params = human_params(sum(n.params or 0 for n in top))
    return ["total", "", "", params, human(sum(n.macs or 0 for n in top)), "", ""]


def summary_text(trace: Any, detail: str = "blocks") -> str:
    """The ``unetviz summary`` table as aligned text with a one-line header."""
    rows = [
        SUMMARY_HEADERS,
        *summary_rows(trace, detail, indent=True),
        summary_total(trace, detail),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(SUMMARY_HEADERS))]
    meta = dict(field_of(trace, "meta", {}) or {})
    lines = [
        f"{meta.get('model') or 'UNet'}: {meta.get('width')}x{meta.get('height')} px, "
        f"batch {meta.get('batch')}, MACs per forward"
    ]
    for i, r in enumerate(rows):
        cells = [c.rjust(widths[j]) if j in _RIGHT else c.ljust(widths[j]) for j, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
