"""What ``trace.heatmap(...)`` returns: the (H, W) float32 map as a tensor that also remembers
the word and the aggregation recipe that made it, so a notebook cell showing it can say what
it is (the map in the shared colour map, its colour bar, a caption with the word and recipe).

``Heatmap`` is a ``torch.Tensor`` subclass with torch-function dispatch disabled: it *is* the
tensor (``.numpy()``, ``torch.allclose``, indexing, ``safetensors`` all work unchanged) and every
operation on it returns a plain tensor, so nothing downstream ever sees the subclass by
accident. Drawing needs only numpy + PIL + :mod:`unetviz.colors` (no render/ import).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import torch

from ..tokens import label_at

if TYPE_CHECKING:
    from .trace import Trace

_NORMALIZE = {"minmax": "min-max to [0, 1]", "max": "divided by its max", "sum": "sums to 1"}
_PRESETS = {
    "daam": "DAAM 0.2.0: down/up cross-attention, each head summed over steps, upsampled, "
    "clamped at 0, mean over layers x heads",
    "daam-approx": "DAAM-like from the kept maps: smallest maps dropped, head means summed over "
    "steps, upsampled, clamped at 0, mean over layers",
    "p2p": "Prompt-to-Prompt: the ~16x16 down/up maps, mean over layers, heads and steps",
}


class Heatmap(torch.Tensor):
    """An (H, W) float32 heatmap tensor with ``word``, ``tokens`` (positions averaged),
    ``recipe`` (the ``trace.heatmap`` arguments, defaults included) and ``source`` (model /
    prompt), which draws itself in a notebook as one PNG (``_repr_png_``: map, colour bar,
    caption). Operations on it return plain ``torch.Tensor``s."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    word: str
    tokens: list[int]
    recipe: dict[str, Any]
    source: dict[str, Any]

    @classmethod
    def wrap(
        cls,
        tensor: torch.Tensor,
        word: str,
        tokens: list[int],
        recipe: dict[str, Any],
        source: dict[str, Any] | None = None,
    ) -> Heatmap:
        """The same storage viewed as a Heatmap carrying its description."""
        out = tensor.as_subclass(cls)
        out.word, out.tokens = str(word), list(tokens)
        out.recipe, out.source = dict(recipe), dict(source or {})
        return out

    def tensor(self) -> torch.Tensor:
        """The plain tensor (same storage)."""
        return self.as_subclass(torch.Tensor)

    @property
    def caption(self) -> str:
        """One line: the word, its token positions and the recipe in words."""
        return f"{self.word!r} (tokens {', '.join(map(str, self.tokens))}): {self.recipe_text}"

    @property
    def recipe_text(self) -> str:
        """The aggregation recipe in words."""
        return recipe_text(self.recipe, tuple(self.shape))

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        head = getattr(self, "word", None)
        if head is None:  # a bare view made by torch internals
            return repr(self.tensor())
        return f"Heatmap({self.caption})\n{self.tensor()!r}"

    def __deepcopy__(self, memo: dict[int, Any]) -> Heatmap:
        import copy

        return Heatmap.wrap(
            self.tensor().clone(),
            self.word,
            self.tokens,
            copy.deepcopy(self.recipe, memo),
            copy.deepcopy(self.source, memo),
        )

    def __reduce_ex__(self, protocol: Any) -> Any:  # pickle / torch.save: a plain tensor
        return self.tensor().clone().__reduce_ex__(protocol)

    def image(self, side: int = 256) -> Any:
        """PIL image: the map in the colour map with its colour bar and caption under it."""
        return draw(self.tensor(), self.caption, side=side)

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.image().save(buf, format="PNG")
        return buf.getvalue()


def recipe_text(recipe: dict[str, Any], shape: tuple[int, ...] | None = None) -> str:
    """``trace.heatmap`` arguments -> e.g. "preset daam (...); steps all; 64x64, min-max"."""
    parts = []
    preset = recipe.get("preset")
    if preset:
        parts.append(_PRESETS.get(preset, f"preset {preset}"))
    for key in ("layers", "resolutions", "steps", "heads"):
        value = recipe.get(key)
        if value is None:
            continue
        if isinstance(value, slice):
            value = f"{value.start or 0}:{'' if value.stop is None else value.stop}"
        elif isinstance(value, range):
            value = f"{value.start}..{value.stop - 1}"
        parts.append(f"{key} {value}")
    if not preset:
        parts.append("mean over layers, heads and steps")
    size = "x".join(map(str, shape)) if shape else "?"
    up = recipe.get("upsample")
    parts.append(f"{up} to {size}" if up else f"{size}, not upsampled")
    norm = recipe.get("normalize")
    parts.append(_NORMALIZE.get(norm, "raw probabilities") if norm else "raw probabilities")
    return "; ".join(p for p in parts if p)


def heatmap(trace: Trace, token: int | str | list[int], **recipe: Any) -> Heatmap:
    """``unetviz.capture.aggregate.heatmap`` (same arguments), returned as a :class:`Heatmap`
    that knows its word and its full recipe (the arguments given, and the defaults used)."""
    import inspect

    from .aggregate import heatmap as aggregate_heatmap

    out = aggregate_heatmap(trace, token, **recipe)
    params = list(inspect.signature(aggregate_heatmap).parameters.values())[2:]
    recipe = {p.name: p.default for p in params if p.default is not p.empty} | recipe
    indices = trace.token_indices(token)
    if isinstance(token, str):
        word = token
    else:
        labels = [_label(trace, i) for i in indices]
        word = " ".join(labels)
    meta = trace.meta or {}
    source = {k: meta[k] for k in ("model", "prompt", "seed", "steps") if k in meta}
    return Heatmap.wrap(out, word, indices, recipe, source)


def _label(trace: Trace, i: int) -> str:
    return label_at(trace.tokens, i)


def draw(
    heat: Any,
    caption: str = "",
    side: int = 256,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Any:
    """A PIL image: ``heat`` (H, W) through :mod:`unetviz.colors` at ``side`` px (nearest, so
    map cells stay visible), ``caption`` wrapped under it and its colour bar on the scale
    ``vmin``..``vmax`` (default: the map's range)."""
    import textwrap

    import numpy as np
    from PIL import Image

    from .. import colors

    a = np.asarray(heat.detach().cpu().float() if hasattr(heat, "detach") else heat, np.float32)
    lo, hi = colors.scale_of(a)
    vmin, vmax = (lo if vmin is None else vmin), (hi if vmax is None else vmax)
    h, w = a.shape
    scale = max(1, side // max(h, w))
    tile = Image.fromarray(colors.colorize(a, vmin, vmax)).resize(
        (w * scale, h * scale), Image.Resampling.NEAREST
    )
    lines = textwrap.wrap(caption, width=max(40, tile.width // 7)) if caption else []
    return colors.captioned(tile, "", lines, (vmin, vmax), "attention")


__all__ = ["Heatmap", "draw", "heatmap", "recipe_text"]
