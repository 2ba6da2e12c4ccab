"""One validation of the numbers a user gives a run (seed, steps, guidance, counts), shared by the
Python API, the CLI, every app tab and every API route, so a limit is stated once.

Torch-free and import-light: the app's first page imports it. Every check takes ``error=``, the
error class its caller's users catch (``PipelineError``, the app's ``InputError``, ...).
"""

from __future__ import annotations

import math
import re
from typing import Any

from unetviz.errors import UnetvizError


class ArgumentError(UnetvizError, ValueError):
    """A call argument of the wrong type or out of range; the message names it and the range."""


#: seeds accepted everywhere: torch.Generator's unsigned 64-bit range
MAX_SEED = 2**64 - 1
#: sampling steps one pipeline call may take (diffusers' schedulers train on 1000 timesteps)
MAX_STEPS = 1000
#: sampling steps one run may take on a shared server (every app tab and API route)
APP_MAX_STEPS = 100
#: classifier-free guidance scale accepted by a pipeline call, a batch row and the CLI
MAX_GUIDANCE = 100.0
#: what the app's Run (and its API route) accepts; its slider shows 1..GUIDANCE_SLIDER
APP_MAX_GUIDANCE = 30.0

_INT_TEXT = re.compile(r"[+-]?[0-9]{1,40}")  # ASCII digits only: "²".isdigit() is True
_EXACT_FLOAT = 2**53  # beyond this a float no longer holds every integer


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else repr(value.strip())
    return text if len(text) <= 40 else text[:37] + "..."


def as_int(
    value: Any, name: str, lo: int, hi: int, *, error: type[Exception] = ArgumentError
) -> int:
    """``value`` as an exact int in lo..hi: an int, an integral float below 2**53, or ASCII
    digit text (what form fields send); ``error`` naming ``name`` and the range otherwise."""
    expected = f"expected a whole number {lo}..{hi}"
    if isinstance(value, bool):
        raise error(f"{name}={value!r}: {expected}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer() and abs(value) < _EXACT_FLOAT):
            raise error(f"{name}={_show(value)}: {expected} (a float cannot hold it exactly)")
        n = int(value)
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        n = int(value.strip())
    else:
        raise error(f"{name}={_show(value)}: {expected}")
    if not lo <= n <= hi:
        raise error(f"{name}={n}: {expected}")
    return n


def as_float(
    value: Any, name: str, lo: float, hi: float, *, error: type[Exception] = ArgumentError
) -> float:
    """``value`` as a finite float in lo..hi (ints, floats or number text); NaN and inf fail."""
    expected = f"expected a number {lo:g}..{hi:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise error(f"{name}={_show(value)}: {expected}")
    try:
        x = float(value)
    except (ValueError, OverflowError):
        raise error(f"{name}={_show(value)}: {expected}") from None
    if not lo <= x <= hi:  # NaN fails too
        raise error(f"{name}={_show(value)}: {expected}")
    return x


def index_or_name(text: str) -> int | str:
    """A command-line item that names a thing by index or by name (a token, a skip): ASCII
    digits give an int ("3" -> 3), anything else the stripped text ("²" stays text: Python's
    ``str.isdigit`` accepts superscripts that ``int`` then refuses)."""
    t = text.strip()
    return int(t) if t[:1] not in "+-" and _INT_TEXT.fullmatch(t) else t


def check_seed(value: Any, name: str = "seed", *, error: type[Exception] = ArgumentError) -> int:
    """A seed in 0..MAX_SEED, exact (a float above 2**53 is refused, never rounded)."""
    return as_int(value, name, 0, MAX_SEED, error=error)


def check_steps(
    value: Any, hi: int = MAX_STEPS, *, name: str = "steps", error: type[Exception] = ArgumentError
) -> int:
    """Sampling steps in 1..hi (MAX_STEPS for a call, APP_MAX_STEPS on a shared server)."""
    return as_int(value, name, 1, hi, error=error)


def check_guidance(
    value: Any,
    lo: float = 0.0,
    hi: float = MAX_GUIDANCE,
    *,
    name: str = "guidance",
    error: type[Exception] = ArgumentError,
) -> float:
    """A finite guidance scale in lo..hi."""
    return as_float(value, name, lo, hi, error=error)


def uses_cfg(guidance: float) -> bool:
    """Whether a run does classifier-free guidance: diffusers' rule, ``guidance_scale > 1``."""
    return guidance > 1.0
