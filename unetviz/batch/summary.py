"""The headline plots of a batch table and the self-contained ``summary.html``.

Localisation is mIoU against the masks where the table has masks, else concentration
(1 - normalised spatial entropy). Function words (a, the, on, ...) are left out of the
plots: their maps do not name a region.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from unetviz.names import layer_order
from unetviz.names import short_layer as _short
from unetviz.outputs import write_file

from .stats import AGGREGATES, DAAM


def short_layer(name: str) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` -> ``down1.a0.t0``."""
    return {DAAM: "DAAM (all)", "daam-approx": "DAAM-approx (all)"}.get(name) or _short(name)


def _frame(table: Any) -> tuple[Any, str, str]:
    """(pandas frame without function words, metric column, metric label)."""
    df = table.to_pandas() if hasattr(table, "to_pandas") else table
    df = df[df["word_class"] != "function"]
    if len(df) and df["has_mask"].any():
        return df[df["has_mask"]], "iou", "mIoU (tau 0.4)"
    return df, "concentration", "concentration (1 - entropy)"


def _layer_time(layers: Any, metric: str, label: str) -> Any:
    """Heatmaps of the metric by layer (rows, UNet order) x step bucket (columns), one panel
    per word class (the three most frequent), sharing one colour scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    classes = list(layers["word_class"].value_counts().index[:3])
    order = layer_order(list(layers["layer"].unique()))
    res = layers.groupby("layer")["resolution"].first()
    ylabels = [f"{short_layer(n)} ({res[n]}px)" for n in order]
    spans = layers.groupby("bucket")[["t_hi", "t_lo"]].first()
    zmin, zmax = None, None
    grids = []
    for cls in classes:
        sub = layers[layers["word_class"] == cls]
        grid = sub.groupby(["layer", "bucket"])[metric].mean().unstack("bucket").reindex(order)
        grids.append(grid)
        lo, hi = float(grid.min().min()), float(grid.max().max())
        zmin = lo if zmin is None else min(zmin, lo)
        zmax = hi if zmax is None else max(zmax, hi)
    fig = make_subplots(
        rows=1, cols=max(1, len(classes)), shared_yaxes=True, subplot_titles=classes,
        horizontal_spacing=0.03,
    )  # fmt: skip
    for i, grid in enumerate(grids):
        x = [f"t {spans.loc[b, 't_hi']:.0f}-{spans.loc[b, 't_lo']:.0f}" for b in grid.columns]
        fig.add_trace(
            go.Heatmap(
                z=grid.values, x=x, y=ylabels, zmin=zmin, zmax=zmax, colorscale="Viridis",
                colorbar={"title": label}, showscale=i == 0,
            ),
            row=1,
            col=i + 1,
        )  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=f"Localisation by layer x timestep ({label}; noisiest steps left)", height=400
    )
    return fig


def figures(table: Any) -> dict[str, Any]:
    """``{"layer_time", "resolution", "word_class"}`` plotly figures of a batch table."""
    import plotly.graph_objects as go

    df, metric, label = _frame(table)
    layers = df[~df["layer"].isin(AGGREGATES)]
    out: dict[str, Any] = {"layer_time": _layer_time(layers, metric, label)}

    by_res = layers.groupby(["resolution", "word_class"])[metric].mean().unstack("word_class")
    fig = go.Figure(
        [go.Bar(name=c, x=[f"{r}x{r}" for r in by_res.index], y=by_res[c]) for c in by_res]
    )
    fig.update_layout(
        title=f"Localisation by map resolution ({label})", barmode="group", height=340
    )
    out["resolution"] = fig

    agg = df["layer"].isin(AGGREGATES)
    df = df.assign(place=df["location"].where(~agg, df["layer"].map(short_layer)))
    by_class = df.groupby(["word_class", "place"])[metric].mean().unstack("place")
    cols = layer_order(list(by_class.columns))
    fig = go.Figure([go.Bar(name=c, x=list(by_class.index), y=by_class[c]) for c in cols])
    fig.update_layout(title=f"Localisation by word class ({label})", barmode="group", height=340)
    out["word_class"] = fig
    return out


def headline(table: Any, prompts: Any) -> list[tuple[str, str]]:
    """A few numbers for the top of the summary."""
    p = prompts.to_pandas() if hasattr(prompts, "to_pandas") else prompts
    df, metric, label = _frame(table)
    ok = int((p["status"] == "ok").sum()) if len(p) else 0
    rows = [
        ("prompts", f"{len(p)} ({ok} ok, {len(p) - ok} failed)"),
        ("rows", f"{len(table)}"),
        ("metric", label),
    ]
    for recipe in AGGREGATES:
        daam = df[df["layer"] == recipe]
        for cls, v in daam.groupby("word_class")[metric].mean().items():
            rows.append((f"{short_layer(recipe)} {metric}, {cls}", f"{v:.3f}"))
    layers = df[~df["layer"].isin(AGGREGATES)]
    if len(layers):
        best = layers.groupby("layer")[metric].mean().idxmax()
        rows.append(("best single layer", f"{short_layer(best)} ({best})"))
    return rows


def summary_html(table: Any, prompts: Any) -> str:
    """One HTML page: headline numbers, the three figures (plotly.js embedded once, no CDN),
    and the failed prompts with their errors."""
    parts = ["<h1>unetviz batch summary</h1>", "<table>"]
    for k, v in headline(table, prompts):
        parts.append(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>")
    parts.append("</table>")
    if len(table):
        for i, fig in enumerate(figures(table).values()):
            parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0))
    p = prompts.to_pandas() if hasattr(prompts, "to_pandas") else prompts
    bad = p[p["status"] != "ok"] if len(p) else p
    if len(bad):
        parts.append("<h2>Failed prompts</h2><table>")
        for _, r in bad.iterrows():
            parts.append(
                f"<tr><td>{int(r['row'])}</td><td>{html.escape(str(r['prompt']))}</td>"
                f"<td>{html.escape(str(r['error']))}</td></tr>"
            )
        parts.append("</table>")
    style = "body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}"
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>unetviz batch</title>'
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def write_summary(path: Path, table: Any, prompts: Any) -> Path:
    """Write ``summary.html`` atomically."""
    return write_file(path, summary_html(table, prompts))
