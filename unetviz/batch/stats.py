"""Per-(word, layer, step-bucket) statistics of one run's cross-attention maps.

A layer's map for a word is its probability map (tokens of the word averaged, heads averaged)
averaged over the steps of a bucket, at the layer's native resolution. From it:

- ``entropy``: spatial entropy of the map as a distribution, divided by log(h*w) (0 = one
  pixel, 1 = uniform); ``concentration`` = 1 - entropy.
- ``peak_y`` / ``peak_x``: the argmax cell's centre as fractions of the height / width.
- ``area``: fraction of cells at or above ``tau`` after min-max normalisation.
- with a mask (the map upsampled bicubic to the mask's size and clamped at 0, as DAAM does;
  masks over ``MAX_SCORE_SIDE`` pixels a side are first area-downsampled to it):
  ``mass_in`` / ``mass_out`` (share of the map's mass inside / outside the mask) and ``iou`` of
  the map thresholded at ``tau`` (min-max normalised) with the mask.

Each word also gets whole-run rows (``bucket == -1``, ``location == "all"``), scored the same
way: ``layer == "daam"``, DAAM 0.2.0's heatmap (``trace.heatmap(word, preset="daam")``: down
and up blocks, per-head clamp, all steps), and ``layer == "daam-approx"``, unetviz's earlier
DAAM-like recipe (head means, lowest resolution dropped).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from unetviz.colors import minmax

TAU = 0.4
MAX_SCORE_SIDE = 128
DAAM = "daam"
#: whole-run aggregate rows (``bucket == -1``): the layer column holds the recipe's name
AGGREGATES = (DAAM, "daam-approx")
FUNCTION_WORDS = frozenset(
    "a an the of on in at to and or with by for from under over near next is are its his her "
    "their this that these those".split()
)
COLOUR_WORDS = frozenset(
    "red green blue yellow orange purple pink brown black white grey gray gold silver".split()
)
COLUMNS = (
    "key", "row", "prompt", "seed", "word", "word_index", "word_class", "layer", "block",
    "location", "resolution", "bucket", "step_lo", "step_hi", "t_hi", "t_lo", "entropy",
    "concentration", "peak_y", "peak_x", "area", "has_mask", "mass_in", "mass_out", "iou",
)  # fmt: skip


def buckets(steps: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous step ranges [lo, hi) covering ``steps`` (fewer when steps < n)."""
    n = max(1, min(n, steps))
    edges = [round(i * steps / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


def word_class(word: str, classes: dict[str, str], known: dict[str, str]) -> str:
    """The row's own ``classes`` first, then the model's known classes, then a small
    built-in guess (function word, colour, else content)."""
    w = word.lower()
    if w in classes:
        return classes[w]
    if w in known:
        return known[w]
    if w in FUNCTION_WORDS:
        return "function"
    if w in COLOUR_WORDS:
        return "colour"
    return "content"


def map_stats(m: torch.Tensor, mask: np.ndarray | None, tau: float) -> dict[str, Any]:
    """Statistics of one (h, w) non-negative map (see module docstring)."""
    m = m.double().clamp_min(0)
    h, w = m.shape
    total = float(m.sum())
    p = m / total if total > 0 else torch.full_like(m, 1.0 / (h * w))
    ent = float(-(p * p.clamp_min(1e-300).log()).sum()) / math.log(h * w) if h * w > 1 else 0.0
    flat = int(torch.argmax(m))
    out: dict[str, Any] = {
        "entropy": ent,
        "concentration": 1.0 - ent,
        "peak_y": ((flat // w) + 0.5) / h,
        "peak_x": ((flat % w) + 0.5) / w,
        "area": float((minmax(m, (-2, -1)) >= tau).double().mean()),
        "has_mask": mask is not None,
        "mass_in": None,
        "mass_out": None,
        "iou": None,
    }
    if mask is not None:
        target = torch.from_numpy(np.ascontiguousarray(mask))
        up = m
        if tuple(m.shape) != tuple(target.shape):
            bigger = target.shape[0] >= m.shape[0]
            mode = {"mode": "bicubic", "align_corners": False} if bigger else {"mode": "area"}
            up = F.interpolate(m[None, None], size=tuple(target.shape), **mode)[0, 0]
            up = up.clamp_min(0)
        s = float(up.sum())
        inside = float((up * target).sum()) / s if s > 0 else 0.0
        binary = minmax(up, (-2, -1)) >= tau
        union = int((binary | target).sum())
        out.update(
            mass_in=inside,
            mass_out=1.0 - inside,
            iou=1.0 if union == 0 else int((binary & target).sum()) / union,
        )
    return out


def _aggregates(trace: Any, idx: list[int]) -> list[tuple[str, torch.Tensor]]:
    """The word's whole-run heatmaps, unnormalised: ``daam`` (DAAM 0.2.0, where the capture
    kept per-head sums) and ``daam-approx`` (unetviz's DAAM-like recipe from the maps kept),
    each when the trace can give it."""
    out = []
    for preset in AGGREGATES:
        try:
            out.append((preset, trace.heatmap(idx, preset=preset, normalize=None)))
        except ValueError:  # TraceError: this capture or unetviz version cannot give it
            continue
    return out


def scoring_masks(masks: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """Masks larger than ``MAX_SCORE_SIDE`` on a side, area-downsampled (a pixel is inside
    when at least half of it was): maps are upsampled to the mask, so scoring SD's 64x64 maps
    against 512x512 COCO masks would cost 10x more for the same answer to ~1/128."""
    if not masks:
        return masks
    out = {}
    for word, m in masks.items():
        h, w = m.shape
        f = math.ceil(max(h, w) / MAX_SCORE_SIDE)
        if f > 1:
            t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
            small = F.interpolate(t, size=(max(1, round(h / f)), max(1, round(w / f))), mode="area")
            m = (small[0, 0] >= 0.5).numpy()
        out[word] = m
    return out


def word_groups(words: list[str | None]) -> list[tuple[str, list[int]]]:
    """(word, token indices) per distinct prompt word, in prompt order."""
    groups: dict[str, list[int]] = {}
    for i, word in enumerate(words):
        if word is not None and any(c.isalnum() for c in word):
            groups.setdefault(word.lower(), []).append(i)
    return list(groups.items())


def run_records(
    trace: Any,
    masks: dict[str, np.ndarray] | None,
    n_buckets: int,
    tau: float = TAU,
    classes: dict[str, str] | None = None,
    known_classes: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every (word, layer, bucket) record of one captured run, plus the aggregate rows.
    Row identity columns (key, row, prompt, seed) are filled by the caller."""
    steps = trace.steps
    spans = buckets(steps, n_buckets)
    ts = [float(t) if t is not None else math.nan for t in trace.timesteps]
    layers = sorted(name for name, rec in trace.attention.items() if rec.captured)
    masks = scoring_masks(masks)
    records: list[dict[str, Any]] = []
    for wi, (word, idx) in enumerate(word_groups(list(trace.words))):
        mask = (masks or {}).get(word)
        base = {
            "word": word,
            "word_index": wi,
            "word_class": word_class(word, classes or {}, known_classes or {}),
        }
        for b, (lo, hi) in enumerate(spans):
            maps = trace.layer_maps(idx, steps=list(range(lo, hi)), reduce="mean")
            for name in layers:
                rec = trace.attention[name]
                records.append(
                    {
                        **base,
                        "layer": name,
                        "block": rec.block,
                        "location": rec.location,
                        "resolution": int(rec.res[0]),
                        "bucket": b,
                        "step_lo": lo,
                        "step_hi": hi,
                        "t_hi": ts[lo],
                        "t_lo": ts[hi - 1],
                        **map_stats(maps[name].float(), mask, tau),
                    }
                )
        for name, heat in _aggregates(trace, idx):
            records.append(
                {
                    **base,
                    "layer": name,
                    "block": name,
                    "location": "all",
                    "resolution": int(heat.shape[0]),
                    "bucket": -1,
                    "step_lo": 0,
                    "step_hi": steps,
                    "t_hi": ts[0],
                    "t_lo": ts[-1],
                    **map_stats(heat, mask, tau),
                }
            )
    return records
