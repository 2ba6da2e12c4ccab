"""Rich notebook display of a Trace, a Run and an edit comparison: static HTML (inline SVG,
PNG data URIs, ``<details>`` for the long tables) that needs no JavaScript, fetches nothing, and
reads the same in JupyterLab, VS Code, an offline notebook and GitHub's static viewer.

``Trace._repr_html_`` / ``Run._repr_html_`` import this module lazily (capture/ and pipelines/
never import render/ at module level); the HTML report (:mod:`unetviz.report.html`) is built
from the same pieces.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any

from ..tokens import END_TOKENS, PAD_TOKEN, START_TOKENS, token_label, weight_at, weight_badge

#: How the per-word maps of a run are aggregated for display: DAAM's recipe (its DAAM-like
#: approximation when the capture kept no per-head sums), not normalised per map, so one colour
#: scale shared by all words compares them.
WORD_RECIPE: dict[str, Any] = {"preset": "daam", "normalize": None}
APPROX_RECIPE: dict[str, Any] = {"preset": "daam-approx", "normalize": None}
TILE = 160  # px of one heatmap tile
SMALL_TILE = 112  # px of a tile when a prompt has more than MANY_WORDS words
MANY_WORDS = 24
IMAGE_SIDE = 256  # px of the generated image (small images are enlarged, pixels kept)
MIN_TEXT_PX = 9.0  # the smallest text a drawn SVG may show: below it, it scrolls instead

CSS = """
.uvz{font-family:"DejaVu Sans",Arial,sans-serif;font-size:13px;color:#222;max-width:100%}
.uvz h3{font-size:15px;margin:6px 0}.uvz h4{font-size:13px;margin:10px 0 4px}
.uvz table{border-collapse:collapse;font-size:12px}
.uvz td,.uvz th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
.uvz th{background:#f4f4f4}.uvz .num{text-align:right}
.uvz .diagram{overflow:auto;max-width:100%;max-height:1000px;border:1px solid #eee}
.uvz .grid{display:flex;flex-wrap:wrap;gap:8px}
.uvz figure{margin:0;text-align:center}.uvz figcaption{font-size:12px;max-width:220px}
.uvz .tokens{line-height:1.7;overflow-wrap:anywhere}.uvz .chunk{margin:2px 0}
.uvz .tok{display:inline-block;border-radius:3px;padding:0 4px;margin:1px;background:#eee}
.uvz .tok.word{background:#ffe9b3}.uvz .tok sup.w{color:#b04000;font-size:10px}.uvz .small{font-size:11px;color:#555}
.uvz .note{background:#fff6e0;border-left:3px solid #e0a000;padding:4px 8px;max-width:760px}
.uvz img.px{image-rendering:pixelated}
"""


# ---------------------------------------------------------------------------- pieces
def esc(value: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(value))


def png_bytes(image: Any) -> bytes:
    """PNG bytes of a PIL image."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def img_tag(image: Any, alt: str, side: int | None = None, cls: str = "") -> str:
    """An ``<img>`` with the PNG inline as a data URI; ``side`` sets the displayed width."""
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
    width = f' width="{int(side)}"' if side else ""
    klass = f' class="{cls}"' if cls else ""
    # inline too: some viewers (GitHub's notebook page) may drop the <style> block
    style = ' style="image-rendering:pixelated"' if "px" in cls.split() else ""
    return f'<img src="{uri}" alt="{esc(alt)}"{width}{klass}{style}/>'


def enlarge(image: Any, side: int = IMAGE_SIDE) -> Any:
    """Small images scaled up by an integer factor with nearest-neighbour (pixels stay
    visible); others unchanged."""
    from PIL import Image

    k = max(1, side // max(image.size))
    if k == 1:
        return image
    return image.resize((image.width * k, image.height * k), Image.Resampling.NEAREST)


def table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    """An HTML table (cells escaped)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{esc(c)}</td>' if j in numeric else f"<td>{esc(c)}</td>"
            for j, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def wrap(body: str) -> str:
    """The fragment inside one styled ``div`` (the style travels with the output)."""
    return f'<div class="uvz"><style>{CSS}</style>{body}</div>'


# ---------------------------------------------------------------------------- trace
def human_bytes(n: int) -> str:
    """``1.2 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def trace_facts(trace: Any) -> list[tuple[str, str]]:
    """(label, value) lines of a trace summary: model, sizes, steps, captured, memory."""
    meta = dict(trace.meta or {})
    attn = list(trace.attention.values())
    captured = [a for a in attn if a.captured]
    res = sorted({tuple(a.res) for a in captured if a.res}, reverse=True)
    facts = [("model", str(meta.get("model") or "UNet"))]
    if meta.get("prompt") is not None:
        facts.append(("prompt", str(meta["prompt"])))
    size = [f"{meta['width']}x{meta['height']} px" if meta.get("height") else None]
    if meta.get("latent"):
        size.append("latent " + "x".join(map(str, meta["latent"])))
    if meta.get("batch"):
        size.append(f"batch {meta['batch']}")
    facts.append(("size", ", ".join(s for s in size if s) or "-"))
    facts.append(("steps", f"{trace.steps} forward(s)"))
    what = [f"{len(trace.blocks)} modules ({meta.get('detail', '?')} detail)"]
    what.append(f"{len(trace.skips)} skips")
    if attn:
        what.append(
            f"cross-attention {len(captured)}/{len(attn)} layers"
            + (f" at {', '.join(f'{h}x{w}' for h, w in res)}" if res else "")
            + (f", {meta.get('attention_mode')} mode" if captured else "")
            + (", per head" if meta.get("per_head") else "")
        )
    if trace.temb:
        what.append(f"temb {len(trace.temb)} records")
    if trace.self_attention:
        what.append(f"self-attention {len(trace.self_attention)} layers")
    facts.append(("captured", "; ".join(what)))
    if trace.tokens:
        facts.append(("tokens", f"{len(trace.tokens)}"))
    facts.append(("memory", human_bytes(trace.nbytes())))
    return facts


def diagram_svg(trace: Any, detail: str = "blocks") -> str:
    """The block diagram as inline SVG text (XML prolog and doctype removed); an HTML note
    when it cannot be drawn here."""
    import subprocess

    from ..errors import UnetvizError
    from ..render.diagram import diagram
    from ..render.export import to_svg

    try:
        svg = to_svg(diagram(trace, detail=detail))
    except (UnetvizError, OSError, RuntimeError, subprocess.SubprocessError) as exc:
        # no Graphviz here, or a trace it cannot draw: the rest of the display still shows
        return f'<p class="small">diagram not available: {esc(type(exc).__name__)}: {esc(exc)}</p>'
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


_SIZE = re.compile(
    r'<svg\b[^>]*?\swidth="([\d.]+)(pt|px)?"[^>]*?\bviewBox="[\d.-]+ [\d.-]+ ([\d.]+)'
)
_FONT = re.compile(r'font-size[=:]\s*"?([\d.]+)')


def readable_svg(svg: str, min_px: float = MIN_TEXT_PX) -> str:
    """``svg`` sized by CSS to fit its container's width, but never so small that its
    smallest text is under ``min_px`` px (the container then scrolls) nor larger than its own
    size. Inline styles, so notebook frontends that drop ``<style>`` keep them."""
    m = _SIZE.search(svg)
    fonts = [float(f) for f in _FONT.findall(svg) if float(f) > 0]
    if not m or not fonts:
        return svg
    width, unit, view_w = float(m.group(1)), m.group(2) or "px", float(m.group(3))
    natural = width * (4 / 3 if unit == "pt" else 1.0)  # CSS px at the SVG's own size
    per_unit = natural / max(view_w, 1e-6)  # px per user unit
    smallest = min(fonts) * per_unit  # px of the smallest text at the SVG's own size
    low = natural * min_px / smallest
    high = max(natural, low)
    style = f"width:100%;min-width:{low:.0f}px;max-width:{high:.0f}px;height:auto;display:block"
    start = svg.find("<svg") + len("<svg")
    return svg[:start] + f' style="{style}" data-min-text="{min_px:g}"' + svg[start:]


def diagram_html(trace: Any, detail: str = "blocks") -> str:
    """The block diagram in a scrolling box: as wide as the page allows, its text never
    under :data:`MIN_TEXT_PX` px (a wide diagram scrolls sideways instead of shrinking)."""
    svg = readable_svg(diagram_svg(trace, detail))
    return (
        f'<div class="diagram" style="overflow:auto;max-width:100%;max-height:1000px">{svg}'
        '</div><p class="small">drawn at a readable size: scroll it sideways and down; '
        "<code>unetviz diagram</code> exports it as SVG or PNG</p>"
    )


def trace_html(trace: Any, detail: str = "blocks", title: str = "Trace") -> str:
    """Summary, block diagram (inline SVG, text kept legible) and a collapsible per-module
    table."""
    body = (
        f"<h3>{esc(title)}</h3>{facts_table(trace_facts(trace))}"
        f"<h4>Block diagram</h4>{diagram_html(trace, detail)}{module_table(trace)}"
    )
    if getattr(trace, "features", None):  # capture(features=...): what every block sees
        from ..render.features import sheet_html

        body += f"<h4>Feature PCA per block</h4>{sheet_html(trace)}"
    return wrap(body)


def facts_table(facts: list[tuple[str, Any]]) -> str:
    """Label / value pairs as a two-column table."""
    return (
        "<table>"
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
        + "</table>"
    )


def module_table(trace: Any) -> str:
    """The summary table (block, type, in -> out, params, MACs, LDM key, A1111) folded in a
    ``<details>``: layers when the trace has them, else blocks."""
    from ..render.table import SUMMARY_HEADERS, summary_rows, summary_total

    detail = "layers" if (trace.meta or {}).get("detail") in ("layers", "modules") else "blocks"
    rows = summary_rows(trace, detail=detail, indent=True)
    body = table(SUMMARY_HEADERS, [*rows, summary_total(trace)], numeric={3, 4})
    return f"<details><summary>Modules ({len(rows)})</summary>{body}</details>"


# ---------------------------------------------------------------------------- heatmaps
def word_maps(trace: Any, recipe: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """``(word, Heatmap)`` for every prompt word (sub-tokens merged), aggregated by ``recipe``
    (default :data:`WORD_RECIPE`; :data:`APPROX_RECIPE` when DAAM cannot be applied: a capture
    without per-head sums, or a latent size at which DAAM keeps no map); empty when the trace
    holds no attention maps."""
    from ..capture.errors import TraceError
    from ..render.heatmaps import word_groups

    if not any(a.captured for a in trace.attention.values()):
        return []
    groups = word_groups(trace)
    if recipe is not None:
        return [(word, trace.heatmap(idx, **recipe)) for word, idx in groups]
    if any(getattr(a, "head_sum", None) is not None for a in trace.attention.values()):
        try:
            return [(word, trace.heatmap(idx, **WORD_RECIPE)) for word, idx in groups]
        except TraceError:
            pass  # DAAM's own size rules leave no map here: its approximation still draws
    return [(word, trace.heatmap(idx, **APPROX_RECIPE)) for word, idx in groups]


def heatmap_grid(
    trace: Any, image: Any = None, recipe: dict[str, Any] | None = None, tile: int = TILE
) -> str:
    """Every word's map over the (greyscale) image on ONE shared colour scale, with the
    colour bar and the recipe: HTML figures."""
    from ..colors import colorbar_image
    from ..render.heatmaps import heat_scales, overlay, scale_text

    maps = word_maps(trace, recipe)
    if not maps:
        return '<p class="small">no cross-attention maps in this trace</p>'
    if len(maps) > MANY_WORDS:  # a long prompt: smaller tiles, still wrapped into rows
        tile = min(tile, SMALL_TILE)
    lo, hi = heat_scales([m for _, m in maps], "shared")[0]
    side = _native_side(maps[0][1], image, tile)
    figures = []
    weights = (trace.meta or {}).get("token_weights")
    for word, heat in maps:
        picture = overlay(heat, image, vmin=lo, vmax=hi, size=side)
        idx = list(heat.tokens)
        found = {weight_at(weights, i) for i in idx}
        badge = weight_badge(found.pop()) if len(found) == 1 else ""  # (word:1.3) throughout
        tokens = ", ".join(map(str, idx[:6])) + (
            f" \u2026 {len(idx)} in all" if len(idx) > 6 else ""
        )
        figures.append(
            f"<figure>{img_tag(picture, f'heatmap of {word}', tile, 'heatmap px')}"
            f"<figcaption><b>{esc(word)}</b>{esc(badge)} (token {esc(tokens)})</figcaption>"
            "</figure>"
        )
    bar = colorbar_image(lo, hi, width=max(2 * tile, 256), label="attention (shared scale)")
    recipe_line = maps[0][1].recipe_text
    under = "the generated image (in grey)" if image is not None else "flat grey (no image)"
    return (
        f'<div class="grid" style="display:flex;flex-wrap:wrap;gap:8px">{"".join(figures)}</div>'
        f"<div>{img_tag(bar, 'colour bar')}</div>"
        f'<p class="small scale" data-vmin="{lo!r}" data-vmax="{hi!r}">{len(maps)} words, each '
        f"map drawn over {under}; one colour scale for all words: "
        f"{esc(scale_text((lo, hi)))}; recipe: {esc(recipe_line)}</p>"
    )


def _native_side(heat: Any, image: Any, tile: int) -> int:
    """Pixel side at which to draw overlays: the larger of the map and the image, at most
    ``tile`` (the browser scales them up pixelated; small PNGs keep reports small)."""
    sides = [max(heat.shape[-2:])] + ([max(image.size)] if image is not None else [])
    return int(min(tile, max(sides)))


def tokens_html(tokens: list[str], words: list[Any], weights: list | None = None) -> str:
    """The token list as chips that wrap, the prompt's words highlighted (with their emphasis
    weight, ``×1.3``, from ``weights``), each chunk's trailing padding folded; a long prompt
    (several 77-token chunks, each from its start token) gets one labelled line per chunk."""
    starts = [i for i, t in enumerate(tokens) if i == 0 or t in START_TOKENS] or [0]
    bounds = list(zip(starts, [*starts[1:], len(tokens)], strict=True))
    lines = [_chunk_chips(tokens, words, a, b, weights) for a, b in bounds]
    if len(lines) == 1:
        return f'<span class="tokens">{lines[0]}</span>'
    return (
        '<div class="tokens">'
        + "".join(
            f'<div class="chunk"><span class="small">chunk {k + 1} (tokens {a}\u2013{b - 1}):'
            f"</span> {line}</div>"
            for k, ((a, b), line) in enumerate(zip(bounds, lines, strict=True))
        )
        + "</div>"
    )


def _chunk_chips(
    tokens: list[str], words: list[Any], start: int, stop: int, weights: list | None
) -> str:
    """Chips of ``tokens[start:stop]`` (titles give the absolute index), padding folded."""
    end = stop
    while end - start > 2 and (
        tokens[end - 1] == PAD_TOKEN or tokens[end - 1] == tokens[end - 2] in END_TOKENS
    ):  # CLIP pads with EOS
        end -= 1
    chips = []
    for i in range(start, end):
        is_word = i < len(words) and words[i] is not None
        badge = weight_badge(weight_at(weights, i))
        chips.append(
            f'<span class="tok{" word" if is_word else ""}" title="#{i}">'
            f"{esc(token_label(tokens[i]))}"
            + (f'<sup class="w">{esc(badge.strip())}</sup>' if badge else "")
            + "</span>"
        )
    pads = stop - end
    more = f' <span class="small">+ {pads} padding</span>' if pads else ""
    return "".join(chips) + more


# ---------------------------------------------------------------------------- run
def run_html(run: Any, title: str = "Run") -> str:
    """The image, the token list and the per-word heatmap grid with its shared scale."""
    trace = run.trace
    facts = [
        ("prompt", run.prompt),
        ("seed / steps / guidance", f"{run.seed} / {run.steps} / {run.guidance:g}"),
        ("model", (trace.meta or {}).get("model", "-")),
    ]
    if run.negative_prompt:
        facts.insert(1, ("negative prompt", run.negative_prompt))
    image = enlarge(run.image)
    weights = (trace.meta or {}).get("token_weights")
    body = (
        f"<h3>{esc(title)}</h3>"
        f'<div class="grid" style="display:flex;flex-wrap:wrap;gap:8px"><figure>{img_tag(image, "generated image", IMAGE_SIDE, "px")}'
        f"<figcaption>{run.image.width}x{run.image.height} px</figcaption></figure>"
        f"<div>{facts_table(facts)}<h4>Tokens</h4>"
        f"{tokens_html(list(run.tokens), list(run.words or trace.words or []), weights)}"
        "</div></div>"
        f"<h4>Cross-attention per word</h4>{heatmap_grid(trace, run.image)}"
    )
    return wrap(body)


def run_png(run: Any) -> bytes:
    """One PNG: the image and every word's map over it on the shared scale (for frontends
    that show no HTML)."""
    from ..colors import colorbar_image
    from ..render.heatmaps import captioned, contact_sheet, heat_scales, overlay

    tiles = [captioned(enlarge(run.image, TILE), "image")]
    maps = word_maps(run.trace)
    if maps:
        lo, hi = heat_scales([m for _, m in maps], "shared")[0]
        tiles += [captioned(overlay(m, run.image, lo, hi, size=TILE), w) for w, m in maps]
        tiles.append(colorbar_image(lo, hi, width=TILE, label="shared scale"))
    return png_bytes(contact_sheet(tiles, cols=min(5, len(tiles))))


def run_mimebundle(run: Any) -> dict[str, Any]:
    """``Run._repr_mimebundle_``: the HTML and a one-line text (:func:`run_png` is the same as
    one PNG, for frontends without HTML; left out here, it would double the notebook's size)."""
    return {
        "text/html": run_html(run),
        "text/plain": f"Run({run.prompt!r}, seed={run.seed}, steps={run.steps})",
    }


# ---------------------------------------------------------------------------- edits
def comparison_html(cmp: Any, title: str = "Edit comparison") -> str:
    """``pipe.compare(...)``: base / edited / difference side by side, the edits and the
    mean change. The difference is drawn in the colour map on its own scale."""
    from PIL import Image

    from ..colors import colorbar_image, colorize, scale_of

    diff = cmp.diff
    lo, hi = 0.0, max(scale_of(diff)[1], 1e-6)
    diff_img = Image.fromarray(colorize(diff, lo, hi))
    side = 200
    cells = [
        (enlarge(cmp.base.image, side), "base"),
        (enlarge(cmp.edited.image, side), "edited"),
        (enlarge(diff_img, side), f"|difference| (mean {cmp.score:.4f})"),
    ]
    figures = "".join(
        f"<figure>{img_tag(img, cap, side, 'px')}<figcaption>{esc(cap)}</figcaption></figure>"
        for img, cap in cells
    )
    edits = [", ".join(f"{k}={v}" for k, v in e.items()) for e in cmp.edits] or ["(none)"]
    items = "".join(f"<li>{esc(e)}</li>" for e in edits)
    bar = colorbar_image(lo, hi, width=side, label="mean |RGB difference|")
    body = (
        f"<h3>{esc(title)}</h3><p>prompt: {esc(cmp.base.prompt)}</p>"
        f'<div class="grid" style="display:flex;flex-wrap:wrap;gap:8px">{figures}</div><div>{img_tag(bar, "colour bar")}</div>'
        f"<h4>Edits</h4><ul>{items}</ul>"
    )
    return wrap(body)


def comparison_mimebundle(cmp: Any) -> dict[str, Any]:
    """``Comparison._repr_mimebundle_``: HTML and a one-line text."""
    n = len(cmp.edits)
    return {
        "text/html": comparison_html(cmp),
        "text/plain": f"Comparison({n} edit(s), mean change {cmp.score:.4f})",
    }
