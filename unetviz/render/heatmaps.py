"""Heatmaps as pictures, without a browser: the one overlay of a map on its image, the one
choice of which tokens are the prompt's words, shared colour scales and captioned PNGs.

The app's tiles and downloads, ``unetviz attention``'s PNGs and ``render.plots`` all call
these, so a heatmap looks the same everywhere: the colour map of :mod:`unetviz.colors`, over a
greyscale copy of the image (no image colour can pass for heat), on an explicit scale
(``vmin``/``vmax``) that several tokens can share so they stay comparable.

numpy and PIL only (no plotly, no torch import).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..colors import NAME as COLORMAP
from ..colors import captioned, colorize, fmt_value, scale_of, unit
from ..errors import UnetvizError
from ..names import layer_order
from ..tokens import END_TOKENS, PAD_TOKEN, SPECIAL_TOKENS, label_at
from .graph import field_of

#: How several heatmaps are put on colour scales: one shared scale (comparable) or each its own.
SCALES = ("shared", "per-token")

__all__ = [
    "COLORMAP",
    "SCALES",
    "HeatmapError",
    "captioned",
    "contact_sheet",
    "grey",
    "heat_scales",
    "image_array",
    "layer_label",
    "layer_order",
    "overlay",
    "word_groups",
    "word_tokens",
]


class HeatmapError(UnetvizError):
    """A heatmap, image or scale that cannot be drawn (wrong shape, unknown scale)."""


# ---------------------------------------------------------------------------- tokens
def word_tokens(trace: Any, limit: int | None = None) -> list[int]:
    """Indices of the prompt's word tokens (no ``<bos>``/``<eos>``/padding), at most
    ``limit``. A trace without word labels falls back to its non-special tokens, then to its
    first positions (8)."""
    words = list(field_of(trace, "words", []) or [])
    tokens = list(field_of(trace, "tokens", []) or [])
    idx = [i for i, w in enumerate(words) if w is not None]
    if not idx and tokens:
        idx = []
        for i, t in enumerate(tokens):
            if t == PAD_TOKEN or (i > 0 and t in END_TOKENS):
                break
            if t not in SPECIAL_TOKENS:
                idx.append(i)
    if not idx:
        n = len(tokens) or token_count(trace)
        idx = list(range(1, n - 1)) if n > 2 else list(range(n))
        idx = idx[:8]
    return idx[:limit] if limit is not None else idx


def token_count(trace: Any) -> int:
    for rec in (field_of(trace, "attention", {}) or {}).values():
        t = field_of(rec, "tokens")
        if t:
            return int(t)
    return 0


def word_groups(trace: Any, specials: bool = False) -> list[tuple[str, list[int]]]:
    """``(word, token indices)`` per distinct prompt word, in prompt order: BPE pieces of a
    word merged, a repeated word's tokens together, punctuation left out. With ``specials``,
    the start token and the first end token too."""
    words = list(field_of(trace, "words", []) or [])
    tokens = list(field_of(trace, "tokens", []) or [])
    groups: dict[str, list[int]] = {}
    for i in word_tokens(trace):
        word = words[i] if i < len(words) and words[i] is not None else label_at(tokens, i)
        if any(c.isalnum() for c in word):
            groups.setdefault(word, []).append(i)
    out = list(groups.items())
    if specials and tokens:
        out.insert(0, (tokens[0], [0]))
        eos = next((i for i in range(1, len(tokens)) if i >= len(words) or words[i] is None), None)
        if eos is not None:
            out.append((tokens[eos], [eos]))
    return out


# ---------------------------------------------------------------------------- layers
def layer_label(name: str, res: Any = None, names: Any = None, depth: int = 1) -> str:
    """``IN04 · down_blocks.1.attentions.0 · 32×32`` for an attn2 layer: A1111 label (with
    ``names``, a :class:`unetviz.names.UNetNames`), the transformer's diffusers name (plus
    ``t3`` when it holds ``depth`` > 1 transformer blocks) and the map size."""
    parts = name.split(".")
    block = name
    if "transformer_blocks" in parts:
        k = parts.index("transformer_blocks")
        block = ".".join(parts[:k])
        if depth > 1 and k + 1 < len(parts):
            block += f" t{parts[k + 1]}"
    out = []
    if names is not None:
        try:
            label = names.a1111(name)
        except ValueError:
            label = None
        if label:
            out.append(label)
    out.append(block)
    if res:
        out.append(f"{int(res[0])}\u00d7{int(res[-1])}")
    return " \u00b7 ".join(out)


# ---------------------------------------------------------------------------- scales
def heat_scales(maps: list[Any], scale: str = "shared") -> list[tuple[float, float]]:
    """One ``(vmin, vmax)`` per map: the same range over all of them (``"shared"``, so the
    colours of two tokens compare) or each map's own (``"per-token"``)."""
    if scale not in SCALES:
        raise HeatmapError(f"scale={scale!r}: expected one of {list(SCALES)}")
    arrays = [_np(m) for m in maps]
    if scale == "shared":
        return [scale_of(arrays)] * len(arrays)
    return [scale_of(a) for a in arrays]


# ---------------------------------------------------------------------------- images
def _np(x: Any) -> np.ndarray:
    """A float32 numpy array from a tensor / array / list (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").float().numpy()
    return np.asarray(x, dtype=np.float32)


def image_array(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image, an (H, W[, C]) array (uint8 or float in [0, 1]) or
    a (C, H, W) tensor."""
    if hasattr(image, "convert"):  # PIL
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        image = image.detach().to("cpu").float().numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise HeatmapError(f"image of shape {a.shape}: expected (H, W), (H, W, 3) or (3, H, W)")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
    return a


def grey(image: Any, size: tuple[int, int]) -> np.ndarray:
    """A greyscale copy of ``image`` at ``size`` (H, W) as float32 RGB: small images are
    enlarged with nearest-neighbour (their pixels stay visible), large ones shrunk bicubically."""
    from PIL import Image

    img = Image.fromarray(image_array(image)).convert("L")
    h, w = size
    if (img.height, img.width) != (h, w):
        up = h >= img.height and w >= img.width
        img = img.resize((w, h), Image.Resampling.NEAREST if up else Image.Resampling.BICUBIC)
    g = np.asarray(img, np.float32)
    return np.repeat(g[..., None], 3, axis=-1)


def _size(size: int | tuple[int, int] | None, heat: np.ndarray, image: Any) -> tuple[int, int]:
    if size is None:
        if image is not None:
            return image_array(image).shape[:2]
        return heat.shape
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def overlay(
    heat: Any,
    image: Any = None,
    vmin: float | None = None,
    vmax: float | None = None,
    size: int | tuple[int, int] | None = None,
    opacity: float = 0.6,
    threshold: float = 0.0,
) -> Any:
    """The heatmap in the colour map over a greyscale copy of ``image`` (a flat mid-grey when
    None) as a PIL RGB image of ``size`` ((H, W) or side; default the image's size, else the
    map's). Colours run over ``vmin``..``vmax`` (default: the map's own range; pass a shared
    scale to compare tokens). ``threshold`` in (0, 1] outlines where the map reaches that
    fraction of the scale."""
    from PIL import Image

    a = _np(heat)
    if a.ndim != 2:
        raise HeatmapError(f"heatmap of shape {tuple(a.shape)}: expected (H, W)")
    h, w = _size(size, a, image)
    if h <= 0 or w <= 0:
        raise HeatmapError(f"size {(h, w)}: expected positive (H, W)")
    if a.shape != (h, w):
        a = np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    lo, hi = scale_of(a) if vmin is None or vmax is None else (vmin, vmax)
    colour = colorize(a, lo, hi).astype(np.float32)
    base = np.full((h, w, 3), 128, np.float32) if image is None else grey(image, (h, w))
    alpha = float(np.clip(np.nan_to_num(opacity, nan=0.6), 0.0, 1.0))
    rgb = base * (1 - alpha) + colour * alpha
    if threshold and np.isfinite(threshold) and threshold > 0:
        rgb[_outline(unit(a, lo, hi) >= float(threshold))] = (0, 255, 255)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def _outline(mask: np.ndarray) -> np.ndarray:
    """The 2-px edge of a boolean region."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    edge = mask & ~inner
    return edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)


def contact_sheet(tiles: list[Any], cols: int = 4, gap: int = 8) -> Any:
    """Tiles (PIL images) in a grid of ``cols`` columns on white, each cell the largest tile's
    size."""
    from PIL import Image

    if not tiles:
        raise HeatmapError("no heatmaps to put on a contact sheet")
    cols = max(1, min(int(cols), len(tiles)))
    rows = -(-len(tiles) // cols)
    cw, ch = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * cw + (cols + 1) * gap, rows * ch + (rows + 1) * gap), "white")
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet.paste(t, (gap + c * (cw + gap) + (cw - t.width) // 2, gap + r * (ch + gap)))
    return sheet


def scale_text(scale: tuple[float, float]) -> str:
    """``0.0012 .. 0.31`` for captions."""
    return f"{fmt_value(scale[0])} .. {fmt_value(scale[1])}"
