"""Synthetic captioned shapes with exact masks: the demo model's training and evaluation data.

Every image is ``size`` x ``size`` RGB (96 for the latent model) on a black background with one
or two flat-coloured objects: a shape (circle, square, triangle, diamond) in a colour (red,
green, blue, yellow, white), optionally with a size word (small, big) and a position word
(left, right, top, bottom). Captions follow one small grammar::

    a red circle
    a small blue square on the left
    a green triangle on the top and a big yellow diamond

Two-object scenes always use two different shapes and two different colours, placed in
opposite halves of the image (so every noun and colour word names exactly one mask).
Every draw can be restricted to a model's vocabulary (``words=``), so a model that knows fewer
words (the v1 pixel model) is scored on captions it can read.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "white")
POSITIONS = ("left", "right", "top", "bottom")
SIZES = ("small", "big")
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "white": (1.0, 1.0, 1.0),
}
WORDS = ("a", "on", "the", "and", *COLOURS, *SHAPES, *POSITIONS, *SIZES)
# radius ranges as fractions of the image side: (one object, two objects)
RADIUS = {
    None: ((0.14, 0.28), (0.12, 0.20)),
    "small": ((0.12, 0.17), (0.10, 0.14)),
    "big": ((0.24, 0.32), (0.18, 0.22)),
}
#: the attribute a word names, by class (what the evaluation and the edit scores read)
WORD_CLASSES = {"colour": COLOURS, "shape": SHAPES, "position": POSITIONS, "size": SIZES}
MAX_TOKENS = 20  # the longest caption has 15 words, plus <bos> and <eos>
SIZE_SPLIT = {1: 0.205, 2: 0.16}  # radius fraction between "small" and "big" (for scoring)


@dataclass
class ShapeObject:
    """One object of a scene: what it is, where it is, and its exact pixel mask."""

    shape: str
    colour: str
    cx: float
    cy: float
    r: float
    position: str | None = None  # the position word used in the caption, if any
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool), repr=False)
    size_word: str | None = None  # "small" / "big" when the caption says so

    def phrase(self) -> str:
        words = ["a", self.size_word, self.colour, self.shape]
        text = " ".join(w for w in words if w)
        return text if self.position is None else f"{text} on the {self.position}"


@dataclass
class Scene:
    """A rendered scene: caption, objects (in caption order) and the float image in [0, 1]."""

    caption: str
    objects: list[ShapeObject]
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]

    def word_mask(self, word: str) -> np.ndarray | None:
        """The exact mask of the object a noun or colour word names (None if not in caption)."""
        for obj in self.objects:
            if word in (obj.shape, obj.colour):
                return obj.mask
        return None


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape centred at (cx, cy) with radius-like size r."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if shape == "square":
        h = r * 0.9
        return (np.abs(xs - cx) <= h) & (np.abs(ys - cy) <= h)
    if shape == "triangle":  # upright isosceles: apex at the top, base 2r wide at the bottom
        top, bottom = cy - r, cy + r
        frac = (ys - top) / (2 * r)
        return (ys >= top) & (ys <= bottom) & (np.abs(xs - cx) <= frac * r)
    if shape == "diamond":  # a square standing on a corner
        return np.abs(xs - cx) + np.abs(ys - cy) <= r
    raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")


def _centre(rng: random.Random, r: float, size: int, position: str | None) -> tuple[float, float]:
    lo, hi, mid = r + 1.0, size - r - 1.0, size / 2
    gap = size * 2.5 / 24  # keep clear of the midline so the half is unambiguous
    x = rng.uniform(lo, hi)
    y = rng.uniform(lo, hi)
    if position == "left":
        x = rng.uniform(lo, max(lo, mid - gap))
    elif position == "right":
        x = rng.uniform(min(hi, mid + gap), hi)
    elif position == "top":
        y = rng.uniform(lo, max(lo, mid - gap))
    elif position == "bottom":
        y = rng.uniform(min(hi, mid + gap), hi)
    return x, y


def render(objects: list[ShapeObject], size: int) -> np.ndarray:
    """Paint the objects' masks (already set) onto a black (size, size, 3) float image."""
    image = np.zeros((size, size, 3), np.float32)
    for obj in objects:
        image[obj.mask] = PALETTE[obj.colour]
    return image


def _known(options: tuple[str, ...], words: Collection[str] | None) -> tuple[str, ...]:
    return options if words is None else tuple(o for o in options if o in words)


def _object(
    rng: random.Random, n: int, size: int, pos: str | None, words: Collection[str] | None
) -> tuple[float, str | None]:
    """Radius and size word (None when the caption says no size) of one object."""
    sizes = _known(SIZES, words)
    size_word = rng.choice(sizes) if sizes and rng.random() < 0.5 else None
    lo, hi = RADIUS[size_word][n - 1]
    return rng.uniform(lo, hi) * size, size_word


def make_scene(
    rng: random.Random,
    size: int = 96,
    n_objects: int | None = None,
    p_position: float = 0.5,
    words: Collection[str] | None = None,
) -> Scene:
    """Draw one random scene (1 or 2 objects) with its caption and exact masks; ``words``
    restricts the draw to a vocabulary."""
    shapes, colours = _known(SHAPES, words), _known(COLOURS, words)
    positions = _known(POSITIONS, words)
    n = n_objects if n_objects is not None else rng.choice((1, 2))
    objects: list[ShapeObject] = []
    if n == 1:
        pos = rng.choice(positions) if positions and rng.random() < p_position else None
        r, size_word = _object(rng, 1, size, pos, words)
        cx, cy = _centre(rng, r, size, pos)
        obj = ShapeObject(rng.choice(shapes), rng.choice(colours), cx, cy, r, pos)
        obj.size_word = size_word
        objects.append(obj)
    elif n == 2:
        pair_shapes, pair_colours = rng.sample(shapes, 2), rng.sample(colours, 2)
        first = rng.choice(POSITIONS)
        for shape, colour, pos in zip(
            pair_shapes, pair_colours, (first, OPPOSITE[first]), strict=True
        ):
            r, size_word = _object(rng, 2, size, pos, words)
            cx, cy = _centre(rng, r, size, pos)
            word = pos if positions and rng.random() < p_position else None
            obj = ShapeObject(shape, colour, cx, cy, r, word)
            obj.size_word = size_word
            objects.append(obj)
    else:
        raise ValueError(f"n_objects must be 1 or 2, got {n}")
    for obj in objects:
        obj.mask = shape_mask(obj.shape, obj.cx, obj.cy, obj.r, size)
    if n == 2:  # opposite halves rarely touch, but keep masks disjoint and exact
        objects[1].mask &= ~objects[0].mask
    caption = " and ".join(o.phrase() for o in objects)
    return Scene(caption, objects, render(objects, size))


def absent_classes(words: Collection[str]) -> set[str]:
    """The word classes a vocabulary has no word of (a model without position words cannot be
    asked for a position, so there is nothing to score). Torch-free: the app reads it."""
    known = set(words)
    return {name for name, group in WORD_CLASSES.items() if not known & set(group)}


def without_positions(caption: str) -> str:
    """The caption with its position phrases (" on the left", ...) removed: the captions of a
    model that does not know position words (the scene itself is unchanged)."""
    for word in POSITIONS:
        caption = caption.replace(f" on the {word}", "")
    return caption


def make_batch(
    rng: random.Random,
    batch: int,
    size: int = 96,
    p_two: float = 0.5,
    words: Collection[str] | None = None,
) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """A training batch: images (B, 3, size, size) in [-1, 1], captions and scenes."""
    scenes = [
        make_scene(rng, size, 2 if rng.random() < p_two else 1, words=words) for _ in range(batch)
    ]
    import torch

    images = np.stack([s.image for s in scenes]).transpose(0, 3, 1, 2)
    return torch.from_numpy(images) * 2 - 1, [s.caption for s in scenes], scenes


def eval_scenes(
    n: int,
    size: int = 96,
    n_objects: int = 1,
    seed: int = 1234,
    words: Collection[str] | None = None,
) -> list[Scene]:
    """A fixed evaluation set (same seed, same scenes), one- or two-object captions."""
    rng = random.Random(seed * 10 + n_objects)
    return [make_scene(rng, size, n_objects, words=words) for _ in range(n)]
