"""unetviz: see inside the Stable Diffusion UNet.

Public names are imported lazily so ``import unetviz`` stays cheap (no gradio, no plotly) and
the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .lazy import lazy_exports
from .presenters import register as register_presenters

__version__ = "0.1.0"

_EXPORTS = {
    "UNetConfig": "unetviz.config",
    "ConfigError": "unetviz.config",
    "UNet2DConditionModel": "unetviz.model",
    "build_unet": "unetviz.weights",
    "load_unet": "unetviz.lora",  # weights.load_unet, plus loras=
    "WeightsError": "unetviz.weights",
    "capture": "unetviz.capture",
    "Trace": "unetviz.capture",
    "Heatmap": "unetviz.capture.heatmap",
    "write_report": "unetviz.report.html",
    "load_pipeline": "unetviz.pipelines",
    "detect_model": "unetviz.detect",
    "ModelKind": "unetviz.detect",
    "ModelPathError": "unetviz.detect",
    "intervene": "unetviz.edits",
    "EditError": "unetviz.edits",
    "run_batch": "unetviz.batch",
    "BatchError": "unetviz.batch",
    # every error a user can cause derives from UnetvizError (itself a ValueError)
    "UnetvizError": "unetviz.errors",
    "OutputError": "unetviz.errors",
    "TraceError": "unetviz.capture.errors",
    "MemoryBudgetError": "unetviz.capture.errors",
    "PipelineError": "unetviz.pipelines.base",
    "ExportError": "unetviz.render.export",
    "GraphError": "unetviz.render.graph",
    "DiagramError": "unetviz.render.diagram",
    "HeatmapError": "unetviz.render.heatmaps",
    "SingleFileError": "unetviz.single_file",
    "UnknownNameError": "unetviz.names",
}

__all__ = sorted(_EXPORTS)

# ``unetviz.capture`` is the function (``with unetviz.capture(unet) as trace``) and
# ``unetviz.capture`` the package (``from unetviz.capture import Trace``). Python binds a
# subpackage on its parent the first time it is imported; importing it here, once (cheap: its
# names are lazy, no torch), and dropping that binding lets ``__getattr__`` below resolve the
# public name to the function in any import order.
from . import capture as _capture_package  # noqa: E402, F401

del capture  # noqa: F821 - the import above bound the package on this name


def _from_report(module: str, name: str) -> Any:
    """The report layer's ``name``, imported when first called (presenters of lower layers)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


register_presenters(
    trace_html=_from_report("unetviz.report.display", "trace_html"),
    run_mimebundle=_from_report("unetviz.report.display", "run_mimebundle"),
    comparison_mimebundle=_from_report("unetviz.report.display", "comparison_mimebundle"),
    write_report=_from_report("unetviz.report.html", "write_report"),
)

# ``unetviz.edits`` is the interventions module itself: ``unetviz.edits.Reweight(...)``
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, modules=["edits"])
