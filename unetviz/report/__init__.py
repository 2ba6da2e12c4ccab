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

from .display import comparison_html, run_html, trace_html
from .html import ReportError, build_report, write_report
from .static import enable_static_plots, figure_svg

__all__ = [
    "ReportError",
    "build_report",
    "comparison_html",
    "enable_static_plots",
    "figure_svg",
    "run_html",
    "trace_html",
    "write_report",
]
