"""What an intervention is: small frozen records, checked when made, described as JSON.

An edit says *what* to change; :mod:`unetviz.edits.intervene` decides *how* (which hooks on
which named modules) once it sees the model, and fails before any forward if an edit names a
token, block or skip the model does not have.

Step windows (``steps=``) count UNet forwards inside the ``with`` (one per sampling step in
unetviz's pipelines): ``(start, stop)`` as ints is the half-open index range; as floats in
[0, 1] it is a fraction of the schedule (``int(f * steps)``, as prompt-to-prompt rounds), which
needs the step count (pipelines pass it). ``None`` means every step.

Every argument is checked when the edit is made, with an :class:`EditError` naming the bad
value and what was expected: numbers through :mod:`unetviz.callargs` (scales within
``MAX_SCALE``, step indices within ``callargs.MAX_STEPS``), name lists of at most ``MAX_NAMES``
entries. A single string where a list of names is expected (``layers="up"``,
``targets="mid_block"``) is one name, never its characters; a string where edits are
expected (``edits="red"``) is refused.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import Any

from ..callargs import MAX_STEPS, as_float, as_int
from ..errors import UnetvizError

MODES = ("zero", "mean")
#: most names in one list (``layers=``, sweep ``targets=``), edits in one call, and the largest
#: |scale| of a Reweight, ScaleTemb or scaling ablation
MAX_NAMES = 256
MAX_EDITS = 64
MAX_SCALE = 1000.0
MAX_NAME_LENGTH = 512
#: largest token index / skip index an edit may name, and the largest self_max_queries
MAX_INDEX = 4096
MAX_QUERIES = 1 << 24


class EditError(UnetvizError):
    """An edit that cannot apply: bad parameters, or a token / block / skip the model lacks."""


def check_scale(value: Any, what: str) -> float:
    """A scale factor: a finite number within +-MAX_SCALE."""
    return _number(value, what)


def _number(value: Any, what: str) -> float:
    """A scale: a finite number within +-MAX_SCALE (text is refused: this is the Python API)."""
    if isinstance(value, str):
        raise EditError(f"{what}={value!r}: expected a number, got a string")
    return as_float(value, what, -MAX_SCALE, MAX_SCALE, error=EditError)


def _name(value: Any, what: str) -> str:
    """A module name or prefix: a non-empty string of at most MAX_NAME_LENGTH characters."""
    if not isinstance(value, str) or not value.strip():
        raise EditError(f"{what}={value!r}: expected a module name (a non-empty string)")
    if len(value) > MAX_NAME_LENGTH:
        raise EditError(
            f"{what}: a name of {len(value)} characters; expected at most {MAX_NAME_LENGTH}"
        )
    return value


def names(value: Any, what: str, *, ints: bool = False) -> tuple[Any, ...]:
    """A list of names (or, with ``ints``, skip indices): one string is one name; at most
    MAX_NAMES items; anything else is refused naming what was expected."""
    expected = "a name, or a list of names" + (" or skip indices" if ints else "")
    if isinstance(value, (str, bytes)):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise EditError(f"{what}={value!r}: expected {expected}")
    if not value or len(value) > MAX_NAMES:
        raise EditError(f"{what} has {len(value)} items: expected 1 to {MAX_NAMES}")
    out = []
    for item in value:
        if ints and isinstance(item, int) and not isinstance(item, bool):
            out.append(as_int(item, f"{what} index", 0, MAX_INDEX, error=EditError))
        else:
            out.append(_name(item, what))
    return tuple(out)


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
    if any(isinstance(v, (str, bool)) or not isinstance(v, (int, float)) for v in (a, b)):
        raise EditError(f"{what}={steps!r}: expected (start, stop) as two numbers")
    if all(isinstance(v, int) for v in (a, b)):
        a = as_int(a, f"{what} start", 0, MAX_STEPS, error=EditError)
        b = as_int(b, f"{what} stop", 0, MAX_STEPS, error=EditError)
        if b < a:
            raise EditError(f"{what}={steps!r}: expected 0 <= start <= stop")
        return (a, b)
    a = as_float(a, f"{what} start", 0.0, 1.0, error=EditError)
    b = as_float(b, f"{what} stop", 0.0, 1.0, error=EditError)
    if not a <= b:
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
    if not isinstance(layers, (str, list, tuple)):
        raise EditError(
            f"layers={layers!r}: expected 'down', 'mid', 'up', a module name or prefix "
            "(e.g. 'up_blocks.1'), or a list of them"
        )
    return names(layers, "layers")


def _source(value: Any, what: str, method: str) -> Any:
    """A source prompt (a non-empty string) or a Recording (duck-typed: ``method``)."""
    if isinstance(value, str):
        if not value.strip():
            raise EditError(f"{what} '': expected the prompt to take it from")
        return value
    if not callable(getattr(value, method, None)):
        raise EditError(
            f"{what}={value!r}: expected a prompt (a string) or an unetviz.edits.Recording"
        )
    return value


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
        if isinstance(self.token, str) and len(self.token) > MAX_NAME_LENGTH:
            raise EditError(f"Reweight token: {len(self.token)} characters, expected a word")
        if isinstance(self.token, int) and self.token < 0:
            raise EditError(f"Reweight token index {self.token}: expected >= 0")
        if isinstance(self.token, int):
            as_int(self.token, "Reweight token index", 0, MAX_INDEX, error=EditError)
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
        _source(self.source_prompt, "Replace source_prompt", "attention_at")
        if isinstance(self.self_max_queries, str):
            raise EditError(
                f"Replace self_max_queries={self.self_max_queries!r}: expected a whole number "
                f"1..{MAX_QUERIES}, got a string"
            )
        self._set(
            cross_steps=check_steps(self.cross_steps, "cross_steps"),
            self_steps=check_steps(self.self_steps, "self_steps"),
            layers=_layers(self.layers),
            self_max_queries=as_int(
                self.self_max_queries, "Replace self_max_queries", 1, MAX_QUERIES, error=EditError
            ),
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
        if ok_int:
            as_int(self.skip, "AblateSkip skip", 0, MAX_INDEX, error=EditError)
        else:
            _name(self.skip, "AblateSkip skip")
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
        _name(self.name, "AblateBlock name")
        self._set(mode=check_mode(self.mode), steps=check_steps(self.steps))


@dataclass(frozen=True)
class ScaleTemb(Edit):
    """Scale the projected time embedding (``time_emb_proj``'s output) before it is added in
    one resnet, or in every resnet under a block name / prefix (``"all"``: every resnet)."""

    target: str
    scale: float
    steps: tuple | None = None

    def __post_init__(self) -> None:
        _name(self.target, "ScaleTemb target")
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
        _name(self.name, "Patch name")
        _source(self.source, "Patch source", "outputs_at")
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
    if isinstance(edits, (str, bytes)):
        raise EditError(
            f"edits={edits!r}: expected a list of unetviz.edits objects (such as "
            "[edits.Reweight('red', 0.0)]), got a string"
        )
    try:
        items = list(itertools.islice(iter(edits), MAX_EDITS + 1))
    except TypeError:
        raise EditError(f"edits={edits!r}: expected a list of unetviz.edits objects") from None
    if len(items) > MAX_EDITS:
        raise EditError(f"more than {MAX_EDITS} edits in one call: expected at most {MAX_EDITS}")
    for e in items:
        if not isinstance(e, Edit):
            names = ", ".join(c.__name__ for c in EDITS)
            raise EditError(f"edit {e!r} is not an unetviz edit: expected one of {names}")
    return items
