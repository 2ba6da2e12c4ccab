"""What a capture records: one frozen, validated options object, and the detail levels.

``DETAILS`` is the one home of the detail levels: render/, the CLI and the app import it
from here (``from unetviz.capture.options import DETAILS``). This module does not import torch
(the package's names load lazily), so the CLI can read ``DETAILS`` and still start fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import TraceError

#: Detail levels of block records, each including the previous (docs/trace.md "Names").
DETAILS = ("blocks", "layers", "modules")
MODES = ("steps", "stream")
HALVES = ("cond", "uncond", "both")
ATTENTION_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of per-step attention maps kept on CPU
MAX_SELF_ATTENTION_POINTS = 64


@dataclass(frozen=True)
class CaptureOptions:
    """Every ``capture(...)`` keyword, validated once; see ``Capture`` for their meaning."""

    detail: str = "layers"
    attention: bool | tuple[str, ...] = True
    temb: bool = True
    mode: str = "steps"
    half: str = "cond"
    cfg: bool | None = None
    per_head: bool = False
    daam: bool = False
    attention_dtype: Any = None  # a torch dtype; None: torch.float16
    memory_budget: int | None = DEFAULT_MEMORY_BUDGET
    self_attention_layers: tuple[str, ...] | None = None
    self_attention_points: tuple[tuple[float, float], ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    features: bool | str | None = False  # feature pictures: "blocks" / "layers" (features.py)

    def __post_init__(self) -> None:
        _check_choice("detail", self.detail, DETAILS)
        from .features import features_level

        object.__setattr__(self, "features", features_level(self.features))
        if self.mode not in MODES:
            raise TraceError(
                f"mode={self.mode!r}: expected 'steps' (keep every step's maps) or 'stream' "
                "(sum over steps, constant memory)"
            )
        _check_choice("half", self.half, HALVES)
        import torch

        if self.attention_dtype is None:
            object.__setattr__(self, "attention_dtype", torch.float16)
        allowed = [getattr(torch, name) for name in ATTENTION_DTYPES]
        if self.attention_dtype not in allowed:
            raise TraceError(
                f"attention_dtype={self.attention_dtype}: expected torch.float16, bfloat16 or "
                "float32"
            )
        budget = self.memory_budget
        if budget is not None and (isinstance(budget, bool) or budget <= 0):
            raise TraceError(f"memory_budget={budget}: expected bytes > 0 or None")
        object.__setattr__(self, "attention", _names_or_flag(self.attention))
        object.__setattr__(self, "meta", dict(self.meta or {}))
        self._check_self_attention()

    def _check_self_attention(self) -> None:
        layers, points = self.self_attention_layers, self.self_attention_points
        if (layers is None) != (points is None):
            raise TraceError(
                "self-attention capture needs both self_attention_layers (attn1 names or "
                "prefixes) and self_attention_points ((y, x) fractions in [0, 1])"
            )
        if layers is None:
            return
        names = (layers,) if isinstance(layers, str) else tuple(layers)
        points = tuple(points or ())
        if not points or len(points) > MAX_SELF_ATTENTION_POINTS:
            raise TraceError(
                f"self_attention_points has {len(points)} points: expected 1 to "
                f"{MAX_SELF_ATTENTION_POINTS} (y, x) query points"
            )
        for p in points:
            if (
                not isinstance(p, (tuple, list))
                or len(p) != 2
                or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in p)
            ):
                raise TraceError(
                    f"self-attention point {p!r}: expected (y, x) fractions in [0, 1] of the "
                    "image height and width"
                )
        object.__setattr__(self, "self_attention_layers", names)
        object.__setattr__(
            self, "self_attention_points", tuple((float(p[0]), float(p[1])) for p in points)
        )

    def trace_meta(self) -> dict[str, Any]:
        """The options a trace records in ``trace.meta`` (how its maps were taken)."""
        return {
            "detail": self.detail,
            "attention_mode": self.mode,
            "half": self.half,
            "per_head": self.per_head,
            "daam": self.daam,
            "features": self.features,
        }


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TraceError(f"{name}={value!r}: expected one of {list(allowed)}")


def _names_or_flag(value: Any) -> bool | tuple[str, ...]:
    if value is True or value is False:
        return value
    if value is None:
        return False
    names = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(n, str) for n in names):
        raise TraceError(
            f"attention={value!r}: expected True, False or attn2 names / prefixes "
            "(such as 'up_blocks.1')"
        )
    return names


def select(kind: str, wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """Names of ``available`` equal to, or under, each name of ``wanted`` (in model order)."""
    chosen: list[str] = []
    for w in wanted:
        hits = [n for n in available if n == w or n.startswith(w + ".")]
        if not hits:
            raise TraceError(
                f"{kind} layer {w!r} matches no layer of this model; expected a name or prefix "
                f"of: {', '.join(available[:6])}{' ...' if len(available) > 6 else ''}"
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


__all__ = [
    "ATTENTION_DTYPES",
    "DEFAULT_MEMORY_BUDGET",
    "DETAILS",
    "HALVES",
    "MAX_SELF_ATTENTION_POINTS",
    "MODES",
    "CaptureOptions",
    "select",
]
