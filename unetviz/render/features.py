"""What every block sees, drawn: the contact sheet of a trace's feature pictures
(``capture(features=...)``): rows are the blocks in forward order, columns the chosen steps,
each cell the block's first three principal components as R, G, B (one basis per block for the
run, so colours compare across a row), captioned with the block, its output shape, its RMS and
the variance the components carry. Used by ``unetviz features``, the HTML report and the
notebook display."""

from __future__ import annotations

from typing import Any

CELL = 96  # pixels per picture in the sheet
LABEL_W = 260


def spread_steps(total: int, n: int = 5) -> list[int]:
    """``n`` forward indices spread evenly over 0..total-1 (first and last included)."""
    n = max(1, min(total, n))
    return sorted({round(i * (total - 1) / max(n - 1, 1)) for i in range(n)})


def contact_sheet(trace: Any, steps: list[int] | None = None) -> Any:
    """The sheet as a PIL image: one row per block (the ``trace.features`` at block level, in
    forward order), one column per step of ``steps`` (default: five spread over the run)."""
    from PIL import Image, ImageDraw

    from unetviz.colors import font

    if steps is None:
        steps = spread_steps(max(len(trace.timesteps), 1))
    rows = [r for r in trace.features.values() if r.level == "block"] or list(
        trace.features.values()
    )
    pad, head = 6, 28
    w = LABEL_W + len(steps) * (CELL + pad) + pad
    h = head + len(rows) * (CELL + pad) + pad
    sheet = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(sheet)
    f, small = font(14), font(12)
    for j, s in enumerate(steps):
        t = trace.timesteps[s] if s < len(trace.timesteps) else None
        label = f"step {s}" + (f" (t={t:g})" if t is not None else "")
        draw.text((LABEL_W + j * (CELL + pad) + pad, 6), label, fill="black", font=small)
    for i, rec in enumerate(rows):
        y = head + i * (CELL + pad)
        draw.text((8, y + 8), rec.name, fill="black", font=f)
        draw.text((8, y + 30), f"{rec.channels}×{rec.res[0]}×{rec.res[1]}", fill="#555", font=small)
        for j, s in enumerate(steps):
            x = LABEL_W + j * (CELL + pad) + pad
            if s not in rec.steps:
                continue
            k = rec.steps.index(s)
            pic = Image.fromarray(rec.rgb(s).numpy()).resize((CELL, CELL), Image.NEAREST)
            sheet.paste(pic, (x, y))
            draw.text((x + 2, y + CELL - 14), f"rms {rec.rms[k]:.3g}", fill="white", font=small)
        if rec.explained:
            share = ", ".join(f"{v:.0%}" for v in rec.explained)
            draw.text((8, y + 48), f"PC var {share}", fill="#555", font=small)
    return sheet


def sheet_html(trace: Any) -> str:
    """The sheet as an ``<img>`` (PNG data URI) for the report and the notebook; '' when the
    trace holds no feature pictures."""
    if not getattr(trace, "features", None):
        return ""
    import base64
    import io

    buf = io.BytesIO()
    contact_sheet(trace).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="feature PCA per block and step" src="data:image/png;base64,{data}"/>'


__all__ = ["CELL", "contact_sheet", "sheet_html", "spread_steps"]
