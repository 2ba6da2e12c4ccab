"""Capture engine: ``capture(unet)`` hooks a UNet and fills a ``Trace`` (see docs/trace.md).

``unetviz.capture`` is this package. Its names load on first use (PEP 562), so importing the
package, or ``DETAILS`` from ``unetviz.capture.options``, does not import torch.

Layout: ``options`` (what to record, validated), ``probe`` (the probe interface and the session
that hooks probes onto a model: captures and edits alike), ``plan`` (a model's names by role,
cached per model, and its first-pass facts), ``probes`` / ``attention`` (one recording probe
per concern), ``engine`` (``Capture``: the probes of a capture), ``records`` / ``trace`` (what
is recorded), ``bundle`` (the trace file format, read defensively), ``aggregate`` (heatmaps
and presets). docs/capture.md describes the probe lifecycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, {k: f".{v}" for k, v in _NAMES.items()})
