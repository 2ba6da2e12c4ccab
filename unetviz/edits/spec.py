"""What an intervention is: small frozen records, checked when made, described as JSON.

An edit says *what* to change; :mod:`unetviz.edits.intervene` decides *how* (which hooks on
which named modules) once it sees the model, and fails before any forward if an edit names a
token, block or skip the model does not have.

Step windows (``steps=``) count UNet forwards inside the ``with`` (one per sampling step in
unetviz's pipelines): ``(start, stop)`` as ints is the half-open index range; as floats in
[0, 1] it is a fraction of the schedule (``int(f * steps)``, as prompt-to-prompt rounds), which
needs the step count (pipelines pass it). ``None`` means every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import UnetvizError

MODES = ("zero", "mean")


class EditError(UnetvizError):
    """An edit that cannot apply: bad parameters, or a token / block / skip the model lacks."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EditError(f"{what}={value!r}: expected a finite number")
    return float(value)


def check_steps(steps: Any, what: str = "steps") -> tuple[float, float] | tuple[int, int] | None:
    """``None``, ``(start, stop)`` ints >= 0, or ``(start, stop)`` fractions in [0, 1]; a single
    number ``f`` means ``(0, f)`` (prompt-to-prompt's ``cross_replace_steps=0.8``)."""
    if steps is None:
        return None
    if isinstance(steps, (int, float)) and not isinstance(steps, bool):
        steps = (0.0 if isinstance(steps, float) else 0, steps)
    if not isinstance(steps, (tuple, list)) or len(steps) != 2:
        raise EditError(
            f"{what}={steps!r}: expected None, (start, stop) step indices or (start, stop) "
            "fractions of the schedule in [0, 1]"
        )
    a, b = steps
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
        if a < 0 or b < a:
            raise EditError(f"{what}={steps!r}: expected 0 <= start <= stop")
        return (a, b)
    a, b = _number(a, what), _number(b, what)
    if not 0.0 <= a <= b <= 1.0:
        raise EditError(f"{what}={steps!r}: fractions must satisfy 0 <= start <= stop <= 1")
    return (a, b)


def window(steps: tuple | None, total: int | None, what: str) -> tuple[int, int] | None:
    """A checked step window as a half-open range of forward indices (None: every forward)."""
    if steps is None:
        return None
    a, b = steps
    if isinstance(a, int) and isinstance(b, int):
        return (a, b)
    if total is None:
        raise EditError(
            f"{what} gives steps as fractions {steps!r} but the number of sampling steps is "
            "unknown: pass num_steps= to intervene (pipelines do) or give step indices"
        )
    return (int(a * total), int(b * total))


def check_mode(mode: Any) -> str | float:
    """``"zero"``, ``"mean"`` (spatial mean per channel) or a scale factor."""
    if isinstance(mode, str):
        if mode not in MODES:
            raise EditError(f"mode={mode!r}: expected 'zero', 'mean' or a scale factor")
        return mode
    return _number(mode, "mode")


def _layers(layers: Any) -> tuple[str, ...] | None:
    if layers is None:
        return None
    items = (layers,) if isinstance(layers, str) else tuple(layers)
    if not items or not all(isinstance(x, str) and x for x in items):
        raise EditError(
            f"layers={layers!r}: expected 'down', 'mid', 'up', a module name or prefix "
            "(e.g. 'up_blocks.1'), or a list of them"
        )
    return items


@dataclass(frozen=True)
class Edit:
    """Base of every edit: ``describe()`` is what ``trace.meta["edits"]`` records."""

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"edit": type(self).__name__}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif not isinstance(value, (str, int, float, bool, type(None), list)):
                value = f"<{type(value).__name__}>"  # a Recording: not JSON
            out[f.name] = value
        return out

    def _set(self, **values: Any) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)


@dataclass(frozen=True)
class Reweight(Edit):
    """Prompt-to-prompt's attention re-weighting ("equalizer"): multiply the cross-attention
    probabilities of ``token`` (a prompt word, a token label or a token index) by ``scale``
    after the softmax, without renormalising, in the conditional half of a CFG batch.
    ``scale=0`` removes the word from the chosen ``layers`` (None: every cross-attention)."""

    token: str | int
    scale: float
    layers: tuple[str, ...] | None = None
    steps: tuple | None = None

    def __post_init__(self) -> None:
        if isinstance(self.token, bool) or not isinstance(self.token, (str, int)):
            raise EditError(f"Reweight token {self.token!r}: expected a word or a token index")
        if isinstance(self.token, str) and not self.token.strip():
            raise EditError("Reweight token '': expected a word of the prompt")
        if isinstance(self.token, int) and self.token < 0:
            raise EditError(f"Reweight token index {self.token}: expected >= 0")
        self._set(
            scale=_number(self.scale, "Reweight scale"),
            layers=_layers(self.layers),
            steps=check_steps(self.steps),
        )


@dataclass(frozen=True)
class Replace(Edit):
    """Prompt-to-prompt word swap: the edited prompt's cross-attention probabilities are the
    source prompt's (same seed) for the first ``cross_steps``, and its self-attention
    probabilities too for the first ``self_steps`` in maps of at most ``self_max_queries``
    queries (P2P: 16x16). ``source_prompt`` is a prompt (pipelines run it first) or a
    :class:`~unetviz.edits.intervene.Recording` of its attention."""

    source_prompt: Any
    cross_steps: Any = 0.8
    self_steps: Any = 0.4
    layers: tuple[str, ...] | None = None
    self_max_queries: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.source_prompt, str) and not self.source_prompt.strip():
            raise EditError("Replace source_prompt '': expected the prompt to take maps from")
        self._set(
            cross_steps=check_steps(self.cross_steps, "cross_steps"),
            self_steps=check_steps(self.self_steps, "self_steps"),
            layers=_layers(self.layers),
        )


@dataclass(frozen=True)
class AblateSkip(Edit):
    """Zero, mean-ablate or scale one skip tensor where its up-block resnet concatenates it:
    ``skip`` is its index in the skip stack (``trace.skips[i].index``) or ``"src -> dst"``
    (names or prefixes, e.g. ``"down_blocks.1 -> up_blocks.2.resnets.0"``)."""

    skip: int | str
    mode: str | float = "zero"
    steps: tuple | None = None

    def __post_init__(self) -> None:
        ok_int = isinstance(self.skip, int) and not isinstance(self.skip, bool) and self.skip >= 0
        if not ok_int and not (isinstance(self.skip, str) and "->" in self.skip):
            raise EditError(
                f"AblateSkip skip={self.skip!r}: expected a skip index >= 0 or 'source -> target'"
            )
        self._set(mode=check_mode(self.mode), steps=check_steps(self.steps))


@dataclass(frozen=True)
class AblateBlock(Edit):
    """Zero, mean-ablate (spatial mean per channel) or scale the output of a named module: a
    block (``down_blocks.1``, ``mid_block``), a resnet, a transformer, or a transformer's
    ``attn1``, ``attn2`` or ``ff``. A down block's pushed skip tensors are edited with it."""

    name: str
    mode: str | float = "zero"
    steps: tuple | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise EditError(f"AblateBlock name={self.name!r}: expected a module name")
        self._set(mode=check_mode(self.mode), steps=check_steps(self.steps))


@dataclass(frozen=True)
class ScaleTemb(Edit):
    """Scale the projected time embedding (``time_emb_proj``'s output) before it is added in
    one resnet, or in every resnet under a block name / prefix (``"all"``: every resnet)."""

    target: str
    scale: float
    steps: tuple | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise EditError(f"ScaleTemb target={self.target!r}: expected a resnet or block name")
        self._set(scale=_number(self.scale, "ScaleTemb scale"), steps=check_steps(self.steps))


@dataclass(frozen=True)
class Patch(Edit):
    """Activation patching: replace module ``name``'s output at the chosen steps with the one
    from a source run (``source``: another prompt, run with the same seed by the pipeline, or
    a :class:`~unetviz.edits.intervene.Recording`). ``half`` "both" patches the whole batch,
    "cond" only the conditional half of a CFG batch."""

    name: str
    source: Any
    steps: tuple | None = None
    half: str = "both"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise EditError(f"Patch name={self.name!r}: expected a module name")
        if isinstance(self.source, str) and not self.source.strip():
            raise EditError("Patch source '': expected a prompt or a Recording")
        if self.half not in ("both", "cond"):
            raise EditError(f"Patch half={self.half!r}: expected 'both' or 'cond'")
        self._set(steps=check_steps(self.steps))


EDITS = (Reweight, Replace, AblateSkip, AblateBlock, ScaleTemb, Patch)


def check_edits(edits: Any) -> list[Edit]:
    """A list of edits (None: no edit); anything else is refused with what is expected."""
    if edits is None:
        return []
    if isinstance(edits, Edit):
        edits = [edits]
    try:
        items = list(edits)
    except TypeError:
        raise EditError(f"edits={edits!r}: expected a list of unetviz.edits objects") from None
    for e in items:
        if not isinstance(e, Edit):
            names = ", ".join(c.__name__ for c in EDITS)
            raise EditError(f"edit {e!r} is not an unetviz edit: expected one of {names}")
    return items
