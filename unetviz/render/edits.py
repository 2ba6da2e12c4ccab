"""Pictures of interventions: the architecture diagram filled by a sweep's effect, and the
base / edited / difference strip of a comparison (the CLI and the app call them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..edits.sweep import SweepResult

FILL_LABEL = "mean abs pixel change"


def sweep_diagram(result: SweepResult, direction: str = "TB") -> Any:
    """A ``graphviz.Digraph`` of the base run's trace with every swept block / layer filled by
    its score (render's generic fill); a skip sweep fills each skip's source layer and adds
    the score to the skip's label."""
    from .diagram import draw
    from .graph import build_graph

    trace = result.base.trace
    over = result.sweep.over
    detail = "blocks" if over == "blocks" or trace.meta.get("detail") == "blocks" else "layers"
    values = result.values()
    if over == "skips":
        skips = {s.index: s.source for s in getattr(trace, "skips", [])}
        fill: dict[str, float] = {}
        for key, value in values.items():
            source = skips.get(int(key.split()[-1]))
            if source is not None:
                fill[source] = max(value, fill.get(source, 0.0))
    else:
        fill = dict(values)
    graph = build_graph(trace, detail=detail, fill=fill, fill_label=FILL_LABEL)
    if over == "skips":
        for e in graph.edges:
            value = values.get(f"skip {e.index}") if e.kind == "skip" else None
            if value is not None:
                e.label = f"{e.label}  \u0394 {value:.3f}"
    reweight = result.sweep.edit == "reweight"
    what = result.sweep.edit + (f" '{result.sweep.word}'" if reweight else "")
    graph.meta["model"] = (
        f"{graph.meta.get('model') or 'UNet'}  \u00b7  sweep: {what} per {over[:-1]}"
        f" ({_mode(result)})  \u00b7  '{result.prompt}'"
    )
    g = draw(graph, direction=direction)
    # node tooltips call every fill value "temb ratio"
    g.body[:] = [line.replace("temb ratio:", f"{FILL_LABEL}:") for line in g.body]
    return g


def _mode(result: SweepResult) -> str:
    s = result.sweep
    return f"mode {s.mode}" if s.edit == "ablate" else f"scale {s.scale:g}"


def comparison_strip(comparison: Any, scale: int = 1) -> Any:
    """base | edited | difference (greyscale, stretched to its own maximum) as one PIL image,
    each panel enlarged ``scale`` times with nearest-neighbour (the demo images are 24 px)."""
    from PIL import Image

    base = comparison.base.image.convert("RGB")
    edited = comparison.edited.image.convert("RGB")
    diff = comparison.diff
    peak = float(diff.max()) or 1.0
    heat = Image.fromarray((diff / peak * 255).round().astype(np.uint8), "L").convert("RGB")
    w, h = base.size
    gap = max(2, w // 12)
    strip = Image.new("RGB", (3 * w + 2 * gap, h), "white")
    for i, im in enumerate((base, edited, heat)):
        strip.paste(im, (i * (w + gap), 0))
    if scale != 1:
        strip = strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST)
    return _captioned_strip(strip, (w + gap) * scale, w * scale, peak)


def _captioned_strip(strip: Any, step: int, width: int, peak: float) -> Any:
    """``strip`` with a caption under each panel, so the PNG reads alone."""
    from PIL import Image, ImageDraw, ImageFont

    band = max(14, width // 10)
    out = Image.new("RGB", (strip.width, strip.height + band), "white")
    out.paste(strip, (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(10, band * 7 // 10))
    captions = ("base", "edited", f"|difference| (white = {peak:.3g})")
    for i, text in enumerate(captions):
        draw.text((i * step + width // 2, strip.height + band // 2), text, fill="black",
                  font=font, anchor="mm")  # fmt: skip
    return out
