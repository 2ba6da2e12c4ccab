"""plotly figures and browser-free PNG heatmaps from a Trace.

Every function is a pure function of a Trace (plus an optional image): no model, no hooks.
They are built to be re-run on every slider move of the app, so they keep figures small:
mosaics are one ``go.Heatmap`` rather than hundreds of subplots, and overlays place the image
once as a PNG and the heatmap at its native size on top.

- :func:`token_grid` — one heatmap per prompt token, optionally over the generated image.
- :func:`layer_token_grid` — cross-attention layers (rows) x tokens (columns), native maps.
- :func:`temb_heatmap`, :func:`temb_lines` — temb ratio per resnet / block across timesteps.
- :func:`attention_stats` — spatial entropy (or attention mass) per layer and token.
- :func:`heatmap_image`, :func:`heatmap_png` — a colour-mapped heatmap (over an image) as a
  PIL image / PNG bytes, with no browser (PIL + a plotly colorscale lookup table).
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go

from ..colors import colorscale as _colorscale
from ..colors import minmax, unit
from ..names import block_of, layer_order
from ..tokens import token_label
from .graph import field_of
from .heatmaps import (
    HeatmapError,
    _np,
    grey,
    heat_scales,
    image_array,
    layer_label,
    overlay,
    token_count,
    word_tokens,
)

#: The plotly colour scale of unetviz's one colour map (:mod:`unetviz.colors`).
COLORSCALE = _colorscale()

FONT = "DejaVu Sans, Arial, sans-serif"


# ---------------------------------------------------------------------------- helpers
def _image_uri(rgb: np.ndarray, max_side: int = 256) -> tuple[str, int, int]:
    """(JPEG data URI of the image shrunk to ``max_side``, its height, width): small enough
    to resend on every slider move."""
    from PIL import Image

    img = Image.fromarray(rgb)
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return uri, img.height, img.width


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array (for mosaics of maps of different sizes)."""
    rows = (np.arange(h) * a.shape[0] // h).clip(0, a.shape[0] - 1)
    cols = (np.arange(w) * a.shape[1] // w).clip(0, a.shape[1] - 1)
    return a[rows][:, cols]


def token_labels(trace: Any) -> list[str]:
    """Display labels of the trace's tokens (``cat</w>`` -> ``cat``), ``#i`` if unknown."""
    tokens = list(field_of(trace, "tokens", []) or [])
    if not tokens:
        n = token_count(trace)
        return [f"#{i}" for i in range(n)]
    return [token_label(t) for t in tokens]


def default_tokens(trace: Any, limit: int = 12) -> list[int]:
    """The prompt's word tokens (no ``<bos>``/``<eos>``/padding), at most ``limit``
    (:func:`unetviz.render.heatmaps.word_tokens`)."""
    return word_tokens(trace, limit)


def _tokens(trace: Any, tokens: Any) -> list[int]:
    if tokens is None:
        return default_tokens(trace)
    out = []
    for t in [tokens] if isinstance(tokens, (int, str)) else list(tokens):
        out.extend(trace.token_indices(t) if isinstance(t, str) else [int(t)])
    return out


def _captured_layers(trace: Any, layers: Any = None) -> list[str]:
    """Captured cross-attention layers (optionally those under ``layers``) in UNet order."""
    attn = field_of(trace, "attention", {}) or {}
    names = [n for n, r in attn.items() if getattr(r, "captured", True)]
    if layers is not None:
        wanted = [layers] if isinstance(layers, str) else list(layers)
        names = [n for n in names if any(n == w or n.startswith(w + ".") for w in wanted)]
    if not names:
        raise HeatmapError(
            "this trace holds no cross-attention maps"
            + (f" for layers {layers!r}" if layers is not None else "")
            + ": capture with attention=True"
        )
    return layer_order(names)


def layer_labels(trace: Any, names: list[str]) -> list[str]:
    """Readable labels of attn2 layers: ``IN04 · down_blocks.1.attentions.0 · 32×32``."""
    from ..names import unet_names

    cfg = (field_of(trace, "meta", {}) or {}).get("config")
    try:
        ids = unet_names(cfg) if cfg else None
    except ValueError:
        ids = None
    attn = field_of(trace, "attention", {}) or {}
    depth: dict[str, int] = {}
    for n in names:
        block = n.split(".transformer_blocks.")[0]
        depth[block] = depth.get(block, 0) + 1
    return [
        layer_label(
            n,
            field_of(attn.get(n), "res") if n in attn else None,
            ids,
            depth[n.split(".transformer_blocks.")[0]],
        )
        for n in names
    ]


def _label_rows(fig: go.Figure, labels: list[str]) -> None:
    """Label every row of a heatmap drawn at y = 0..n-1 (plotly would skip some), top down."""
    fig.update_yaxes(
        tickmode="array",
        tickvals=list(range(len(labels))),
        ticktext=labels,
        autorange="reversed",
        automargin=True,
    )


def _layout(fig: go.Figure, title: str | None, height: int | None = None) -> go.Figure:
    fig.update_layout(
        title=title,
        font={"family": FONT, "size": 12},
        margin={"l": 10, "r": 10, "t": 50 if title else 20, "b": 10},
        template="plotly_white",
    )
    if height:
        fig.update_layout(height=height)
    return fig


# ---------------------------------------------------------------------------- attention
def token_grid(
    trace: Any,
    tokens: Any = None,
    image: Any = None,
    cols: int = 4,
    opacity: float = 0.55,
    colorscale: Any = None,
    size: int | tuple[int, int] | None = None,
    title: str | None = "cross-attention per token",
    image_max_side: int = 256,
    scale: str = "shared",
    **heatmap_kwargs: Any,
) -> go.Figure:
    """One heatmap per token (``trace.heatmap``), in a grid of ``cols`` columns.

    ``tokens``: indices / words (default: the prompt's word tokens). ``image``: a PIL image or
    array; each heatmap is then drawn over a greyscale copy of it with ``opacity`` (sent as a
    JPEG of at most ``image_max_side`` px). ``size``: heatmap resolution (default: the
    trace's, e.g. 64x64). ``scale``: ``"shared"`` (one colour range and bar for all tokens, so
    they compare) or ``"per-token"``. Other keyword arguments (``layers``, ``resolutions``,
    ``steps``, ``heads``, ``preset``, ``normalize`` - default None: raw probabilities,
    ``upsample``) go to ``trace.heatmap``.
    """
    from plotly.subplots import make_subplots

    idx = _tokens(trace, tokens)
    if not idx:
        raise HeatmapError("no tokens to show")
    heatmap_kwargs.setdefault("normalize", None)
    labels = token_labels(trace)
    maps = [_np(trace.heatmap(i, size=size, **heatmap_kwargs)) for i in idx]
    scales = heat_scales(maps, scale)
    cols = max(1, min(cols, len(idx)))
    rows = math.ceil(len(idx) / cols)
    names = [f"{labels[i] if i < len(labels) else i} (#{i})" for i in idx]
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=names,
        horizontal_spacing=0.02,
        vertical_spacing=0.06 if rows > 1 else 0.0,
    )
    uri = None
    if image is not None:
        rgb = image_array(image)
        uri, ih, iw = _image_uri(grey(rgb, rgb.shape[:2]).astype(np.uint8), image_max_side)
    for k, m in enumerate(maps):
        r, c = k // cols + 1, k % cols + 1
        h, w = m.shape
        if uri is not None:
            fig.add_trace(go.Image(source=uri, hoverinfo="skip"), row=r, col=c)
            dy, dx = ih / h, iw / w
            heat = go.Heatmap(z=m, x0=dx / 2 - 0.5, dx=dx, y0=dy / 2 - 0.5, dy=dy, opacity=opacity)
        else:
            heat = go.Heatmap(z=m)
        heat.update(
            colorscale=colorscale or COLORSCALE,
            zmin=scales[k][0],
            zmax=scales[k][1],
            showscale=k == 0 and scale == "shared",
            colorbar={"thickness": 10, "len": 0.8},
            name=names[k],
            hovertemplate=names[k] + "<br>x=%{x:.0f} y=%{y:.0f}<br>%{z:.4g}<extra></extra>",
        )
        fig.add_trace(heat, row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    for k in range(1, len(maps)):  # every subplot keeps its own square aspect
        fig.layout[f"yaxis{k + 1}"].scaleanchor = f"x{k + 1}"
    return _layout(fig, title, height=80 + 230 * rows)


#: How :func:`layer_token_grid` puts its cells on colour scales.
GRID_SCALES = ("shared", "per-token", "per-cell")


def layer_token_grid(
    trace: Any,
    tokens: Any = None,
    layers: Any = None,
    steps: Any = None,
    cell: int = 24,
    colorscale: Any = None,
    title: str | None = "cross-attention: layers x tokens",
    scale: str = "shared",
) -> go.Figure:
    """A mosaic: one row per cross-attention layer in UNet order (down, mid, up; labelled
    ``IN04 · down_blocks.1.attentions.0 · 32×32``), one column per token, each cell that
    layer's raw map at native resolution (nearest-upsampled to ``cell`` px). ``scale``:
    ``"shared"`` (one range over every cell, with its colour bar), ``"per-token"`` (one per
    column) or ``"per-cell"`` (each cell min-max normalised). One ``go.Heatmap``, so it stays
    fast for 70 SDXL layers."""
    if scale not in GRID_SCALES:
        raise HeatmapError(f"scale={scale!r}: expected one of {list(GRID_SCALES)}")
    idx = _tokens(trace, tokens)
    names = _captured_layers(trace, layers)
    labels = token_labels(trace)
    gap = max(1, cell // 8)
    columns = [trace.layer_maps(t, layers=names, steps=steps) for t in idx]
    cells = [[_np(maps[n]) for n in names] for maps in columns]
    z, (lo, hi) = _grid_values(cells, cell, gap, scale)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            colorscale=colorscale or COLORSCALE,
            zmin=lo,
            zmax=hi,
            hovertemplate="%{z:.4g}<extra></extra>",
            colorbar={"thickness": 10, "title": {"text": "" if scale == "shared" else "scaled"}},
        )
    )
    fig.update_xaxes(
        tickvals=[c * (cell + gap) + cell / 2 for c in range(len(idx))],
        ticktext=[labels[i] if i < len(labels) else f"#{i}" for i in idx],
        side="top",
        showgrid=False,
    )
    fig.update_yaxes(
        tickmode="array",
        tickvals=[r * (cell + gap) + cell / 2 for r in range(len(names))],
        ticktext=layer_labels(trace, names),
        autorange="reversed",
        scaleanchor="x",
        showgrid=False,
    )
    height = min(4000, 120 + len(names) * (cell + gap) * 1.2)
    return _layout(fig, title, height=int(height))


def _grid_values(
    cells: list[list[np.ndarray]], cell: int, gap: int, scale: str
) -> tuple[np.ndarray, tuple[float, float]]:
    """The mosaic array (NaN gaps) of ``cells[token][layer]`` and its colour range."""
    n_tok, n_lay = len(cells), len(cells[0]) if cells else 0
    z = np.full((n_lay * (cell + gap) - gap, n_tok * (cell + gap) - gap), np.nan, np.float32)
    shared = heat_scales([m for col in cells for m in col], "shared")[0] if cells else (0, 1)
    for c, col in enumerate(cells):
        col_scale = heat_scales(col, "shared")[0]
        for r, m in enumerate(col):
            if scale == "per-cell":
                m = minmax(m)
            elif scale == "per-token":
                m = unit(m, *col_scale)
            y, x = r * (cell + gap), c * (cell + gap)
            z[y : y + cell, x : x + cell] = _resize(m, cell, cell)
    return z, (shared if scale == "shared" else (0.0, 1.0))


def _entropy(m: np.ndarray) -> float:
    p = np.clip(m.astype(np.float64).ravel(), 0, None)
    s = p.sum()
    if s <= 0 or p.size < 2:
        return float("nan")
    p = p / s
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(p.size))


def attention_stats(
    trace: Any,
    stat: str = "entropy",
    tokens: Any = None,
    layers: Any = None,
    steps: Any = None,
    colorscale: Any = None,
    title: str | None = None,
) -> go.Figure:
    """Layers (rows) x tokens (columns) heatmap of a per-map statistic:

    - ``"entropy"``: normalised spatial entropy of the token's map, in [0, 1] (1 = attention
      spread evenly over the image, low = concentrated on a region);
    - ``"mass"``: mean attention probability the token receives over all query positions
      (the softmax share; ``<bos>`` typically takes most of it).
    """
    if stat not in ("entropy", "mass"):
        raise HeatmapError(f"unknown stat {stat!r}: expected 'entropy' or 'mass'")
    idx = _tokens(trace, tokens)
    names = _captured_layers(trace, layers)
    labels = token_labels(trace)
    z = np.zeros((len(names), len(idx)), np.float32)
    for c, t in enumerate(idx):
        maps = trace.layer_maps(t, layers=names, steps=steps)
        for r, name in enumerate(names):
            m = _np(maps[name])
            z[r, c] = _entropy(m) if stat == "entropy" else float(m.mean())
    xs = [f"{labels[i] if i < len(labels) else i} #{i}" for i in idx]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=xs,
            colorscale=colorscale or COLORSCALE,
            zmin=0 if stat == "entropy" else None,
            zmax=1 if stat == "entropy" else None,
            customdata=np.array(names)[:, None].repeat(len(idx), 1),
            hovertemplate="%{customdata}<br>token %{x}<br>" + stat + " %{z:.3f}<extra></extra>",
            colorbar={"thickness": 10, "title": {"text": stat}},
        )
    )
    _label_rows(fig, layer_labels(trace, names))
    fig.update_xaxes(side="top")
    default = "spatial entropy per layer and token" if stat == "entropy" else "attention mass"
    return _layout(fig, title or default, height=int(150 + 22 * len(names)))


def attention_entropy(trace: Any, **kwargs: Any) -> go.Figure:
    """:func:`attention_stats` with ``stat="entropy"``."""
    return attention_stats(trace, stat="entropy", **kwargs)


# ---------------------------------------------------------------------------- temb
def temb_table(trace: Any, by: str = "layer") -> tuple[list[str], list[int], np.ndarray]:
    """(row names, steps, ratio array rows x steps) of the trace's temb records. ``by``:
    ``"layer"`` (one row per ResnetBlock2D, forward order) or ``"block"`` (mean per
    down/mid/up block)."""
    if by not in ("layer", "block"):
        raise HeatmapError(f"unknown by={by!r}: expected 'layer' or 'block'")
    records = list(field_of(trace, "temb", []) or [])
    if not records:
        raise HeatmapError("this trace has no temb records: capture with temb=True")
    steps = sorted({int(field_of(r, "step")) for r in records})
    col = {s: i for i, s in enumerate(steps)}

    def key(name: str) -> str:
        return name if by == "layer" else block_of(name)

    rows: list[str] = []
    for r in records:
        k = key(field_of(r, "block"))
        if k not in rows:
            rows.append(k)
    row = {k: i for i, k in enumerate(rows)}
    total = np.zeros((len(rows), len(steps)), np.float64)
    count = np.zeros_like(total)
    for r in records:
        i, j = row[key(field_of(r, "block"))], col[int(field_of(r, "step"))]
        ratio = field_of(r, "ratio")
        if ratio is not None and math.isfinite(ratio):
            total[i, j] += ratio
            count[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return rows, steps, z.astype(np.float32)


def _step_labels(trace: Any, steps: list[int]) -> list[str]:
    ts = list(field_of(trace, "timesteps", []) or [])
    out = []
    for s in steps:
        t = ts[s] if s < len(ts) else None
        out.append(f"{s}: t={t:g}" if isinstance(t, (int, float)) else str(s))
    return out


def temb_heatmap(
    trace: Any,
    by: str = "layer",
    colorscale: Any = None,
    log: bool = False,
    title: str | None = "temb ratio (RMS of time_emb_proj / RMS of conv1 output)",
) -> go.Figure:
    """Resnets (or blocks with ``by="block"``) x timesteps heatmap of the temb ratio: how big
    the time embedding added in each ResnetBlock2D is next to the feature map it is added to.
    ``log`` colours log10(ratio)."""
    rows, steps, z = temb_table(trace, by=by)
    shown = np.log10(np.clip(z, 1e-12, None)) if log else z
    fig = go.Figure(
        go.Heatmap(
            z=shown,
            x=_step_labels(trace, steps),
            customdata=np.stack([z, np.array(rows, object)[:, None].repeat(z.shape[1], 1)], -1),
            colorscale=colorscale or COLORSCALE,
            hovertemplate="%{customdata[1]}<br>step %{x}<br>ratio %{customdata[0]:.4g}"
            "<extra></extra>",
            colorbar={"thickness": 10, "title": {"text": "log10 ratio" if log else "ratio"}},
        )
    )
    _label_rows(fig, rows)
    fig.update_xaxes(title="step: timestep")
    return _layout(fig, title, height=int(160 + 18 * len(rows)))


#: one distinct colour per line for up to 24 lines (plotly's default cycle repeats after 10:
#: SD 1.5's 11 up/down resnets shared a colour)
LINE_COLOURS: tuple[str, ...] = tuple(pc.qualitative.Dark24)


def temb_lines(
    trace: Any,
    by: str = "block",
    x: str = "timestep",
    log: bool = True,
    title: str | None = "temb ratio across the sampling run",
) -> go.Figure:
    """One line per block (or resnet with ``by="layer"``) of the temb ratio against the
    timestep (``x="timestep"``, noisy on the left as sampling runs) or the step index."""
    if x not in ("timestep", "step"):
        raise HeatmapError(f"unknown x={x!r}: expected 'timestep' or 'step'")
    rows, steps, z = temb_table(trace, by=by)
    ts = list(field_of(trace, "timesteps", []) or [])
    if x == "timestep" and all(s < len(ts) and ts[s] is not None for s in steps):
        xs = [ts[s] for s in steps]
        xtitle = "timestep"
    else:
        xs, xtitle = steps, "step"
    fig = go.Figure()
    for i, name in enumerate(rows):
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=z[i],
                mode="lines+markers" if len(xs) < 30 else "lines",
                name=name,
                line={"color": LINE_COLOURS[i % len(LINE_COLOURS)]},
                hovertemplate=name + "<br>" + xtitle + " %{x}<br>ratio %{y:.4g}<extra></extra>",
            )
        )
    fig.update_xaxes(title=xtitle, autorange="reversed" if xtitle == "timestep" else None)
    fig.update_yaxes(title="temb ratio", type="log" if log else "linear")
    return _layout(fig, title, height=420)


# ---------------------------------------------------------------------------- static PNG
def heatmap_image(
    heatmap: Any,
    image: Any = None,
    size: int | tuple[int, int] | None = None,
    alpha: float = 0.6,
    normalize: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Any:
    """A colour-mapped heatmap as a PIL RGB image of ``size`` ((H, W) or side; default the
    image's size, else the map's), over a greyscale copy of ``image`` with ``alpha``
    (:func:`unetviz.render.heatmaps.overlay`). The scale is ``vmin``..``vmax`` if given, else
    the map's own range (``normalize``) or 0..1. No browser."""
    if vmin is None or vmax is None:
        vmin, vmax = (None, None) if normalize else (0.0, 1.0)
    if image is None:
        return overlay(heatmap, None, vmin, vmax, size=size, opacity=1.0)
    return overlay(heatmap, image, vmin, vmax, size=size, opacity=alpha)


def heatmap_png(heatmap: Any, image: Any = None, **kwargs: Any) -> bytes:
    """PNG bytes of :func:`heatmap_image`."""
    buf = io.BytesIO()
    heatmap_image(heatmap, image=image, **kwargs).save(buf, format="PNG")
    return buf.getvalue()
