"""The records a capture fills: plain dataclasses of shapes, scalars and CPU tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..names import block_of, location_of


@dataclass
class BlockRecord:
    """One hooked module: shapes of its first call, parameters, MACs per call, calls, time."""

    name: str
    type: str
    level: str  # "block" | "layer" | "module"
    parent: str | None
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    params: int = 0
    macs: int = 0
    calls: int = 0
    time_ms: float = 0.0


@dataclass
class SkipRecord:
    """One skip tensor: pushed by ``source`` on the down path at stack position ``index``,
    concatenated on channels by the up-block resnet ``target``."""

    index: int
    source: str
    target: str
    shape: list[int]


@dataclass(slots=True)
class TembRecord:
    """The time-embedding contribution of one ResnetBlock2D in one forward (step).

    ``ratio`` is ``temb_rms / feature_rms``, ``None`` when the feature map is all zeros (the
    ratio is undefined there, not infinite)."""

    block: str
    step: int
    timestep: float | None
    temb_rms: float
    feature_rms: float
    ratio: float | None
    vector: torch.Tensor | None = field(
        default=None, repr=False
    )  # (C,) float32 CPU, kept-batch mean


@dataclass
class AttentionRecord:
    """One cross-attention layer (``...attn2``).

    ``maps[i]`` is the ``(heads_or_1, h, w, tokens)`` probability map of forward ``steps[i]``
    (per-step mode); in streaming mode ``sum`` holds the float32 sum over ``count`` forwards.
    ``head_sum`` (captures with ``daam=True``) is the float32 per-head sum over
    ``head_count`` forwards, ``(heads, h, w, tokens)``: what DAAM aggregates.
    ``q_shape`` / ``k_shape`` are per head: ``(batch, heads, queries, head_dim)``.
    """

    name: str
    block: str
    location: str  # "down" | "mid" | "up"
    res: tuple[int, int] | None
    heads: int
    per_head: bool = False
    q_shape: list[int] | None = None
    k_shape: list[int] | None = None
    tokens: int | None = None
    maps: list[torch.Tensor] = field(default_factory=list, repr=False)
    steps: list[int] = field(default_factory=list)
    sum: torch.Tensor | None = field(default=None, repr=False)
    count: int = 0
    head_sum: torch.Tensor | None = field(default=None, repr=False)
    head_count: int = 0

    @property
    def captured(self) -> bool:
        """Whether this layer holds probabilities (not just shapes)."""
        return bool(self.maps) or self.count > 0


@dataclass
class SelfAttentionRecord:
    """Self-attention (``...attn1``) rows of chosen query points: ``maps[i]`` is
    ``(heads_or_1, points, h, w)`` for forward ``steps[i]``; ``points`` are (row, col) on the
    layer's query grid."""

    name: str
    block: str
    location: str
    res: tuple[int, int]
    heads: int
    points: list[tuple[int, int]]
    per_head: bool = False
    maps: list[torch.Tensor] = field(default_factory=list, repr=False)
    steps: list[int] = field(default_factory=list)
    sum: torch.Tensor | None = field(default=None, repr=False)
    count: int = 0


__all__ = [
    "AttentionRecord",
    "BlockRecord",
    "SelfAttentionRecord",
    "SkipRecord",
    "TembRecord",
    "block_of",
    "location_of",
]
