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

IMAGE_NAME = "image.png"  # the image beside a trace: in the app's bundle or an attention folder
RUN_TRACE = "run.trace"  # the trace in a ``unetviz attention -o`` folder
MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096

PAGE_CSS = """
body{margin:16px auto;max-width:1180px;padding:0 12px;background:#fff}
section{border-top:1px solid #ddd;padding:6px 0 12px}
header h1{font-size:20px;margin:4px 0}
.plot svg{max-width:100%;height:auto}
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
    """Read a saved trace (zip bundle, possibly with the app's ``image.png``; a trace folder;
    or a ``unetviz attention -o`` folder holding ``run.trace`` and ``image.png``)."""
    from ..capture.errors import TraceError
    from ..capture.trace import Trace

    if not path.exists():
        raise ReportError(f"{path}: no such file or folder (expected a saved trace or run)")
    trace_path = path / RUN_TRACE if path.is_dir() and (path / RUN_TRACE).exists() else path
    try:
        trace = Trace.load(trace_path)
    except TraceError as exc:
        raise ReportError(str(exc)) from None
    image = None
    if path.is_dir() and (path / IMAGE_NAME).is_file():
        size = (path / IMAGE_NAME).stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ReportError(f"{path / IMAGE_NAME}: {size:,} bytes: too big for an image")
        image = read_image((path / IMAGE_NAME).read_bytes(), path / IMAGE_NAME)
    elif path.is_file():
        with zipfile.ZipFile(path) as zf:
            if IMAGE_NAME in zf.namelist():
                info = zf.getinfo(IMAGE_NAME)
                if info.file_size > MAX_IMAGE_BYTES:
                    raise ReportError(f"{path}: {IMAGE_NAME} is {info.file_size:,} bytes: too big")
                image = read_image(zf.read(IMAGE_NAME), path / IMAGE_NAME)
    return Source(trace, image, str(trace.meta.get("prompt") or path.name))


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


def _plots(trace: Any) -> str:
    """Layer x token grid and temb plots as static SVG (absent parts are skipped)."""
    from ..render import plots
    from .static import figure_svg

    out = []
    makers = []
    if any(a.captured for a in trace.attention.values()):
        makers.append(("Cross-attention: layers x words", lambda: plots.layer_token_grid(trace)))
    if trace.temb:
        makers.append(("Time embedding per resnet", lambda: plots.temb_heatmap(trace)))
        makers.append(("Time embedding per block", lambda: plots.temb_lines(trace)))
    for title, make in makers:
        try:
            svg = figure_svg(make())
        except ValueError as exc:
            svg = f'<p class="small">{d.esc(exc)}</p>'
        out.append(f'<div class="plot" title="{d.esc(title)}">{svg}</div>')
    return "".join(out)


def build_report(obj: Any, image: Any = None, title: str | None = None) -> str:
    """The report of a Run, a Trace or a saved trace path, as one HTML string."""
    src = source_of(obj, image)
    trace = src.trace
    meta = dict(trace.meta or {})
    title = title or "unetviz report" + (f": {src.label}" if src.label else "")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<header><h1>{d.esc(title)}</h1><p class='small'>made {when}</p>"
        f"{d.facts_table(d.trace_facts(trace))}</header>"
    ]
    if src.image is not None or trace.tokens:
        img = ""
        if src.image is not None:
            img = d.img_tag(d.enlarge(src.image), "generated image", d.IMAGE_SIDE, "px image")
        tokens = d.tokens_html(list(trace.tokens), list(trace.words or []))
        parts.append(f'<section id="run"><h3>Image and tokens</h3>{img}<p>{tokens}</p></section>')
    parts.append(
        f'<section id="diagram"><h3>Block diagram</h3><div class="diagram" style="overflow:auto;max-width:100%">'
        f"{d.diagram_svg(trace, 'blocks')}</div>{d.module_table(trace)}</section>"
    )
    if any(a.captured for a in trace.attention.values()):
        parts.append(
            '<section id="heatmaps"><h3>Cross-attention per word</h3>'
            f"{d.heatmap_grid(trace, src.image)}</section>"
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
