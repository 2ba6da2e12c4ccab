"""Notebook display and self-contained HTML reports (no JavaScript, nothing fetched).

- :mod:`unetviz.report.display`: ``_repr_html_`` bodies of a Trace, a Run and an edit
  comparison (inline SVG diagram, PNG data URIs, ``<details>`` tables).
- :mod:`unetviz.report.html`: :func:`build_report` / :func:`write_report` - one HTML file of a
  run or trace (``run.report(path)``, ``trace.report(path)``, ``unetviz report``).
- :mod:`unetviz.report.static`: plotly figures as static SVG (:func:`figure_svg`) and
  :func:`enable_static_plots` for notebooks read where plotly.js is absent.

Layering: imports render, capture and pipeline types; nothing below imports it except the
lazy display hooks (``Trace._repr_html_``, ``Run._repr_html_``, ``Comparison._repr_html_``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_report": "unetviz.report.html",
    "write_report": "unetviz.report.html",
    "ReportError": "unetviz.report.html",
    "figure_svg": "unetviz.report.static",
    "figure_mimebundle": "unetviz.report.static",
    "enable_static_plots": "unetviz.report.static",
    "trace_html": "unetviz.report.display",
    "run_html": "unetviz.report.display",
    "comparison_html": "unetviz.report.display",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'unetviz.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
