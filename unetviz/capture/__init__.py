"""Capture engine: ``capture(unet)`` hooks a UNet and fills a ``Trace`` (see docs/trace.md)."""

from .hooks import Capture, capture
from .trace import (
    AttentionRecord,
    BlockRecord,
    MemoryBudgetError,
    SelfAttentionRecord,
    SkipRecord,
    TembRecord,
    Trace,
    TraceError,
)

__all__ = [
    "AttentionRecord",
    "BlockRecord",
    "Capture",
    "MemoryBudgetError",
    "SelfAttentionRecord",
    "SkipRecord",
    "TembRecord",
    "Trace",
    "TraceError",
    "capture",
]
