"""The one colour map of unetviz: every heatmap (app tiles, layer grid, CLI PNGs, plotly plots)
and every colour bar uses it. Imports numpy only, so any layer of the package may import it.

**magma** (matplotlib's, by van der Walt and Smith): perceptually uniform, its lightness rises
monotonically from black (no attention) to pale cream (most attention), so it reads in a
greyscale print and for colour-blind readers. Heatmaps are drawn over a *greyscale* copy of the
image, so no colour of the image itself (the demo's red, green, blue and yellow objects) can be
mistaken for heat; and magma's hot end is a pale cream, not a saturated yellow or red, so it
does not name an object colour either. Low values are dark, so a blend darkens the regions a
token ignores and lights the ones it attends to.

- :func:`colorize` maps an array to RGB with an explicit ``vmin`` / ``vmax`` (the shared scale
  that makes tokens comparable).
- :func:`colorscale` gives the same map as a plotly colour scale (no plotly import here).
- :func:`colorbar_array` / :func:`colorbar_image` draw the colour bar (the latter with PIL);
  :func:`captioned` puts a picture, its title, caption lines and colour bar on one image.
- :func:`lut` is the lookup table of any plotly colour scale (this map's by default).
- :func:`minmax` scales a map to [0, 1] by its own range (numpy or torch alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

#: The colour map's name (documentation and plot titles).
NAME = "magma"

_MAGMA_HEX = (
    "00000401000501010601010802010902020b02020d03030f03031204041405041606051806051a07061c08071e090720"
    "0a08220b09240c09260d0a290e0b2b100b2d110c2f120d31130d34140e36150e38160f3b180f3d19103f1a10421c1044"
    "1d11471e114920114b21114e22115024125325125527125829115a2a115c2c115f2d11612f1163311165331067341069"
    "36106b38106c390f6e3b0f703d0f713f0f72400f74420f75440f764510774710784910784a10794c117a4e117b4f127b"
    "51127c52137c54137d56147d57157e59157e5a167e5c167f5d177f5f187f601880621980641a80651a80671b80681c81"
    "6a1c816b1d816d1d816e1e81701f81721f817320817521817621817822817922827b23827c23827e2482802582812581"
    "8326818426818627818827818928818b29818c29818e2a81902a81912b81932b80942c80962c80982d80992d809b2e7f"
    "9c2e7f9e2f7fa02f7fa1307ea3307ea5317ea6317da8327daa337dab337cad347cae347bb0357bb2357bb3367ab5367a"
    "b73779b83779ba3878bc3978bd3977bf3a77c03a76c23b75c43c75c53c74c73d73c83e73ca3e72cc3f71cd4071cf4070"
    "d0416fd2426fd3436ed5446dd6456cd8456cd9466bdb476adc4869de4968df4a68e04c67e24d66e34e65e44f64e55064"
    "e75263e85362e95462ea5661eb5760ec5860ed5a5fee5b5eef5d5ef05f5ef1605df2625df2645cf3655cf4675cf4695c"
    "f56b5cf66c5cf66e5cf7705cf7725cf8745cf8765cf9785df9795df97b5dfa7d5efa7f5efa815ffb835ffb8560fb8761"
    "fc8961fc8a62fc8c63fc8e64fc9065fd9266fd9467fd9668fd9869fd9a6afd9b6bfe9d6cfe9f6dfea16efea36ffea571"
    "fea772fea973feaa74feac76feae77feb078feb27afeb47bfeb67cfeb77efeb97ffebb81febd82febf84fec185fec287"
    "fec488fec68afec88cfeca8dfecc8ffecd90fecf92fed194fed395fed597fed799fed89afdda9cfddc9efddea0fde0a1"
    "fde2a3fde3a5fde5a7fde7a9fde9aafdebacfcecaefceeb0fcf0b2fcf2b4fcf4b6fcf6b8fcf7b9fcf9bbfcfbbdfcfdbf"
)

#: (256, 3) uint8 lookup table: ``LUT[0]`` is the lowest value, ``LUT[255]`` the highest.
LUT: np.ndarray = np.frombuffer(bytes.fromhex("".join(_MAGMA_HEX)), dtype=np.uint8).reshape(256, 3)
LUT.setflags(write=False)


def scale_of(arrays: Any) -> tuple[float, float]:
    """``(vmin, vmax)`` over all finite values of one array or a list of arrays: the shared
    scale that keeps several heatmaps comparable. ``(0.0, 1.0)`` when nothing is finite."""
    items = arrays if isinstance(arrays, (list, tuple)) else [arrays]
    lo, hi = np.inf, -np.inf
    for a in items:
        a = np.asarray(a, dtype=np.float64)
        finite = a[np.isfinite(a)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not np.isfinite(lo):
        return 0.0, 1.0
    return lo, hi


def unit(a: Any, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """``a`` scaled to [0, 1] by ``(a - vmin) / (vmax - vmin)`` and clipped; a missing bound
    is the array's own min / max. A flat scale (vmax <= vmin) maps everything to 0; NaN to 0."""
    a = np.asarray(a, dtype=np.float32)
    if vmin is None or vmax is None:
        lo, hi = scale_of(a)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    span = float(vmax) - float(vmin)
    if not span > 0:
        return np.zeros(a.shape, np.float32)
    out = (a - np.float32(vmin)) / np.float32(span)
    return np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)


def minmax(x: Any, dims: tuple[int, ...] | None = None) -> Any:
    """``x`` scaled to [0, 1] by its min and max over ``dims`` (all by default); a flat map
    (max == min) gives zeros. A numpy array (NaN ignored in the range) or a torch tensor (no
    torch import here: the array's own methods)."""
    if isinstance(x, np.ndarray):
        lo = np.nanmin(x, axis=dims, keepdims=True)
        span = np.nanmax(x, axis=dims, keepdims=True) - lo
        return (x - lo) / np.where(span > 0, span, 1)
    if dims is None:
        lo, hi = x.min(), x.max()
    else:
        lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    span = hi - lo
    return (x - lo) / span.masked_fill(span <= 0, 1)


def colorize(a: Any, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """``a`` (any shape) as uint8 RGB (shape + (3,)) through :data:`LUT` on the scale
    ``vmin``..``vmax`` (default: the array's own range)."""
    idx = np.rint(unit(a, vmin, vmax) * 255).astype(np.uint8)
    return LUT[idx]


def colorscale(stops: int = 32) -> list[list[Any]]:
    """The map as a plotly colour scale ``[[0.0, "rgb(0,0,4)"], ..., [1.0, ...]]``."""
    stops = max(2, int(stops))
    out = []
    for k in range(stops):
        r, g, b = (int(v) for v in LUT[round(k * 255 / (stops - 1))])
        out.append([k / (stops - 1), f"rgb({r},{g},{b})"])
    return out


def lut(colorscale: Any = None) -> np.ndarray:
    """(256, 3) uint8 lookup table of a plotly colour scale (a name, or ``[position, colour]``
    pairs); :data:`LUT` for none or this map's name. plotly is imported only for another scale."""
    if not colorscale or (isinstance(colorscale, str) and colorscale.lower() == NAME):
        return LUT
    if isinstance(colorscale, str):
        return _named_lut(colorscale)
    from plotly.colors import convert_colors_to_same_type, sample_colorscale, unlabel_rgb

    scale = [[float(p), convert_colors_to_same_type(c, "rgb")[0][0]] for p, c in colorscale]
    sampled = sample_colorscale(scale, [i / 255 for i in range(256)], colortype="rgb")
    return np.array([[round(v) for v in unlabel_rgb(c)] for c in sampled], dtype=np.uint8)


@lru_cache(maxsize=16)
def _named_lut(name: str) -> np.ndarray:
    from plotly.colors import get_colorscale

    table = lut(get_colorscale(name))
    table.setflags(write=False)
    return table


def colorbar_array(length: int = 256, thickness: int = 16, vertical: bool = False) -> np.ndarray:
    """The bare colour bar, low to high (left to right, or bottom to top if ``vertical``), as
    uint8 RGB of ``thickness`` x ``length`` (or ``length`` x ``thickness``)."""
    ramp = colorize(np.linspace(0.0, 1.0, max(2, int(length))), 0.0, 1.0)
    if vertical:
        return np.repeat(ramp[::-1, None, :], max(1, int(thickness)), axis=1)
    return np.repeat(ramp[None, :, :], max(1, int(thickness)), axis=0)


def fmt_value(v: float) -> str:
    """A colour-bar tick: 3 significant digits, scientific for very small/large values."""
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.3g}"
    return f"{v:.2e}"


def colorbar_image(
    vmin: float, vmax: float, width: int = 256, label: str = "", thickness: int = 12
) -> Any:
    """A horizontal colour bar with ``vmin`` / middle / ``vmax`` ticks and an optional label,
    as a PIL RGB image ``width`` px wide (white background), for captions under heatmaps."""
    from PIL import Image, ImageDraw

    fnt = font(11)
    width = max(64, int(width))
    pad = 6
    bar = colorbar_array(width - 2 * pad, thickness)
    height = thickness + 34 if label else thickness + 20
    img = Image.new("RGB", (width, height), "white")
    img.paste(Image.fromarray(bar), (pad, 2))
    draw = ImageDraw.Draw(img)
    y = thickness + 4
    ticks = ((vmin, "l"), ((vmin + vmax) / 2, "m"), (vmax, "r"))
    for k, (v, anchor) in enumerate(ticks):
        x = pad + k * (width - 2 * pad) // 2
        draw.line([(x, 2 + thickness), (x, y)], fill=(80, 80, 80))
        draw.text((x, y), fmt_value(v), fill=(0, 0, 0), font=fnt, anchor=anchor + "a")
    if label:
        draw.text((width // 2, y + 14), label, fill=(60, 60, 60), font=fnt, anchor="ma")
    return img


def font(size: int) -> Any:
    """DejaVu Sans at ``size`` px if installed (it ships with most Linux systems), else PIL's
    built-in scalable font."""
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def captioned(
    picture: Any,
    title: str,
    lines: Sequence[str] = (),
    scale: tuple[float, float] | None = None,
    scale_label: str = "",
) -> Any:
    """``picture`` (PIL) with ``title`` above (none if empty) and caption ``lines`` plus a
    colour bar of ``scale`` below, on white: a heatmap PNG that says what it shows."""
    from PIL import Image, ImageDraw

    width = max(picture.width + 8, 256)
    bar = colorbar_image(*scale, width=width, label=scale_label) if scale else None
    title_h, line_h = (22 if title else 4), 15
    height = title_h + picture.height + 6 + line_h * len(lines) + (bar.height if bar else 0)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    if title:
        draw.text(
            (width // 2, 4), _fit(title, width, 14), fill=(0, 0, 0), font=font(14), anchor="ma"
        )
    out.paste(picture, ((width - picture.width) // 2, title_h))
    y = title_h + picture.height + 4
    for line in lines:
        draw.text((4, y), _fit(line, width, 11), fill=(40, 40, 40), font=font(11))
        y += line_h
    if bar is not None:
        out.paste(bar, (0, y))
    return out


def _fit(text: str, width: int, size: int) -> str:
    """``text`` cut with an ellipsis to about ``width`` px at font ``size``."""
    limit = max(8, int(width / (size * 0.58)))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
