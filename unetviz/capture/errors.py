"""Errors of the capture engine, the Trace and its aggregation (their own module, so records,
trace and aggregate import it without importing each other)."""

from __future__ import annotations

from ..errors import UnetvizError


class TraceError(UnetvizError):
    """A capture that cannot proceed, a query a trace cannot answer, or a bad trace file."""


class MemoryBudgetError(TraceError, MemoryError):
    """Per-step attention storage would exceed the capture's ``memory_budget``."""


__all__ = ["MemoryBudgetError", "TraceError"]
