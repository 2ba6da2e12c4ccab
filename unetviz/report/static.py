"""Plotly figures as static SVG, with no browser, no kaleido and no plotly.js.

Where plotly's JavaScript is absent (GitHub's notebook viewer, a notebook opened offline
without the plotly extension, the HTML report) a figure must still show. :func:`figure_svg`
draws the figures unetviz's render module makes - heatmaps (as embedded PNGs), images, line and
marker scatters, subplot grids, titles, annotations, categorical / numeric / log axes,
colour bars and legends - from the figure's dict. It is a faithful sketch, not plotly: hover,
zoom and exotic trace types are out of scope (other trace types are skipped and named in a
note under the plot).

``enable_static_plots()`` registers the ``"unetviz_static"`` plotly renderer and makes the
default renderer ``plotly_mimetype+unetviz_static``: every figure displayed in a notebook then
carries both the interactive plotly JSON and this SVG, and each frontend shows what it can.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import colors

FONT = "DejaVu Sans, Arial, sans-serif"
COLORWAY = "#636efa #EF553B #00cc96 #ab63fa #FFA15A #19d3f3 #FF6692 #B6E880 #FF97FF #FECB52".split()
RENDERER = "unetviz_static"
_TAG = re.compile(r"<[^>]+>")


# ---------------------------------------------------------------------------- data
def _arr(value: Any) -> np.ndarray | None:
    """A numpy array from a list, an array or plotly's typed-array dict (``bdata``)."""
    if value is None:
        return None
    if isinstance(value, dict) and "bdata" in value:
        a = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            dims = shape if isinstance(shape, (list, tuple)) else str(shape).split(",")
            a = a.reshape([int(s) for s in dims])
        return a
    return np.asarray(value, dtype=object if _is_text(value) else None)


def _is_text(value: Any) -> bool:
    try:
        return any(isinstance(v, str) for v in value)
    except TypeError:
        return False


def _text(value: Any) -> str:
    """Plain, escaped text (plotly's ``<br>``/``<b>`` markup stripped)."""
    if isinstance(value, dict):
        value = value.get("text")
    return html.escape(_TAG.sub(" ", str(value or "")).strip())


@dataclass
class _Axis:
    """One subplot axis: data range, direction, scale and (value, label) categories."""

    lo: float
    hi: float
    reversed: bool = False
    log: bool = False
    categories: list[tuple[float, str]] = field(default_factory=list)
    visible: bool = True
    title: str = ""
    upright: bool = False  # category labels drawn vertically (set by figure_svg)

    def to(self, v: float, p0: float, p1: float) -> float:
        v = math.log10(v) if self.log and v > 0 else v
        a, b = (self.hi, self.lo) if self.reversed else (self.lo, self.hi)
        return p0 + (v - a) / ((b - a) or 1.0) * (p1 - p0)


# ---------------------------------------------------------------------------- figure
def figure_svg(fig: Any, width: int | None = None, height: int | None = None) -> str:
    """SVG text of a plotly ``Figure`` (or its dict)."""
    d = fig.to_dict() if hasattr(fig, "to_dict") else dict(fig)
    layout = d.get("layout", {}) or {}
    traces = [t for t in d.get("data", []) or [] if t.get("visible", True) is not False]
    w = int(width or layout.get("width") or 760)
    h = int(height or layout.get("height") or 450)
    margin = layout.get("margin", {}) or {}
    left, right = int(margin.get("l", 60)), int(margin.get("r", 30))
    top, bottom = int(margin.get("t", 50)), int(margin.get("b", 30))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in traces:
        groups.setdefault((t.get("xaxis", "x"), t.get("yaxis", "y")), []).append(t)
    axes = {key: _axes(layout, key, ts) for key, ts in groups.items()}
    right += _right_room(traces)
    left += max((_label_room(ay) for _, ay in axes.values()), default=0)
    bottom += 36 if any(ax.visible for ax, _ in axes.values()) else 0
    for ax, _ in axes.values():  # categories too many to read side by side: turned upright
        ax.upright = ax.visible and _needs_upright(ax, w - left - right)
    bottom += max((_upright_room(ax) for ax, _ in axes.values() if ax.upright), default=0)
    body: list[str] = []
    skipped: set[str] = set()
    for (xk, yk), ts in groups.items():
        ax, ay = axes[(xk, yk)]
        box = _box(layout, xk, yk, (left, top, w - right, h - bottom), ax, ay)
        body += _plot(ts, ax, ay, box, skipped)
        body += _axis_labels(ax, ay, box)
    body += _annotations(layout, (left, top, w - right, h - bottom))
    body += _legend_and_bar(traces, w - right + 12, top, h - top - bottom)
    title = _text(layout.get("title"))
    if title:
        body.insert(0, f'<text x="10" y="24" font-size="16">{title}</text>')
    if skipped:
        note = "not drawn statically: " + ", ".join(sorted(skipped))
        body.append(f'<text x="{left}" y="{h - 6}" font-size="10" fill="#888">{note}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="{FONT}" font-size="11">'
        f'<rect width="{w}" height="{h}" fill="white"/>' + "".join(body) + "</svg>"
    )


def _axes(layout: dict[str, Any], key: tuple[str, str], traces: list[dict]) -> tuple[_Axis, _Axis]:
    """Data ranges of one subplot's x and y axes from its traces and its layout."""
    out = []
    for i, name in enumerate(key):
        spec = layout.get(name[0] + "axis" + name[1:], {}) or {}
        lo, hi, cats = math.inf, -math.inf, []
        for t in traces:
            a, b, c = _extent(t, "xy"[i])
            lo, hi = min(lo, a), max(hi, b)
            cats = cats or c
        log = spec.get("type") == "log"
        if log:
            lo, hi = math.log10(max(lo, 1e-12)), math.log10(max(hi, 1e-12))
        if not math.isfinite(lo):
            lo, hi = 0.0, 1.0
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        if traces and traces[0].get("type", "scatter") == "scatter":
            pad = (hi - lo) * 0.04
            lo, hi = lo - pad, hi + pad
        tickvals = spec.get("tickvals")
        if tickvals is not None and spec.get("ticktext") is not None:
            cats = list(zip(_arr(tickvals).tolist(), spec["ticktext"], strict=False))
        elif cats:
            cats = list(enumerate(cats))
        out.append(
            _Axis(
                lo, hi, spec.get("autorange") == "reversed", log, cats,
                spec.get("visible", True) is not False, _text(spec.get("title")),
            )
        )  # fmt: skip
    return out[0], out[1]


def _extent(t: dict[str, Any], axis: str) -> tuple[float, float, list[str]]:
    """(low, high, categories) of a trace along ``axis``."""
    kind = t.get("type", "scatter")
    if kind in ("heatmap", "image"):
        z = _arr(t.get("z")) if kind == "heatmap" else None
        n = (z.shape[1] if axis == "x" else z.shape[0]) if z is not None else _image_size(t, axis)
        labels = _arr(t.get(axis))
        if labels is not None and labels.dtype == object:
            return -0.5, n - 0.5, [str(v) for v in labels]
        start, step = float(t.get(axis + "0", 0) or 0), float(t.get("d" + axis, 1) or 1)
        return start - step / 2, start + step * (n - 0.5), []
    values = _arr(t.get(axis))
    if values is None or values.size == 0:
        return math.inf, -math.inf, []
    if values.dtype == object:
        return -0.5, len(values) - 0.5, [str(v) for v in values]
    v = values.astype(float)
    v = v[np.isfinite(v)]
    return (float(v.min()), float(v.max()), []) if v.size else (math.inf, -math.inf, [])


def _image_size(t: dict[str, Any], axis: str) -> int:
    img = _decode_image(t)
    if img is None:
        return 1
    return img.width if axis == "x" else img.height


def _decode_image(t: dict[str, Any]) -> Any:
    from PIL import Image

    source = t.get("source") or ""
    if not source.startswith("data:image/"):
        return None
    return Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))


def _box(
    layout: dict[str, Any],
    xk: str,
    yk: str,
    area: tuple[float, float, float, float],
    ax: _Axis,
    ay: _Axis,
) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) of a subplot: its domain, kept to equal units when the y
    axis is scale-anchored to x (heatmaps of square maps stay square)."""
    le, t, r, b = area
    xs = layout.get("xaxis" + xk[1:], {}) or {}
    ys = layout.get("yaxis" + yk[1:], {}) or {}
    dx, dy = xs.get("domain", [0, 1]), ys.get("domain", [0, 1])
    x0, x1 = le + dx[0] * (r - le), le + dx[1] * (r - le)
    y0, y1 = t + (1 - dy[1]) * (b - t), t + (1 - dy[0]) * (b - t)
    if ys.get("scaleanchor"):
        units = (ax.hi - ax.lo) / ((ay.hi - ay.lo) or 1)
        if (x1 - x0) / max(y1 - y0, 1) > units:
            cx, half = (x0 + x1) / 2, (y1 - y0) * units / 2
            x0, x1 = cx - half, cx + half
        else:
            cy, half = (y0 + y1) / 2, (x1 - x0) / units / 2
            y0, y1 = cy - half, cy + half
    return x0, y0, x1, y1


def _right_room(traces: list[dict[str, Any]]) -> int:
    if any(t.get("type") == "heatmap" and t.get("showscale", True) is not False for t in traces):
        return 84  # the bar and labels such as 0.00451
    names = [str(t.get("name") or "") for t in traces if t.get("type", "scatter") == "scatter"]
    if len(names) > 1:
        return min(220, 30 + 7 * max(len(n) for n in names))
    return 0


CHAR_PX = 6.5  # width of one character at the 11 px font, for label room
UPRIGHT_PX = 13  # room one upright label takes along the axis


def label_room(labels: Any) -> int:
    """Pixels a column of category ``labels`` takes beside a y axis (at most 340)."""
    labels = list(labels or [])
    return min(340, 12 + int(CHAR_PX * max(len(str(c)) for c in labels))) if labels else 0


def _label_room(ay: _Axis) -> int:
    if not ay.visible:
        return 0
    if ay.categories:
        return label_room(c[1] for c in ay.categories)
    return 48 + (16 if ay.title else 0)


def _needs_upright(ax: _Axis, room: float) -> bool:
    """True when ``ax``'s category labels, side by side, would skip some to fit ``room``."""
    cats = ax.categories
    if not cats:
        return False
    return CHAR_PX * (2 + max(len(str(c[1])) for c in cats)) * min(len(cats), 40) > room


def upright_room(labels: Any) -> int:
    """Extra pixels under a plot for upright category ``labels`` (at most 120)."""
    labels = list(labels or [])
    return min(120, 8 + int(CHAR_PX * max(len(str(c)) for c in labels))) if labels else 0


def _upright_room(ax: _Axis) -> int:
    return upright_room(c[1] for c in ax.categories)


# ---------------------------------------------------------------------------- traces
def _plot(
    traces: list[dict[str, Any]],
    ax: _Axis,
    ay: _Axis,
    box: tuple[float, float, float, float],
    skipped: set[str],
) -> list[str]:
    """SVG elements of one subplot's traces, in order (images under heatmaps)."""
    out = []
    x0, y0, x1, y1 = box
    for k, t in enumerate(traces):
        kind = t.get("type", "scatter")
        if kind in ("heatmap", "image"):
            xa, xb, _ = _extent(t, "x")
            ya, yb, _ = _extent(t, "y")
            px = sorted((ax.to(xa, x0, x1), ax.to(xb, x0, x1)))
            py = sorted((ay.to(ya, y1, y0), ay.to(yb, y1, y0)))
            flip_x = ax.reversed
            flip_y = not ay.reversed  # row 0 is drawn at the top only on a reversed y axis
            png = _heatmap_png(t, flip_x, flip_y) if kind == "heatmap" else _image_png(t)
            if png is None:
                skipped.add(kind)
                continue
            opacity = float(t.get("opacity", 1) if t.get("opacity") is not None else 1)
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            out.append(
                f'<image x="{px[0]:.1f}" y="{py[0]:.1f}" width="{px[1] - px[0]:.1f}" '
                f'height="{py[1] - py[0]:.1f}" preserveAspectRatio="none" opacity="{opacity:g}" '
                f'style="image-rendering:pixelated" href="{uri}"/>'
            )
        elif kind == "scatter":
            out += _scatter(t, COLORWAY[k % len(COLORWAY)], ax, ay, box)
        else:
            skipped.add(kind)
    return out


def _heatmap_png(t: dict[str, Any], flip_x: bool, flip_y: bool) -> bytes | None:
    """The heatmap's z through its colour scale as an RGBA PNG (NaN transparent)."""
    from PIL import Image

    z = _arr(t.get("z"))
    if z is None or z.ndim != 2 or z.size == 0:
        return None
    z = z.astype(np.float32)
    finite = z[np.isfinite(z)]
    lo = t.get("zmin") if t.get("zmin") is not None else (finite.min() if finite.size else 0)
    hi = t.get("zmax") if t.get("zmax") is not None else (finite.max() if finite.size else 1)
    rgb = colors.lut(t.get("colorscale"))[np.rint(colors.unit(z, lo, hi) * 255).astype(np.uint8)]
    alpha = np.where(np.isfinite(z), 255, 0).astype(np.uint8)
    rgba = np.dstack([rgb, alpha])
    if flip_x:
        rgba = rgba[:, ::-1]
    if flip_y:
        rgba = rgba[::-1]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _image_png(t: dict[str, Any]) -> bytes | None:
    img = _decode_image(t)
    if img is None:
        return None
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _scatter(
    t: dict[str, Any], colour: str, ax: _Axis, ay: _Axis, box: tuple[float, float, float, float]
) -> list[str]:
    x0, y0, x1, y1 = box
    ys = _arr(t.get("y"))
    if ys is None or ys.size == 0:
        return []
    xs = _arr(t.get("x"))
    xs = np.arange(len(ys)) if xs is None or xs.dtype == object else xs.astype(float)
    colour = (t.get("line") or {}).get("color") or (t.get("marker") or {}).get("color") or colour
    pts = [
        (ax.to(float(x), x0, x1), ay.to(float(y), y1, y0))
        for x, y in zip(xs, ys.astype(float), strict=False)
        if math.isfinite(float(y)) and not (ay.log and y <= 0)
    ]
    if not pts:
        return []
    mode = t.get("mode") or "lines"
    out = []
    if "lines" in mode:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
    if "markers" in mode:
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in pts]
    return out


# ---------------------------------------------------------------------------- decorations
def _ticks(axis: _Axis, room: float = 800.0, char: float = 0.0) -> list[tuple[float, str]]:
    """(data value, label) pairs: the categories (every k-th, so that labels ``char`` px per
    character - or :data:`UPRIGHT_PX` each when upright - fit in ``room`` px; at most 40),
    else ~5 round numbers (powers of ten on a log axis spanning a decade or more)."""
    if axis.categories:
        cats = axis.categories
        need = char * (2 + max(len(str(c[1])) for c in cats)) * len(cats)
        if axis.upright:
            need = UPRIGHT_PX * len(cats)
        step = max(1, math.ceil(len(cats) / 40), math.ceil(need / max(room, 1.0)))
        return [(float(v), str(label)) for v, label in cats[::step]]
    if axis.log and axis.hi - axis.lo >= 1:
        return [(10.0**e, _fmt(10.0**e)) for e in range(math.ceil(axis.lo), math.floor(axis.hi) + 1)]  # fmt: skip
    lo, hi = (10**axis.lo, 10**axis.hi) if axis.log else (axis.lo, axis.hi)
    raw = (hi - lo) / 5
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [(v, _fmt(v)) for v in np.arange(first, hi + step / 2, step)]


def _fmt(v: float) -> str:
    v = round(float(v), 12)
    return str(int(v)) if v == int(v) and abs(v) < 1e6 else colors.fmt_value(v)


def _axis_labels(ax: _Axis, ay: _Axis, box: tuple[float, float, float, float]) -> list[str]:
    x0, y0, x1, y1 = box
    out = []
    if ax.visible:
        out.append(f'<line x1="{x0:.1f}" y1="{y1:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#999"/>')
        for v, label in _ticks(ax, x1 - x0, CHAR_PX):
            px = ax.to(v, x0, x1)
            if not x0 - 1 <= px <= x1 + 1:
                continue
            if ax.upright:  # read bottom to top, ending at the axis
                out.append(
                    f'<text transform="translate({px + 4:.1f},{y1 + 6:.1f}) rotate(-90)" '
                    f'text-anchor="end">{html.escape(label)}</text>'
                )
            else:
                out.append(
                    f'<text x="{px:.1f}" y="{y1 + 14:.1f}" text-anchor="middle">'
                    f"{html.escape(label)}</text>"
                )
        if ax.title:
            below = y1 + 30 + (_upright_room(ax) - 6 if ax.upright else 0)
            out.append(
                f'<text x="{(x0 + x1) / 2:.1f}" y="{below:.1f}" text-anchor="middle">'
                f"{ax.title}</text>"
            )
    if ay.visible:
        out.append(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x0:.1f}" y2="{y1:.1f}" stroke="#999"/>')
        for v, label in _ticks(ay):
            py = ay.to(v, y1, y0)
            if y0 - 1 <= py <= y1 + 1:
                out.append(
                    f'<text x="{x0 - 4:.1f}" y="{py + 4:.1f}" text-anchor="end">'
                    f"{html.escape(label)}</text>"
                )
        if ay.title and not ay.categories:
            cy = (y0 + y1) / 2
            out.append(
                f'<text transform="translate({x0 - 50:.1f},{cy:.1f}) rotate(-90)" '
                f'text-anchor="middle">{ay.title}</text>'
            )
    return out


def _annotations(layout: dict[str, Any], area: tuple[float, float, float, float]) -> list[str]:
    """Paper-referenced annotations (subplot titles)."""
    le, t, r, b = area
    out = []
    for a in layout.get("annotations", []) or []:
        if a.get("xref", "paper") != "paper" or a.get("yref", "paper") != "paper":
            continue
        x = le + float(a.get("x", 0.5)) * (r - le)
        y = t + (1 - float(a.get("y", 1))) * (b - t) - 4
        anchor = {"left": "start", "right": "end"}.get(a.get("xanchor"), "middle")
        out.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="13">'
            f"{_text(a.get('text'))}</text>"
        )
    return out


def _legend_and_bar(traces: list[dict[str, Any]], x: float, y: float, h: float) -> list[str]:
    """The colour bar of the first heatmap that shows one, else a legend of named lines."""
    heat = next(
        (t for t in traces if t.get("type") == "heatmap" and t.get("showscale", True) is not False),
        None,
    )
    if heat is not None:
        z = _arr(heat.get("z")).astype(np.float32)
        finite = z[np.isfinite(z)]
        lo, hi = colors.scale_of(finite)
        lo = heat["zmin"] if heat.get("zmin") is not None else lo
        hi = heat["zmax"] if heat.get("zmax") is not None else hi
        bar_h = max(40.0, h * 0.8)
        ramp = np.linspace(1, 0, 128, dtype=np.float32)[:, None].repeat(8, 1)
        fake = {"z": ramp, "zmin": 0, "zmax": 1, "colorscale": heat.get("colorscale")}
        uri = "data:image/png;base64," + base64.b64encode(
            _heatmap_png(fake, False, False) or b""
        ).decode("ascii")
        out = [
            f'<image x="{x:.1f}" y="{y:.1f}" width="12" height="{bar_h:.1f}" '
            f'preserveAspectRatio="none" href="{uri}"/>'
        ]
        for frac, v in ((0, hi), (0.5, (lo + hi) / 2), (1, lo)):
            out.append(
                f'<text x="{x + 16:.1f}" y="{y + frac * bar_h + 4:.1f}">'
                f"{colors.fmt_value(float(v))}</text>"
            )
        return out
    lines = [t for t in traces if t.get("type", "scatter") == "scatter" and t.get("name")]
    if len(lines) < 2:
        return []
    out = []
    for k, t in enumerate(lines[: int(h // 16)]):
        colour = COLORWAY[traces.index(t) % len(COLORWAY)]
        yy = y + 16 * k
        out.append(f'<line x1="{x:.1f}" y1="{yy:.1f}" x2="{x + 18:.1f}" y2="{yy:.1f}" '
                   f'stroke="{colour}" stroke-width="2"/>')  # fmt: skip
        out.append(f'<text x="{x + 22:.1f}" y="{yy + 4:.1f}">{_text(t.get("name"))}</text>')
    return out


# ---------------------------------------------------------------------------- notebooks
def enable_static_plots() -> str:
    """Register the ``unetviz_static`` renderer (an SVG beside plotly's JSON) and make
    ``plotly_mimetype+unetviz_static`` the default. Returns the new default."""
    import plotly.io as pio
    from plotly.io._base_renderers import MimetypeRenderer

    class StaticRenderer(MimetypeRenderer):
        def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
            return {"image/svg+xml": figure_svg(fig_dict)}

    pio.renderers[RENDERER] = StaticRenderer()
    pio.renderers.default = f"plotly_mimetype+{RENDERER}"
    return pio.renderers.default
