"""Capture engine: ``capture(unet)`` hooks a UNet and fills a ``Trace`` (see docs/trace.md).

The package itself is callable: ``unetviz.capture`` is this package once any
``unetviz.capture.*`` import has run (Python binds a subpackage on its parent), and the
function otherwise, so ``unetviz.capture(unet, ...)`` works in every import order.
"""

from __future__ import annotations

import sys
import types
from typing import Any

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


class _CallableModule(types.ModuleType):
    """``unetviz.capture(unet, ...)`` == ``unetviz.capture.capture(unet, ...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Capture:
        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
