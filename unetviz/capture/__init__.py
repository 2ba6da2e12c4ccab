"""Capture engine: ``capture(unet)`` hooks a UNet and fills a ``Trace`` (see docs/trace.md).

``unetviz.capture`` is this package. Its names load on first use (PEP 562), so importing the
package, or ``DETAILS`` from ``unetviz.capture.options``, does not import torch.

Layout: ``options`` (what to record, validated), ``probe`` (the probe interface and the session
that hooks probes onto a model), ``probes`` / ``attention`` (one recording probe per concern),
``engine`` (``Capture``: the probes of a capture), ``records`` / ``trace`` (what is recorded),
``bundle`` (the trace file format, read defensively), ``aggregate`` (heatmaps and presets).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Capture, capture
    from .errors import MemoryBudgetError, TraceError
    from .options import DETAILS, CaptureOptions
    from .probe import Probe, ProbeSession
    from .records import (
        AttentionRecord,
        BlockRecord,
        SelfAttentionRecord,
        SkipRecord,
        TembRecord,
    )
    from .trace import Trace

_NAMES = {
    "AttentionRecord": "records",
    "BlockRecord": "records",
    "Capture": "engine",
    "CaptureOptions": "options",
    "DETAILS": "options",
    "MemoryBudgetError": "errors",
    "Probe": "probe",
    "ProbeSession": "probe",
    "SelfAttentionRecord": "records",
    "SkipRecord": "records",
    "TembRecord": "records",
    "Trace": "trace",
    "TraceError": "errors",
    "capture": "engine",
}

__all__ = [
    "DETAILS",
    "AttentionRecord",
    "BlockRecord",
    "Capture",
    "CaptureOptions",
    "MemoryBudgetError",
    "Probe",
    "ProbeSession",
    "SelfAttentionRecord",
    "SkipRecord",
    "TembRecord",
    "Trace",
    "TraceError",
    "capture",
]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'unetviz.capture' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
