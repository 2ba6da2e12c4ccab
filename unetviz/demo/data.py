"""Synthetic captioned shapes with exact masks: the demo model's training and evaluation data.

Every image is ``size`` x ``size`` RGB on a black background with one or two flat-coloured
objects: a shape (circle, square, triangle) in a colour (red, green, blue, yellow), optionally
with a position word (left, right, top, bottom). Captions follow one small grammar::

    a red circle
    a blue square on the left
    a green triangle on the top and a yellow circle

Two-object scenes always use two different shapes and two different colours, placed in
opposite halves of the image (so every noun and colour word names exactly one mask).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
POSITIONS = ("left", "right", "top", "bottom")
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
WORDS = ("a", "on", "the", "and", *COLOURS, *SHAPES, *POSITIONS)


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

    def phrase(self) -> str:
        text = f"a {self.colour} {self.shape}"
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
    raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")


def _centre(rng: random.Random, r: float, size: int, position: str | None) -> tuple[float, float]:
    lo, hi, mid = r + 1.0, size - r - 1.0, size / 2
    x = rng.uniform(lo, hi)
    y = rng.uniform(lo, hi)
    if position == "left":
        x = rng.uniform(lo, max(lo, mid - 2.5))
    elif position == "right":
        x = rng.uniform(min(hi, mid + 2.5), hi)
    elif position == "top":
        y = rng.uniform(lo, max(lo, mid - 2.5))
    elif position == "bottom":
        y = rng.uniform(min(hi, mid + 2.5), hi)
    return x, y


def render(objects: list[ShapeObject], size: int) -> np.ndarray:
    """Paint the objects' masks (already set) onto a black (size, size, 3) float image."""
    image = np.zeros((size, size, 3), np.float32)
    for obj in objects:
        image[obj.mask] = PALETTE[obj.colour]
    return image


def make_scene(
    rng: random.Random,
    size: int = 24,
    n_objects: int | None = None,
    p_position: float = 0.5,
) -> Scene:
    """Draw one random scene (1 or 2 objects) with its caption and exact masks."""
    n = n_objects if n_objects is not None else rng.choice((1, 2))
    objects: list[ShapeObject] = []
    if n == 1:
        r = rng.uniform(0.14, 0.28) * size
        pos = rng.choice(POSITIONS) if rng.random() < p_position else None
        cx, cy = _centre(rng, r, size, pos)
        objects.append(ShapeObject(rng.choice(SHAPES), rng.choice(COLOURS), cx, cy, r, pos))
    elif n == 2:
        shapes = rng.sample(SHAPES, 2)
        colours = rng.sample(COLOURS, 2)
        first = rng.choice(POSITIONS)
        for shape, colour, pos in zip(shapes, colours, (first, OPPOSITE[first]), strict=True):
            r = rng.uniform(0.13, 0.20) * size
            cx, cy = _centre(rng, r, size, pos)
            word = pos if rng.random() < p_position else None
            objects.append(ShapeObject(shape, colour, cx, cy, r, word))
    else:
        raise ValueError(f"n_objects must be 1 or 2, got {n}")
    for obj in objects:
        obj.mask = shape_mask(obj.shape, obj.cx, obj.cy, obj.r, size)
    if n == 2:  # opposite halves rarely touch, but keep masks disjoint and exact
        objects[1].mask &= ~objects[0].mask
    caption = " and ".join(o.phrase() for o in objects)
    return Scene(caption, objects, render(objects, size))


def make_batch(
    rng: random.Random, batch: int, size: int = 24, p_two: float = 0.5
) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """A training batch: images (B, 3, size, size) in [-1, 1], captions and scenes."""
    scenes = [make_scene(rng, size, 2 if rng.random() < p_two else 1) for _ in range(batch)]
    images = np.stack([s.image for s in scenes]).transpose(0, 3, 1, 2)
    return torch.from_numpy(images) * 2 - 1, [s.caption for s in scenes], scenes


def eval_scenes(n: int, size: int = 24, n_objects: int = 1, seed: int = 1234) -> list[Scene]:
    """A fixed evaluation set (same seed, same scenes), one- or two-object captions."""
    rng = random.Random(seed * 10 + n_objects)
    return [make_scene(rng, size, n_objects) for _ in range(n)]
