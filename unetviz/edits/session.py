"""Edits inside a pipeline call: ``pipe(prompt, ..., edits=[...])`` and ``pipe.compare(...)``.

Both pipelines call :func:`for_pipeline` once the prompt is tokenized and enter what it returns
around their capture; ``compare`` is bound as a method of both. Patch and Replace name a source
prompt: it is run first with the same seed, steps, guidance and size, and only what the edits
need is kept (one module's outputs, or the attention probabilities of the replaced layers).
Duck-typed on the pipeline (``pipe.unet``, ``pipe(prompt, ...)``): nothing here imports
``unetviz.pipelines``, which imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..presenters import present
from .intervene import Intervention, Recording
from .model_map import ModelMap
from .probes import SourceRecorder
from .spec import Edit, EditError, Patch, Replace, check_edits, window


def _source_of(edit: Edit) -> Any:
    if isinstance(edit, Patch):
        return edit.source
    if isinstance(edit, Replace):
        return edit.source_prompt
    return None


def for_pipeline(
    pipe: Any,
    edits: Sequence[Edit] | Edit | None,
    *,
    tokens: Sequence[str],
    words: Sequence[str | None],
    steps: int,
    cfg: bool,
    call: dict[str, Any],
) -> Intervention:
    """The :class:`Intervention` for one pipeline call: every edit checked against the model
    and the prompt's tokens first (before any forward), then source prompts run (``call``: the
    keyword arguments of the call, less prompt and edits), then the final Intervention."""
    items = check_edits(edits)
    if not items:
        return Intervention(pipe.unet, None)
    prompts = {s for e in items if isinstance(s := _source_of(e), str)}
    placeholders = {p: Recording(prompt=p) for p in prompts}
    common = dict(tokens=tokens, words=words, num_steps=int(steps), cfg=cfg)
    Intervention(pipe.unet, items, **common, sources=placeholders)  # checks, no forward
    sources = {p: _run_source(pipe, p, items, common, call) for p in sorted(prompts)}
    for prompt, rec in sources.items():
        _check_same_tokens(prompt, rec, tokens, words, items)
    return Intervention(pipe.unet, items, **common, sources=sources)


def _run_source(
    pipe: Any, prompt: str, items: list[Edit], common: dict[str, Any], call: dict[str, Any]
) -> Recording:
    """Run ``prompt`` with the call's seed and settings, keeping only what its edits need."""
    mm = ModelMap(pipe.unet)
    rec = Recording(prompt=prompt)
    probes = []
    n = common["num_steps"]
    for e in items:
        if _source_of(e) != prompt:
            continue
        if isinstance(e, Patch):
            probes.append(SourceRecorder(rec, [e.name], [], window(e.steps, n, repr(e))))
        elif isinstance(e, Replace):
            cross = mm.attention_layers(e.layers, True, repr(e))
            selfs = mm.attention_layers(e.layers, False, repr(e))
            probes.append(SourceRecorder(rec, [], cross, window(e.cross_steps, n, repr(e))))
            w = window(e.self_steps, n, repr(e))
            probes.append(SourceRecorder(rec, [], selfs, w, max_queries=e.self_max_queries))
    keep = Intervention(pipe.unet, None, cfg=common["cfg"], probes=probes)
    light = {"detail": "blocks", "attention": False, "temb": False}
    with keep:
        run = pipe(prompt, **call, **light)
    rec.tokens = list(run.tokens)
    rec.words = list(run.words)
    return rec


def _check_same_tokens(prompt, rec, tokens, words, items) -> None:
    """P2P's word swap aligns token positions: the two prompts need as many tokens."""
    if not any(isinstance(e, Replace) and e.source_prompt == prompt for e in items):
        return
    n_src = sum(w is not None for w in rec.words)
    n_dst = sum(w is not None for w in words)
    if n_src != n_dst:
        raise EditError(
            f"Replace: source prompt {prompt!r} has {n_src} word tokens, the prompt {n_dst}: "
            "a word swap needs prompts of the same token length (swap words of as many tokens)"
        )


@dataclass
class Comparison:
    """``pipe.compare(...)``: the same call without and with edits. ``diff`` is the per-pixel
    mean absolute RGB difference in [0, 1], shape (H, W)."""

    base: Any
    edited: Any
    diff: np.ndarray
    edits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def score(self) -> float:
        """Mean absolute pixel change over the image, in [0, 1]."""
        return float(self.diff.mean())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Notebook display: base | edited | difference and the edits (unetviz.report)."""
        return present("comparison_mimebundle", self)

    def diff_image(self) -> Any:
        """The difference as a greyscale PIL image (white: the largest possible change)."""
        from PIL import Image

        return Image.fromarray((np.clip(self.diff, 0, 1) * 255).round().astype(np.uint8), "L")


def pixel_diff(a: Any, b: Any) -> np.ndarray:
    """Per-pixel mean absolute difference of two RGB images, in [0, 1]."""
    x = np.asarray(a.convert("RGB"), np.float32) / 255
    y = np.asarray(b.convert("RGB"), np.float32) / 255
    if x.shape != y.shape:
        raise EditError(f"images of different sizes: {x.shape[:2]} and {y.shape[:2]}")
    return np.abs(x - y).mean(-1)


def compare(self: Any, prompt: str, edits: Sequence[Edit] | Edit, seed: int = 0, **kwargs: Any):
    """``pipe.compare(prompt, edits=[...], seed=0, **call)`` -> :class:`Comparison`. The edited
    run goes first, so a bad edit fails before the model runs at all."""
    if not check_edits(edits):
        raise EditError("compare needs at least one edit: edits=[...]")
    edited = self(prompt, seed=seed, edits=edits, **kwargs)
    base = self(prompt, seed=seed, **kwargs)
    return Comparison(
        base=base,
        edited=edited,
        diff=pixel_diff(base.image, edited.image),
        edits=list(edited.trace.meta.get("edits", [])),
    )
