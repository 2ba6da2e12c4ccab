"""What both training phases share: checkpoints (no pickles), EMA, logs, a time budget."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetviz.outputs import atomic_file, write_file


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (tensors, numbers, strings and containers only:
    it loads back with ``weights_only=True``, no unpickling of code)."""
    with atomic_file(path) as fh:
        torch.save(state, fh)


def load_state(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_state`` (``weights_only=True``)."""
    return torch.load(path, weights_only=True)


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - decay)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (the eval log; a crash loses at most this line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_json(path: Path, data: Any) -> None:
    """Write a small JSON file atomically."""
    write_file(path, json.dumps(data, indent=1) + "\n")


class Clock:
    """Minutes spent in a phase, across resumes (``before`` comes from the checkpoint)."""

    def __init__(self, before: float = 0.0):
        self.before = before
        self.t0 = time.time()

    def minutes(self) -> float:
        return self.before + (time.time() - self.t0) / 60


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
