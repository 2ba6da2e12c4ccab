"""One self-contained HTML report of a run or a trace: it opens offline in any browser, from a
file, with no server and no JavaScript.

Everything is inline: the block diagram as SVG, the image and the heatmaps as PNG data URIs,
the plotly figures (temb, layer x token grid) as static SVG drawn by
:mod:`unetviz.report.static` (plotly.js alone is 4.8 MB; a 25-step demo run's report is ~0.2 MB).
Sections: summary, image and tokens, block diagram and module table, per-word heatmaps with
their aggregation recipe, layer x token grid, time-embedding plots, capture options, versions.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UnetvizError
from . import display as d

RUN_TRACE = "run.trace"  # the trace in a ``unetviz attention -o`` folder
MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096

PAGE_CSS = """
body{margin:16px auto;max-width:1180px;padding:0 12px;background:#fff}
section{border-top:1px solid #ddd;padding:6px 0 12px}
header h1{font-size:20px;margin:4px 0}
"""


class ReportError(UnetvizError):
    """A report that cannot be made: an unreadable input or an image that is not one."""


@dataclass
class Source:
    """What a report shows: a trace, and the image it produced when known."""

    trace: Any
    image: Any = None
    label: str = ""


def source_of(obj: Any, image: Any = None) -> Source:
    """A Run (or anything with ``.trace`` and ``.image``, like the app's session), a Trace,
    or a path (trace bundle zip or folder, or a ``unetviz attention`` output folder) ->
    :class:`Source`."""
    if hasattr(obj, "trace") and hasattr(obj, "image"):  # a Run (or the app's Session)
        label = getattr(obj, "prompt", "") or getattr(obj, "label", "")
        return Source(obj.trace, image if image is not None else obj.image, str(label))
    if hasattr(obj, "attention") and hasattr(obj, "blocks"):  # a Trace
        return Source(obj, image, str((obj.meta or {}).get("prompt") or ""))
    if isinstance(obj, (str, os.PathLike)):
        return load_source(Path(obj))
    raise ReportError(
        f"cannot make a report of a {type(obj).__name__}: expected a Run, a Trace or the path "
        "of a saved trace"
    )


def load_source(path: Path) -> Source:
    """Read a saved trace (zip bundle, possibly with its ``image.png``; a trace folder; or a
    ``unetviz attention -o`` folder holding ``run.trace`` and ``image.png``, or that folder's
    ``run.trace`` alone, whose image lies beside it)."""
    from ..capture.errors import TraceError
    from ..capture.trace import Trace

    if not path.exists():
        raise ReportError(f"{path}: no such file or folder (expected a saved trace or run)")
    trace_path = path / RUN_TRACE if path.is_dir() and (path / RUN_TRACE).exists() else path
    try:
        trace = Trace.load(trace_path)
    except TraceError as exc:
        raise ReportError(str(exc)) from None
    found = _image_bytes(path)
    image = read_image(*found) if found else None
    return Source(trace, image, str(trace.meta.get("prompt") or path.name))


def _image_bytes(path: Path) -> tuple[bytes, Path] | None:
    """The PNG saved with a trace: ``image.png`` in its folder or zip, else (for an attention
    folder's ``run.trace``) the one beside it. Sizes checked before reading."""
    from ..capture.bundle import IMAGE_NAME  # the image a bundle (or an attention folder) keeps

    candidates = [path / IMAGE_NAME] if path.is_dir() else []
    if path.is_file():
        with zipfile.ZipFile(path) as zf:
            if IMAGE_NAME in zf.namelist():
                info = zf.getinfo(IMAGE_NAME)
                if info.file_size > MAX_IMAGE_BYTES:
                    raise ReportError(f"{path}: {IMAGE_NAME} is {info.file_size:,} bytes: too big")
                return zf.read(IMAGE_NAME), path / IMAGE_NAME
        if path.name == RUN_TRACE:
            candidates.append(path.parent / IMAGE_NAME)
    for file in candidates:
        if file.is_file():
            size = file.stat().st_size
            if size > MAX_IMAGE_BYTES:
                raise ReportError(f"{file}: {size:,} bytes: too big for an image")
            return file.read_bytes(), file
    return None


def read_image(data: bytes, where: Path) -> Any:
    """A PIL RGB image from untrusted bytes: size and pixel count checked before decoding."""
    from PIL import Image

    if len(data) > MAX_IMAGE_BYTES:
        raise ReportError(f"{where}: {len(data):,} bytes: larger than {MAX_IMAGE_BYTES:,}")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise ReportError(f"{where}: {img.width}x{img.height} px: more than 4096x4096")
        return img.convert("RGB")
    except ReportError:
        raise
    except Exception as exc:  # PIL raises many types for a bad file
        raise ReportError(f"{where} is not a readable image: {exc}") from None


# ---------------------------------------------------------------------------- sections
def versions() -> list[tuple[str, str]]:
    """Versions of unetviz and the libraries a report depends on."""
    from importlib import metadata

    out = [("python", platform.python_version()), ("platform", platform.platform(terse=True))]
    for name in ("unetviz", "torch", "numpy", "plotly", "pillow", "graphviz", "safetensors"):
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "-"))
    return out


def options_rows(meta: dict[str, Any]) -> list[list[str]]:
    """Capture options and run settings from ``trace.meta`` (the config goes in its own
    table)."""
    rows = []
    for k, v in meta.items():
        if k == "config":
            continue
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        rows.append([k, text if len(text) <= 300 else text[:299] + "\u2026"])
    return rows


#: why a report shows no image, and how to keep it next time
NO_IMAGE = (
    "No image: this trace was saved without the image it generated, so the maps below are "
    "drawn over flat grey. To keep it: <code>unetviz attention PROMPT -o DIR</code> saves both "
    "(then <code>unetviz report DIR</code>); in Python, <code>trace.save(path, "
    "image=run.image)</code>, or <code>run.report(path)</code> straight from the run."
)
GRID_COLUMNS = 24  # tokens per layer x token panel (one row of labels stays readable)
GRID_CELLS = 2400  # layer x token cells drawn at most; beyond, the most-attended tokens
GRID_CELL = 24  # px of one cell


def image_section(src: Source) -> str:
    """The generated image with its caption (size, seed, steps, guidance) and the prompt's
    tokens; or, for a generation saved without its image, a note saying how to keep it."""
    trace = src.trace
    meta = dict(trace.meta or {})
    if src.image is None and not trace.tokens:
        return ""
    if src.image is not None:
        facts = [f"{src.image.width}x{src.image.height} px"]
        facts += [
            f"{k} {meta[k]}" for k in ("seed", "steps", "guidance") if meta.get(k) is not None
        ]
        picture = (
            f"<figure>{d.img_tag(d.enlarge(src.image), 'generated image', d.IMAGE_SIDE, 'px image')}"
            f"<figcaption>generated image: {d.esc(', '.join(facts))}</figcaption></figure>"
        )
    else:
        picture = f'<p class="note no-image">{NO_IMAGE}</p>'
    tokens = d.tokens_html(list(trace.tokens), list(trace.words or []), meta.get("token_weights"))
    count = f"<h4>Tokens ({len(trace.tokens)})</h4>" if trace.tokens else ""
    return (
        '<section id="run"><h3>Image and tokens</h3><div class="grid" style="display:flex;'
        f'flex-wrap:wrap;gap:16px;align-items:flex-start">{picture}'
        f'<div style="flex:1 1 420px;min-width:0">{count}{tokens}</div></div></section>'
    )


def _token_mass(trace: Any, idx: list[int]) -> list[float]:
    """Mean attention each token of ``idx`` receives, over every captured layer and step."""
    import torch

    total = torch.zeros(len(idx))
    for rec in trace.attention.values():
        if rec.maps:  # per step (heads, h, w, tokens); h, w may differ between steps
            t = torch.stack([m.float().mean(dim=(0, 1, 2)) for m in rec.maps]).mean(0)
        elif rec.sum is not None:
            t = rec.sum.float().mean(dim=(0, 1, 2)) / max(rec.count or 1, 1)
        else:
            continue
        total += t[idx]
    return total.tolist()


def grid_tokens(trace: Any) -> tuple[list[int], str]:
    """The word tokens the layer x token grid shows, and a note when it leaves some out:
    all of them up to :data:`GRID_CELLS` cells, else the most attended ones (prompt order)."""
    from ..render.heatmaps import word_tokens

    idx = word_tokens(trace)
    layers = sum(1 for a in trace.attention.values() if a.captured)
    room = max(GRID_COLUMNS, GRID_CELLS // max(layers, 1))
    if len(idx) <= room:
        return idx, ""
    mass = _token_mass(trace, idx)
    keep = sorted(sorted(range(len(idx)), key=lambda k: -mass[k])[:room])
    shown = [idx[k] for k in keep]
    note = (
        f"showing {len(shown)} of the prompt's {len(idx)} word tokens: the {len(shown)} with "
        "the highest mean attention over all layers and steps, in prompt order (tokens "
        f"{', '.join(map(str, shown[:8]))}\u2026); every word's own map is in the section above"
    )
    return shown, note


def _layer_grids(trace: Any) -> list[tuple[str, str]]:
    """(title, SVG) panels of the layer x token grid, :data:`GRID_COLUMNS` tokens each, on
    one colour scale; a note first when tokens were left out."""
    from ..render import plots
    from .static import figure_svg, label_room, upright_room

    idx, note = grid_tokens(trace)
    chunks = [idx[i : i + GRID_COLUMNS] for i in range(0, len(idx), GRID_COLUMNS)]
    figs = []
    for k, chunk in enumerate(chunks):
        part = (
            f" ({k + 1}/{len(chunks)}: tokens {chunk[0]}\u2013{chunk[-1]})"
            if len(chunks) > 1
            else ""
        )
        title = "cross-attention: layers x tokens" + part
        figs.append(plots.layer_token_grid(trace, tokens=chunk, cell=GRID_CELL, title=title))
    lo = min(f.data[0].zmin for f in figs)
    hi = max(f.data[0].zmax for f in figs)
    out = [("note", f'<p class="small grid-note">{d.esc(note)}</p>')] if note else []
    for fig, chunk in zip(figs, chunks, strict=True):
        fig.data[0].update(zmin=lo, zmax=hi)  # one scale: panels compare
        rows = len(fig.layout.yaxis.ticktext or ())
        step = GRID_CELL + max(1, GRID_CELL // 8)
        left = label_room(fig.layout.yaxis.ticktext or ())
        width = max(560, 20 + left + len(chunk) * step + 84)  # margins, labels, colour bar
        # title, cells, axis and the labels turned upright (static.figure_svg's rooms)
        height = 50 + rows * step + 10 + 36 + upright_room(fig.layout.xaxis.ticktext or ())
        out.append((fig.layout.title.text, figure_svg(fig, width=width, height=height)))
    return out


#: one line per section: how to read it without the app or the docs
READ = {
    "diagram": "The UNet as captured, block by block: type, input \u2192 output shape, parameters "
    "and multiply-adds per call. Solid arrows: the main path; dashed blue: the skip connections "
    "(down-path outputs concatenated into the up path); orange markers: where the time "
    "embedding is added; green: where the text enters (cross-attention).",
    "heatmaps": "Where each prompt word's cross-attention lands: the attention its tokens "
    "received, aggregated over layers and denoising steps by the recipe under the tiles, drawn "
    "over the image. Brighter is more attention; all tiles share one colour scale, so they "
    "compare.",
    "grid": "Each row is one cross-attention layer (A1111 label \u00b7 diffusers name \u00b7 map "
    "size) in UNet order, each column one prompt token, each cell that layer's own map over "
    "the steps; one colour scale for every panel.",
    "temb": "How strongly the timestep speaks in every ResnetBlock2D: the RMS of the projected "
    "time embedding over the RMS of the feature map it is added to, per denoising step.",
}


def _read(key: str) -> str:
    return f'<p class="small read">{d.esc(READ[key])}</p>'


def _plots(trace: Any) -> str:
    """Layer x token grid and temb plots as static SVG, each group under its reading line
    (absent parts are skipped)."""
    from ..render import plots
    from .static import figure_svg

    def temb(make: Any) -> list[tuple[str, str]]:
        return [("", figure_svg(make(trace)))]

    makers = []
    if any(a.captured for a in trace.attention.values()):
        makers.append(("grid", "Cross-attention: layers x tokens", lambda: _layer_grids(trace)))
    if trace.temb:
        makers.append(("temb", "Time embedding per resnet", lambda: temb(plots.temb_heatmap)))
        makers.append(("", "Time embedding per block", lambda: temb(plots.temb_lines)))
    out = []
    for read, title, make in makers:
        out.append(_read(read) if read else "")
        try:
            panels = [(t or title, svg) for t, svg in make()]
        except ValueError as exc:
            panels = [("note", f'<p class="small">{d.esc(exc)}</p>')]
        for name, svg in panels:
            out.append(
                svg
                if name == "note"
                else f'<div class="plot" title="{d.esc(name)}" style="overflow-x:auto">'
                f"{d.readable_svg(svg)}</div>"
            )
    return "".join(out)


def build_report(obj: Any, image: Any = None, title: str | None = None) -> str:
    """The report of a Run, a Trace or a saved trace path, as one HTML string."""
    src = source_of(obj, image)
    trace = src.trace
    meta = dict(trace.meta or {})
    label = src.label if len(src.label) <= 90 else src.label[:89] + "\u2026"  # the prompt
    title = title or "unetviz report" + (f": {label}" if label else "")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<header><h1>{d.esc(title)}</h1><p class='small'>made {when}</p>"
        f"{d.facts_table(d.trace_facts(trace))}</header>",
        image_section(src),
        f'<section id="diagram"><h3>Block diagram</h3>{_read("diagram")}'
        f"{d.diagram_html(trace, 'blocks')}{d.module_table(trace)}</section>",
    ]
    if any(a.captured for a in trace.attention.values()):
        parts.append(
            '<section id="heatmaps"><h3>Cross-attention per word</h3>'
            f"{_read('heatmaps')}{d.heatmap_grid(trace, src.image)}</section>"
        )
    if getattr(trace, "features", None):  # capture(features=...): what every block sees
        from ..render.features import sheet_html

        parts.append(
            f'<section id="features"><h3>Feature PCA per block</h3>{sheet_html(trace)}</section>'
        )
    plots = _plots(trace)
    if plots:
        parts.append(f'<section id="plots"><h3>Plots</h3>{plots}</section>')
    config = meta.get("config") or {}
    parts.append(
        '<section id="options"><h3>Capture options and run settings</h3>'
        f"{d.table(['option', 'value'], options_rows(meta))}"
        f"<details><summary>UNet config ({len(config)} keys)</summary>"
        f"{d.table(['key', 'value'], [[k, json.dumps(v)] for k, v in config.items()])}</details>"
        f"<h3>Versions</h3>{d.table(['package', 'version'], [list(v) for v in versions()])}"
        "</section>"
    )
    body = d.wrap("".join(parts))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{d.esc(title)}</title><style>{PAGE_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )


def write_report(
    obj: Any, path: str | os.PathLike, image: Any = None, title: str | None = None
) -> Path:
    """Write :func:`build_report` to ``path`` (atomically, via ``unetviz.outputs``); the
    app's "Download report" button and ``unetviz report`` call this."""
    from ..outputs import write_file

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"{path}: a report is an HTML file: give a name ending in .html")
    return write_file(path, build_report(obj, image=image, title=title))
