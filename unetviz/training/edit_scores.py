"""Prompt adherence of a demo-model image, read from its pixels by the demo evaluation's readers
(``unetviz.training.evaluate.adherence``): does the object keep the prompted colour, shape,
position and size after an edit? Used by sweeps in the CLI and the app, and by
scripts/edits_measure.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..edits.spec import EditError


def parse_caption(caption: str) -> Any:
    """A demo caption ("a small red circle on the left and a blue square") -> a ``Scene``
    with its objects (shape, colour, position, size word; no masks, no image)."""
    from .data import COLOURS, POSITIONS, SHAPES, SIZES, Scene, ShapeObject

    objects = []
    for phrase in caption.lower().replace(",", " ").split(" and "):
        words = phrase.split()
        shape = next((w for w in words if w in SHAPES), None)
        colour = next((w for w in words if w in COLOURS), None)
        if shape is None or colour is None:
            raise EditError(
                f"cannot score {caption!r}: every object needs a colour ({', '.join(COLOURS)}) "
                f"and a shape ({', '.join(SHAPES)})"
            )
        position = next((w for w in words if w in POSITIONS), None)
        size = next((w for w in words if w in SIZES), None)
        objects.append(ShapeObject(shape, colour, 0.0, 0.0, 0.0, position, size_word=size))
    return Scene(caption, objects, np.zeros((1, 1, 3), np.float32))


def dominant_colour(image: Any) -> str | None:
    """The palette colour most foreground pixels are closest to (None: no foreground)."""
    from .data import COLOURS
    from .evaluate import classify_pixels

    labels = classify_pixels(np.asarray(image.convert("RGB"), np.float32) / 255)
    fg = labels[labels >= 0]
    return COLOURS[int(np.bincount(fg, minlength=len(COLOURS)).argmax())] if fg.size else None


def demo_scores(prompt: str, image: Any, shapes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``{colour_ok, shape_ok, position_ok, size_ok}`` (fractions of the prompt's objects, None
    where the prompt names no such attribute) and the ``colour`` most pixels have."""
    from .data import SHAPES
    from .evaluate import adherence

    scene = parse_caption(prompt)
    pixels = np.asarray(image.convert("RGB"), np.float32) / 255
    marks = adherence(scene, pixels, shapes or SHAPES)
    out: dict[str, Any] = {
        f"{k}_ok": round(float(np.mean(v)), 3) if v else None for k, v in marks.items()
    }
    out["colour"] = dominant_colour(image)
    return out


def unscorable(words: Any) -> set[str]:
    """The score keys a vocabulary cannot ask for (``position_ok`` for a model without position
    words, ``size_ok`` without size words): columns that would always read "not applicable"."""
    from .data import absent_classes

    return {f"{name}_ok" for name in absent_classes(words)}


def scorer_for(pipe: Any):
    """A ``score(prompt, image)`` for sweeps on a demo pipeline (its known shapes only, and no
    score its vocabulary cannot ask for), or None for any other pipeline."""
    tokenizer = getattr(pipe, "tokenizer", None)
    known = getattr(tokenizer, "words", None)
    if getattr(pipe, "name", None) != "demo" or known is None:
        return None
    from .data import SHAPES

    shapes = tuple(s for s in SHAPES if s in known)
    dropped = unscorable(known)

    def score(prompt: str, image: Any) -> dict[str, Any]:
        scores = demo_scores(prompt, image, shapes)
        return {k: v for k, v in scores.items() if k not in dropped}

    return score
