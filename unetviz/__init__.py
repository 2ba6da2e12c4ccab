"""unetviz: see inside the Stable Diffusion UNet.

Public names are imported lazily so ``import unetviz`` stays cheap (no gradio, no plotly) and
the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "UNetConfig": "unetviz.config",
    "ConfigError": "unetviz.config",
    "UNet2DConditionModel": "unetviz.model",
    "build_unet": "unetviz.weights",
    "load_unet": "unetviz.weights",
    "WeightsError": "unetviz.weights",
    "capture": "unetviz.capture",
    "Trace": "unetviz.capture",
    "load_pipeline": "unetviz.pipelines",
    # every error a user can cause derives from UnetvizError (itself a ValueError)
    "UnetvizError": "unetviz.errors",
    "OutputError": "unetviz.errors",
    "TraceError": "unetviz.capture",
    "MemoryBudgetError": "unetviz.capture",
    "PipelineError": "unetviz.pipelines.base",
    "ExportError": "unetviz.render.export",
    "SingleFileError": "unetviz.single_file",
    "UnknownNameError": "unetviz.names",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'unetviz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
