"""The demo prompt set: captions and exact per-word masks from the demo's scene generator.

This is the one place the batch package imports the demo data code (being moved from
``unetviz.demo`` to ``unetviz.training``): both names are tried.

Two kinds of masks exist for a demo caption:
- *layout* masks (written to ``masks/NNNNN.npz``): where the scene generator put each object.
  A free generation from noise need not follow the layout (the shipped model ignores position
  words: position adherence 0.29 / 0.45), so scoring maps against it mixes "does the map find
  the object" with "did the model put the object where the caption said".
- *generated* masks (``mask_source="generated"``, the demo set's default): each object's
  pixels in the generated image, found by its palette colour (the demo draws flat palette
  colours on black, so this is exact). This is DAAM's protocol: maps scored against where the
  object actually is in the generated image.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unetviz.callargs import as_int
from unetviz.detect import demo_geometry, demo_words
from unetviz.outputs import write_file

from .rows import BatchError

DEMO_SET_SEED = 20261129
#: captions one demo set may hold
MAX_DEMO_SET = 100_000


def check_count(n: Any) -> int:
    """The size of a demo set: a whole number 1..MAX_DEMO_SET."""
    return as_int(n, "--demo-set", 1, MAX_DEMO_SET, error=BatchError)


def _module(name: str) -> Any:
    for package in ("unetviz.training", "unetviz.demo"):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith(package):
                raise
    raise BatchError(f"the demo {name} module is not installed (unetviz.training.{name})")


def data_module() -> Any:
    """The demo scene generator module (``SHAPES``, ``COLOURS``, ``PALETTE``, ``make_scene``)."""
    return _module("data")


def demo_folder(model: str) -> Path:
    """The folder of a demo model name (``demo``) or path."""
    if model == "demo":
        from unetviz.pipelines.demo import DEMO_DIR

        return Path(DEMO_DIR)
    return Path(model)


def demo_vocabulary(model: str) -> tuple[list[str], int]:
    """(words the model knows, image side) read from the model folder (no weights)."""
    folder = demo_folder(model)
    try:
        words = demo_words(folder)
        size = int(json.loads((folder / "unet" / "config.json").read_text())["sample_size"])
        size *= demo_geometry(folder)[0]  # a latent model: the latent times the VAE's factor
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BatchError(
            f"--demo-set needs a demo model (tokenizer/vocab.json, unet/config.json); "
            f"{model!r} is not one: {exc}"
        ) from None
    return words, size


def known_classes() -> dict[str, str]:
    """Word classes of the demo vocabulary: noun (shapes), colour, position, size, function."""
    data = data_module()
    out = {w: "function" for w in ("a", "on", "the", "and")}
    out.update({w: "noun" for w in data.SHAPES})
    out.update({w: "colour" for w in data.COLOURS})
    out.update({w: "position" for w in data.POSITIONS})
    out.update({w: "size" for w in getattr(data, "SIZES", ())})
    return out


def _scene(data: Any, rng: random.Random, size: int, words: list[str]) -> Any:
    kwargs: dict[str, Any] = {}
    if "words" in inspect.signature(data.make_scene).parameters:
        kwargs["words"] = words
    return data.make_scene(rng, size, **kwargs)


def _object_words(obj: Any) -> list[str]:
    return [w for w in (obj.shape, obj.colour, getattr(obj, "size_word", None)) if w]


def make_demo_set(
    n: int, folder: Path, model: str = "demo", claim: Callable[[list[str]], None] | None = None
) -> Path:
    """Write ``prompts.jsonl`` and ``masks/NNNNN.npz`` (layout masks of every noun, colour
    and size word) for ``n`` scenes into ``folder`` (which has a ``masks/`` subfolder);
    ``claim(names)`` is told every file before it is written. Returns the prompts file.
    Deterministic: the same ``n`` and model give the same set, so a rerun resumes."""
    check_count(n)
    data = data_module()
    words, size = demo_vocabulary(model)
    rng = random.Random(DEMO_SET_SEED)
    if claim is not None:
        claim(["prompts.jsonl"] + [f"masks/{i:05d}.npz" for i in range(n)])
    lines = []
    for i in range(n):
        scene = _scene(data, rng, size, words)
        masks = {w: obj.mask for obj in scene.objects for w in _object_words(obj)}
        buf = io.BytesIO()
        np.savez_compressed(buf, **masks)
        rel = f"masks/{i:05d}.npz"
        write_file(folder / rel, buf.getvalue())
        lines.append(json.dumps({"prompt": scene.caption, "seed": i, "masks": rel}))
    return write_file(folder / "prompts.jsonl", "\n".join(lines) + "\n")


def generated_masks(caption: str, image: np.ndarray) -> dict[str, np.ndarray]:
    """Per-word masks of a generated demo image: each caption object's palette-colour pixels
    (one object: every foreground pixel). ``image`` is (H, W, 3) uint8."""
    data = data_module()
    labels = _module("evaluate").classify_pixels(image.astype(np.float32) / 255.0)
    phrases = [p.split() for p in caption.lower().split(" and ")]
    out: dict[str, np.ndarray] = {}
    for words in phrases:
        colour = next((w for w in words if w in data.COLOURS), None)
        if colour is None:
            continue
        mask = labels >= 0 if len(phrases) == 1 else labels == data.COLOURS.index(colour)
        sizes = set(getattr(data, "SIZES", ()))
        for w in words:
            if w in data.SHAPES or w in data.COLOURS or w in sizes:
                out[w] = mask
    return out
