"""Cross-attention heatmaps from a Trace: select layers / resolutions / steps / heads, reduce,
upsample, normalise. Presets reproduce published recipes (docs/trace.md cites the lines):

- ``"daam"``: DAAM 0.2.0's global word heat map (Tang et al. 2022, castorini/daam
  ``daam/trace.py``): the down and up blocks' cross-attention (never the mid block), each head
  summed over steps, every (layer, head) map bicubic-upsampled to 64x64 (96x96 unless the
  model's ``sample_size`` x VAE factor is 512 or 1024) and clamped at 0, then averaged over
  layers x heads; maps whose ``int(sqrt(latent_hw // queries))`` is 8 (or not a power of two
  up to 64, or 0) are dropped; a word's
  pieces (and repeats) are averaged after that. Needs a capture with ``daam=True`` (per-head
  sums); ``normalize=None`` gives DAAM's unnormalised values, the default min-max is DAAM's
  ``expand_as``. An explicit ``size`` resizes the 64x64 map bicubically (DAAM's ``expand_as``).
- ``"daam-approx"``: unetviz's earlier DAAM-like recipe, from whatever maps were kept: maps
  whose side is <= latent/8 dropped (else, with more than two resolutions, the lowest one),
  *head-mean* maps (per head with ``per_head=True``) summed over steps, upsampled, clamped,
  averaged; size = latent x ceil(64 / latent side). It differs from DAAM where the clamp bites
  (head mean before the clamp), on multi-piece words (pieces averaged before upsampling), on
  SDXL (it keeps the mid block) and in its output size.
- ``"p2p"`` (Hertz et al. 2022, prompt-to-prompt ``aggregate_attention``): the 16x16 maps of the
  down and up blocks (not mid), averaged over steps, layers and heads, no upsampling. Small
  models: the captured down/up resolution closest to 16 (ties: the larger).
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from ..colors import minmax
from ..tokens import match_key
from .errors import TraceError
from .records import AttentionRecord

if TYPE_CHECKING:
    from .trace import Trace

PRESETS = ("daam", "daam-approx", "p2p")
#: DAAM hooks the down and up blocks' cross-attention only (daam/hook.py:110-120).
DAAM_LOCATIONS = ("down", "up")
#: The map "factors" DAAM's compute_global_heat_map uses by default (daam/trace.py:103-104);
#: factor = int(sqrt(latent_hw // queries)), and factor 8 is never recorded (trace.py:289).
DAAM_FACTORS = (0, 1, 2, 4, 16, 32, 64)
UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest", "area")
NORMALIZE_MODES = ("minmax", "max", "sum")


# ---------------------------------------------------------------------------------- tokens
def token_indices(trace: Trace, token: int | str | list[int]) -> list[int]:
    """Positions of ``token``: an index, a list of indices, or a word. A word selects every
    token whose ``trace.words`` entry equals it (case-insensitive): its sub-tokens are merged
    (averaged); without ``words``, token labels are matched with ``</w>`` stripped."""
    n = _n_tokens(trace)
    if isinstance(token, bool):
        raise TraceError(f"token={token!r}: expected an index, a list of indices or a word")
    if isinstance(token, int):
        token = [token]
    if isinstance(token, (list, tuple)):
        out = []
        for t in token:
            if not isinstance(t, int) or isinstance(t, bool) or not -n <= t < n:
                raise TraceError(f"token index {t!r} out of range: this trace has {n} tokens")
            out.append(t % n)
        if not out:
            raise TraceError("token=[]: give at least one token index")
        return out
    if not isinstance(token, str):
        raise TraceError(f"token={token!r}: expected an index, a list of indices or a word")
    word = token.strip().lower()
    if trace.words:
        hits = [i for i, w in enumerate(trace.words) if w is not None and w.lower() == word]
    else:
        hits = [i for i, t in enumerate(trace.tokens) if match_key(t) == word]
    hits = [i for i in hits if i < n]
    if not hits:
        if not trace.tokens:
            raise TraceError(
                f"token {token!r}: this trace has no token labels (trace.tokens is empty: "
                f"captured outside a pipeline); address tokens by index 0..{n - 1}"
            )
        known = sorted({w for w in trace.words if w} or {match_key(t) for t in trace.tokens} - {""})
        raise TraceError(f"word {token!r} is not in the prompt; words: {known}")
    return hits


def _n_tokens(trace: Trace) -> int:
    for rec in trace.attention.values():
        if rec.captured:
            m = rec.maps[0] if rec.maps else rec.sum
            return int(m.shape[-1])
    raise TraceError(
        "this trace holds no cross-attention maps: capture with attention=True on a model with "
        "real (not meta) weights"
    )


# ---------------------------------------------------------------------------------- cache
class MapCache:
    """Stacked maps of a trace's attention records, for re-aggregation without re-stacking.
    The one owner of that cache: a Trace holds one (``trace.cache``) and clears it when its
    records change (``trace.clear_cache()``)."""

    def __init__(self) -> None:
        self._stacks: dict[tuple[str, int, int], tuple[torch.Tensor, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._stacks)

    def clear(self) -> None:
        self._stacks.clear()

    def stacked(self, rec: AttentionRecord) -> tuple[torch.Tensor, list[int]]:
        """(tokens, steps_or_1, heads_or_1, h, w) float32 and the forward index of each step
        (empty in streaming mode)."""
        key = (rec.name, len(rec.maps), rec.count)
        hit = self._stacks.get(key)
        if hit is None:
            if rec.maps:
                shapes = {tuple(m.shape) for m in rec.maps}
                if len(shapes) != 1:
                    raise TraceError(
                        f"{rec.name}: the query grid changed between forwards {sorted(shapes)}; "
                        "aggregate steps of one resolution only"
                    )
                data = torch.stack(rec.maps).float().permute(4, 0, 1, 2, 3).contiguous()
                hit = (data, list(rec.steps))
            else:
                data = rec.sum.float().permute(3, 0, 1, 2).unsqueeze(1).contiguous()
                hit = (data, [])
            self._stacks[key] = hit
        return hit


# ---------------------------------------------------------------------------------- selection
def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, set, range)) else [value]


def _select_layers(trace: Trace, layers: Any, resolutions: Any) -> list[AttentionRecord]:
    recs = [r for r in trace.attention.values() if r.captured]
    if not recs:
        _n_tokens(trace)  # raises the "no maps" error
    if layers is not None:
        chosen = []
        for want in _as_list(layers):
            hits = [
                r
                for r in recs
                if r.name == want
                or r.name.startswith(str(want) + ".")
                or r.location == want
                or r.block == want
            ]
            if not hits:
                raise TraceError(
                    f"layer {want!r} matches no captured cross-attention layer; use a name or "
                    f"prefix such as {recs[0].name!r}, a block ('up_blocks.1') or a location "
                    "('down', 'mid', 'up')"
                )
            chosen += [h for h in hits if h not in chosen]
        recs = [r for r in recs if r in chosen]
    if resolutions is not None:
        wanted = set()
        for res in _as_list(resolutions):
            wanted.add(tuple(res) if isinstance(res, (list, tuple)) else (int(res), int(res)))
        have = sorted({r.res for r in recs})
        recs = [r for r in recs if r.res in wanted or (r.res[0],) * 2 in wanted]
        if not recs:
            raise TraceError(
                f"resolutions={resolutions!r} match no selected layer; captured resolutions: "
                f"{[h for h, _ in have]}"
            )
    return recs


def _step_positions(trace: Trace, rec: AttentionRecord, steps: Any, rec_steps: list[int]):
    if steps is None:
        return None
    if not rec_steps:
        raise TraceError(
            "this trace was captured with mode='stream' (a sum over steps): steps cannot be "
            "selected; capture with mode='steps' to scrub through time"
        )
    total = trace.steps or (max(rec_steps) + 1)
    if isinstance(steps, slice):
        wanted = list(range(total))[steps]
    else:
        wanted = []
        for s in _as_list(steps):
            if not isinstance(s, int) or not -total <= s < total:
                raise TraceError(f"step {s!r} out of range: this trace has {total} steps")
            wanted.append(s % total)
    where = {s: i for i, s in enumerate(rec_steps)}
    pos = [where[s] for s in wanted if s in where]
    if not pos:
        raise TraceError(f"steps {steps!r}: layer {rec.name} has no maps at those steps")
    return pos


def _maps(
    trace: Trace,
    rec: AttentionRecord,
    idx: list[int],
    steps: Any,
    heads: Any,
    reduce: str,
) -> torch.Tensor:
    """(heads_or_1, h, w): token(s) averaged, steps reduced (``sum`` / ``mean``), heads chosen."""
    data, rec_steps = trace.cache.stacked(rec)
    x = data[idx[0]] if len(idx) == 1 else data[idx].mean(0)  # (S, Hd, h, w)
    pos = _step_positions(trace, rec, steps, rec_steps)
    if pos is not None:
        x = x[pos]
    if rec_steps:
        x = x.sum(0) if reduce == "sum" else x.mean(0)
    else:  # streaming: one sum over `count` forwards
        x = x[0] if reduce == "sum" else x[0] / max(rec.count, 1)
    if heads is not None:
        if not rec.per_head:
            raise TraceError(
                "heads=... needs a trace captured with per_head=True (this one kept the "
                "mean over heads)"
            )
        x = x[_head_list(rec, heads, x.shape[0])]
    return x


def layer_maps(
    trace: Trace,
    token: int | str | list[int],
    layers: Any = None,
    resolutions: Any = None,
    steps: Any = None,
    heads: Any = None,
    reduce: str = "mean",
) -> dict[str, torch.Tensor]:
    """Per-layer (h, w) float32 maps at native resolution: tokens merged, steps reduced
    (``reduce`` = "mean" or "sum"), heads averaged. Keys: attn2 names."""
    idx = token_indices(trace, token)
    recs = _select_layers(trace, layers, resolutions)
    return {r.name: _maps(trace, r, idx, steps, heads, reduce).mean(0) for r in recs}


# ---------------------------------------------------------------------------------- heatmap
def _latent(trace: Trace, recs: list[AttentionRecord]) -> tuple[int, int]:
    lat = trace.meta.get("latent")
    if isinstance(lat, (list, tuple)) and len(lat) == 2:
        return int(lat[0]), int(lat[1])
    return max(r.res for r in recs)


def _approx_preset(trace: Trace, preset: str, recs: list[AttentionRecord]):
    """(records kept, step reduction, clamp, default size) of "daam-approx" and "p2p"."""
    if preset == "daam-approx":
        lh, lw = _latent(trace, recs)
        sides = sorted({min(r.res) for r in recs})
        keep = [r for r in recs if min(r.res) * 8 > min(lh, lw)]
        if len(keep) == len(recs) and len(sides) > 2:
            keep = [r for r in recs if min(r.res) > sides[0]]
        if not keep:
            keep = recs
        factor = max(1, math.ceil(64 / max(lh, lw)))
        return keep, "sum", True, (lh * factor, lw * factor)
    if preset == "p2p":
        pool = [r for r in recs if r.location in ("down", "up")] or recs
        sides = sorted({r.res[0] for r in pool}, key=lambda s: (abs(s - 16), -s))
        keep = [r for r in pool if r.res[0] == sides[0]]
        return keep, "mean", False, keep[0].res
    raise TraceError(f"preset={preset!r}: expected one of {list(PRESETS)} or None")


def _check_modes(upsample: str | None, normalize: str | None) -> None:
    if upsample is not None and upsample not in UPSAMPLE_MODES:
        raise TraceError(f"upsample={upsample!r}: expected one of {list(UPSAMPLE_MODES)} or None")
    if normalize not in (None, "none") and normalize not in NORMALIZE_MODES:
        raise TraceError(
            f"normalize={normalize!r}: expected one of {list(NORMALIZE_MODES)} or None"
        )


def _size(size: int | tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        size = default
    elif isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    if size[0] <= 0 or size[1] <= 0:
        raise TraceError(f"size={size}: expected positive (H, W)")
    return size


def heatmap(
    trace: Trace,
    token: int | str | list[int],
    layers: Any = None,
    resolutions: Any = None,
    steps: Any = None,
    heads: Any = None,
    upsample: str | None = "bicubic",
    size: int | tuple[int, int] | None = None,
    normalize: str | None = "minmax",
    preset: str | None = None,
) -> torch.Tensor:
    """One (H, W) float32 CPU heatmap of ``token`` (index, list of indices, or word).

    ``layers``: attn2 names / prefixes, blocks (``"up_blocks.1"``) or locations (``"down"``,
    ``"mid"``, ``"up"``); ``resolutions``: map sides (``16`` or ``(16, 16)``); ``steps``: forward
    indices (int, list, range or slice; mode='steps' traces only) averaged; ``heads``: head
    indices (per_head traces only). Each selected layer's map (per head) is upsampled with
    ``upsample`` to ``size`` (default: the largest selected map), then all are averaged.
    ``normalize``: "minmax" (to [0, 1]), "max" (divide by the max), "sum" (sum to 1) or None.
    ``preset``: "daam", "daam-approx" or "p2p" (module docstring).
    """
    _check_modes(upsample, normalize)
    idx = token_indices(trace, token)
    if preset == "daam":
        return _normalize(daam(trace, idx, layers, resolutions, steps, heads, size), normalize)
    recs = _select_layers(trace, layers, resolutions)
    reduce, clamp, default_size = "mean", False, None
    if preset is not None:
        recs, reduce, clamp, default_size = _approx_preset(trace, preset, recs)
    size = _size(size, default_size or max(r.res for r in recs))
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for rec in recs:
        groups.setdefault(rec.res, []).append(_maps(trace, rec, idx, steps, heads, reduce))
    total = torch.zeros(size, dtype=torch.float32)
    n = 0
    for res, maps in groups.items():
        x = torch.cat(maps, 0).unsqueeze(1)  # (layers x heads, 1, h, w)
        if tuple(res) != size:
            if upsample is None:
                raise TraceError(
                    f"upsample=None but maps of {res[0]}x{res[1]} differ from size "
                    f"{size[0]}x{size[1]}: choose an upsample mode or matching resolutions"
                )
            kw = {} if upsample in ("nearest", "area") else {"align_corners": False}
            x = F.interpolate(x, size=size, mode=upsample, **kw)
        if clamp:
            x = x.clamp_min(0)
        total += x.sum((0, 1))
        n += x.shape[0]
    return _normalize(total / max(n, 1), normalize)


def heatmap_signature() -> inspect.Signature:
    """``heatmap``'s signature as a method (``Trace.heatmap``): one home for its arguments."""
    sig = inspect.signature(heatmap)
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sig.replace(parameters=[self, *list(sig.parameters.values())[1:]])


# ---------------------------------------------------------------------------------- DAAM
def daam_grid(trace: Trace) -> tuple[int, int]:
    """(latent_hw, side) as DAAM 0.2.0 sets them (daam/trace.py:32-33, 109): 4096 / 64 when
    the model's ``sample_size`` x VAE scale factor is 512 or 1024, else 9216 / 96."""
    lat = trace.meta.get("latent")
    config = trace.meta.get("config") or {}
    sample = config.get("sample_size") if isinstance(config, dict) else None
    if isinstance(sample, (list, tuple)):
        sample = sample[0] if sample else None
    if not isinstance(sample, int):
        sample = int(lat[0]) if isinstance(lat, (list, tuple)) and lat else 64
    height, vae = trace.meta.get("height"), trace.meta.get("vae_scale_factor")
    if not isinstance(vae, int) or vae <= 0:  # pipelines record it; else image / latent, else 8
        vae = 8
        if isinstance(height, int) and isinstance(lat, (list, tuple)) and lat and lat[0]:
            vae = max(1, round(height / int(lat[0])))
    latent_hw = daam_latent_hw(sample * vae)
    return latent_hw, math.isqrt(latent_hw)


def daam_latent_hw(image_side: int) -> int:
    """DAAM 0.2.0's ``latent_hw`` for a model of native image side ``image_side`` (its
    ``sample_size`` x VAE factor): 4096 at 512 or 1024 px, else 9216 (daam/trace.py:32-33)."""
    return 4096 if image_side in (512, 1024) else 9216


def daam_upsampled(head_sum: torch.Tensor, side: int) -> torch.Tensor:
    """One layer's per-head time sums ``(..., heads, h, w, k)`` -> ``(..., heads, k, side,
    side)``: every (head, token) map bicubic-upsampled and clamped at 0, as DAAM does
    (daam/trace.py:115-124)."""
    *lead, heads, h, w, k = head_sum.shape
    x = head_sum.float().movedim(-1, -3).reshape(-1, 1, h, w)  # every (head, token) map
    x = F.interpolate(x, size=(side, side), mode="bicubic").clamp_(min=0)
    return x.reshape(*lead, heads, k, side, side)


def daam_average(head_sums: list[torch.Tensor], latent_hw: int) -> torch.Tensor:
    """DAAM 0.2.0's word maps from per-layer per-head time sums ``(..., heads, h, w, k)``:
    layers kept by DAAM's factor rule, each map upsampled (:func:`daam_upsampled`), the mean
    over layers x heads -> ``(..., k, side, side)`` (side = sqrt(latent_hw))."""
    side = math.isqrt(latent_hw)
    total, n = None, 0
    for head_sum in head_sums:
        h, w = head_sum.shape[-3], head_sum.shape[-2]
        if not daam_keeps(h * w, latent_hw):
            continue
        up = daam_upsampled(head_sum, side).sum(-4)
        total = up if total is None else total + up
        n += head_sum.shape[-4]
    if total is None:
        raise TraceError(f"no attention map is kept by DAAM's factor rule at latent_hw={latent_hw}")
    return total / n


def daam_keeps(queries: int, latent_hw: int) -> bool:
    """Whether DAAM records a map of ``queries`` positions: factor = int(sqrt(latent_hw /
    queries)) in its defaults, never 8 (daam/trace.py:285-289, 103-104)."""
    factor = int(math.sqrt(latent_hw // queries))
    return factor != 8 and factor in DAAM_FACTORS


def daam(
    trace: Trace,
    idx: list[int],
    layers: Any = None,
    resolutions: Any = None,
    steps: Any = None,
    heads: Any = None,
    size: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """DAAM 0.2.0's word heat map of token positions ``idx``, unnormalised (docs/trace.md)."""
    if steps is not None:
        raise TraceError(
            "preset='daam' sums every step (DAAM's time aggregation); for a range of steps use "
            "preset='daam-approx' or no preset with steps=..."
        )
    chosen = {r.name for r in _select_layers(trace, layers, resolutions)}
    recs = [r for r in _daam_layers(trace) if r.name in chosen]
    if not recs:
        raise TraceError(
            f"preset='daam' uses the down and up blocks' cross-attention only (never the mid "
            f"block); layers={layers!r} / resolutions={resolutions!r} select none of them"
        )
    latent_hw, side = daam_grid(trace)
    total, n = torch.zeros(side, side), 0
    for rec in _daam_factor_kept(recs, latent_hw):
        head_sum = rec.head_sum  # read once: an app may drop a trace's sums to free memory
        if head_sum is None:
            raise TraceError(
                f"preset='daam': the per-head sums of {rec.name} were dropped while drawing "
                "(an app freeing memory): run again, or use preset='daam-approx'"
            )
        x = head_sum.float()[..., idx]  # (heads, h, w, pieces): DAAM's per-head time sums
        if heads is not None:
            x = x[_head_list(rec, heads, x.shape[0])]
        x = daam_upsampled(x, side)  # (heads, pieces, side, side)
        total += x.sum((0, 1))
        n += x.shape[0] * x.shape[1]
    if not n:
        raise TraceError(
            "preset='daam': no map left: DAAM keeps maps whose int(sqrt(latent_hw / queries)) "
            f"is in {DAAM_FACTORS} (latent_hw={latent_hw} here, from the model's sample_size), "
            "so a latent far from the model's native size has none; use preset='daam-approx'"
        )
    out = total / n  # mean over layers x heads (daam/trace.py:126), then pieces (heatmap.py:123)
    if size is not None and _size(size, (side, side)) != (side, side):  # DAAM's expand_as
        out = F.interpolate(out[None, None], size=_size(size, (side, side)), mode="bicubic")[0, 0]
    return out


def _daam_factor_kept(recs: list[AttentionRecord], latent_hw: int) -> list[AttentionRecord]:
    """The maps DAAM records: factor = int(sqrt(latent_hw / queries)) in its defaults, never
    8 (daam/trace.py:285-289, 103-104)."""
    return [rec for rec in recs if daam_keeps(rec.res[0] * rec.res[1], latent_hw)]


def preset_layers(trace: Trace, preset: str) -> list[str]:
    """The cross-attention layers an aggregation preset reads on ``trace`` (what the app shows
    when a preset is chosen): DAAM's down/up layers that pass its factor rule, or the layers
    ``daam-approx`` / ``p2p`` keep. Needs no per-head sums: it names, it does not compute."""
    if preset == "daam":
        recs = [r for r in trace.attention.values() if r.location in DAAM_LOCATIONS]
        return [r.name for r in _daam_factor_kept(recs, daam_grid(trace)[0])]
    recs = [r for r in trace.attention.values() if r.captured] or list(trace.attention.values())
    if not recs:
        return []
    return [r.name for r in _approx_preset(trace, preset, recs)[0]]


def _daam_layers(trace: Trace) -> list[AttentionRecord]:
    half = trace.meta.get("half", "cond")
    if trace.meta.get("cfg") and half != "cond":
        raise TraceError(
            f"preset='daam' reads the conditional half of the batch (DAAM's), but this trace "
            f"kept half={half!r}: capture with half='cond' (the default) and daam=True"
        )
    recs = [r for r in trace.attention.values() if r.location in DAAM_LOCATIONS and r.captured]
    have = [r for r in recs if r.head_sum is not None]
    if not have:
        raise TraceError(
            "preset='daam' needs each head's attention summed over steps, which this trace did "
            "not keep: capture with daam=True (capture(unet, daam=True), or the pipeline's "
            "capture options), or use preset='daam-approx' (DAAM-like, from the maps kept)"
        )
    return have


def _head_list(rec: AttentionRecord, heads: Any, n: int) -> list[int]:
    hs = _as_list(heads)
    bad = [h for h in hs if not isinstance(h, int) or not 0 <= h < n]
    if bad:
        raise TraceError(f"heads {bad} out of range: {rec.name} has {n} heads")
    return hs


def _normalize(x: torch.Tensor, how: str | None) -> torch.Tensor:
    if how in (None, "none"):
        return x
    if how == "minmax":
        return minmax(x)
    if how == "max":
        hi = x.max()
        return x / hi if hi > 0 else torch.zeros_like(x)
    s = x.sum()
    return x / s if s != 0 else torch.zeros_like(x)
