"""Pure functions from a Trace to pictures: graphviz diagrams, plotly figures, PNG/SVG bytes,
heatmap overlays (``heatmaps``) and the summary table (``table``). The app and the CLI call
these: presentation has this one home. The colour map is :mod:`unetviz.colors`.

Nothing here touches a model or imports torch hooks. Heavy modules (graphviz, plotly, PIL) are
imported on first use, so ``import unetviz.render`` is cheap.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "build_graph": "unetviz.render.graph",
    "ArchGraph": "unetviz.render.graph",
    "diagram": "unetviz.render.diagram",
    "draw": "unetviz.render.diagram",
    "write_diagram": "unetviz.render.export",
    "svg_to_png": "unetviz.render.export",
    "render": "unetviz.render.export",
    "to_dot": "unetviz.render.export",
    "to_svg": "unetviz.render.export",
    "to_png": "unetviz.render.export",
    "to_pdf": "unetviz.render.export",
    "to_json": "unetviz.render.export",
    "ExportError": "unetviz.render.export",
    "FORMATS": "unetviz.render.export",
    "overlay": "unetviz.render.heatmaps",
    "heat_scales": "unetviz.render.heatmaps",
    "word_tokens": "unetviz.render.heatmaps",
    "word_groups": "unetviz.render.heatmaps",
    "layer_label": "unetviz.render.heatmaps",
    "layer_order": "unetviz.names",
    "captioned": "unetviz.render.heatmaps",
    "contact_sheet": "unetviz.render.heatmaps",
    "HeatmapError": "unetviz.render.heatmaps",
    "summary_rows": "unetviz.render.table",
    "summary_text": "unetviz.render.table",
    "SUMMARY_HEADERS": "unetviz.render.table",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
