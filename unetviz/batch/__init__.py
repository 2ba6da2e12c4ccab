"""Attention statistics over prompt sets: ``unetviz batch`` (see ``unetviz.batch.cli``).

Prompt set (JSONL) -> workers (in-process, local processes or Ray actors; one model each) ->
one Parquet row per (prompt, word, layer, step bucket) -> ``summary.html``. pyarrow and Ray are
optional extras (``unetviz[batch]``, ``unetviz[ray]``), imported only when used.
"""

from __future__ import annotations

from .rows import BatchError, PromptRow, load_masks, read_prompts
from .run import BatchResult, Progress, run_batch, run_demo_set
from .worker import JobSpec

__all__ = [
    "BatchError",
    "BatchResult",
    "JobSpec",
    "Progress",
    "PromptRow",
    "load_masks",
    "read_prompts",
    "run_batch",
    "run_demo_set",
]
