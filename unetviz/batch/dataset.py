"""Open a finished (or running) batch folder for a viewer: the app's "Dataset" view.

    ds = open_dataset("runs/coco", roots=[Path("models")])
    ds.figures()          # {"layer_time", "resolution", "word_class"}: the summary's plots
    ds.prompt_table()     # (headers, rows) of every prompt: row, status, prompt, error, seconds
    d = ds.drill(12)      # one prompt: image, per-word table, per-word figure, heatmaps

The folder must resolve (symlinks followed) inside one of ``roots``; only files inside it are
read, each size-checked before reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rows import MAX_ROWS, BatchError
from .stats import AGGREGATES, DAAM
from .store import JOB_FILE, PROMPTS, TABLE, pa_modules

MAX_TABLE_BYTES = 2 * 1024**3
#: rows of table.parquet / prompts.parquet a viewer reads (from the file's metadata, first)
MAX_TABLE_ROWS = 5_000_000
MAX_PROMPT_ROWS = MAX_ROWS
#: bytes a table takes once decoded (the metadata's uncompressed sizes, then each row group's)
MAX_TABLE_INFLATED = 1024**3
MAX_FOOTER_BYTES = 16 * 1024**2
MAX_IMAGE_BYTES = 32 * 1024**2
MAX_TRACE_BYTES = 1024**3


def _inside(roots: Sequence[str | os.PathLike], folder: str | os.PathLike) -> Path:
    raw = str(folder).strip()
    if not raw or "\x00" in raw:
        raise BatchError(f"dataset folder {raw!r}: give a batch output folder")
    resolved = [Path(r).expanduser().resolve() for r in roots]
    p = Path(raw).expanduser()
    for cand in [p] if p.is_absolute() else [r / p for r in resolved]:
        real = cand.resolve()
        if any(real == r or real.is_relative_to(r) for r in resolved) and real.is_dir():
            return real
    raise BatchError(
        f"dataset folder {raw!r} is not a folder inside the allowed roots "
        f"{[str(r) for r in resolved]}"
    )


def _file(folder: Path, rel: str, limit: int) -> Path:
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise BatchError(f"{rel!r} is missing from {str(folder)!r} (or lies outside it)")
    if path.stat().st_size > limit:
        raise BatchError(f"{rel!r} in {str(folder)!r} is larger than {limit:,} bytes")
    return path


def read_table(path: Path, max_rows: int, max_bytes: int = MAX_TABLE_INFLATED) -> Any:
    """A Parquet file read within bounds: its footer length, then its metadata (rows, declared
    uncompressed bytes) are checked before any column is decoded; row groups are then read one
    at a time and their decoded bytes counted (at most twice ``max_bytes`` in Arrow's layout).
    BatchError naming the file and the bound."""
    pa, pq = pa_modules()
    name = f"{path.name!r} in {str(path.parent)!r}"
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 12:
            raise BatchError(f"{name} is not a Parquet file (too short)")
        fh.seek(-8, os.SEEK_END)
        tail = fh.read(8)
    footer = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or footer > MAX_FOOTER_BYTES:
        raise BatchError(
            f"{name} is not a Parquet file with a footer of at most {MAX_FOOTER_BYTES:,} bytes"
        )
    try:
        return _read_bounded(pa, pq.ParquetFile(path), name, max_rows, max_bytes)
    except BatchError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise BatchError(f"{name} is not a readable Parquet file: {exc}") from None


def _read_bounded(pa: Any, f: Any, name: str, max_rows: int, max_bytes: int) -> Any:
    meta = f.metadata
    if meta.num_rows > max_rows:
        raise BatchError(
            f"{name} declares {meta.num_rows:,} rows: a viewer reads at most {max_rows:,}"
        )
    declared = sum(
        meta.row_group(i).column(j).total_uncompressed_size
        for i in range(meta.num_row_groups)
        for j in range(meta.num_columns)
    )
    if declared > max_bytes:
        raise BatchError(
            f"{name} declares {declared:,} bytes once decoded: a viewer reads at most {max_bytes:,}"
        )
    groups, rows, held = [], 0, 0
    for i in range(meta.num_row_groups):
        group = f.read_row_group(i)
        rows, held = rows + group.num_rows, held + group.nbytes
        if rows > max_rows or held > 2 * max_bytes:  # Arrow adds offsets and bitmaps
            raise BatchError(
                f"{name} holds more than its metadata says ({rows:,} rows, {held:,} bytes "
                f"read): a viewer reads at most {max_rows:,} rows, {max_bytes:,} bytes"
            )
        groups.append(group)
    return pa.concat_tables(groups) if groups else f.schema_arrow.empty_table()


@dataclass
class Drill:
    """One prompt of a dataset."""

    row: int
    prompt: str
    status: str
    error: str
    image: Any  # PIL image or None
    words: tuple[list[str], list[list[Any]]]  # (headers, rows): DAAM-row stats per word
    figure: Any  # plotly: metric per word x layer (mean over buckets)
    heatmaps: Any  # plotly token grid from the kept trace, or None (no --keep-traces)


class Dataset:
    """A batch output folder: its table, prompts and job, read once."""

    def __init__(self, folder: Path):
        _, pq = pa_modules()
        self.folder = folder
        try:
            self.job = json.loads(_file(folder, JOB_FILE, 1024**2).read_text())
            self.table = read_table(_file(folder, TABLE, MAX_TABLE_BYTES), MAX_TABLE_ROWS)
            self.prompts = read_table(_file(folder, PROMPTS, MAX_TABLE_BYTES), MAX_PROMPT_ROWS)
            self.prompts = self.prompts.to_pandas()
        except BatchError:
            raise
        except Exception as exc:
            raise BatchError(
                f"{str(folder)!r} is not a readable unetviz batch folder: {exc}"
            ) from None
        self._frame = None

    @property
    def frame(self) -> Any:
        """The table as a pandas frame (built on first use)."""
        if self._frame is None:
            self._frame = self.table.to_pandas()
        return self._frame

    def figures(self) -> dict[str, Any]:
        """The summary's headline figures (empty when no prompt succeeded)."""
        from .summary import figures

        return figures(self.frame) if len(self.frame) else {}

    def headline(self) -> list[tuple[str, str]]:
        from .summary import headline

        return headline(self.frame, self.prompts)

    def prompt_table(self) -> tuple[list[str], list[list[Any]]]:
        """(headers, rows) of every prompt, for a table widget."""
        cols = ["row", "status", "prompt", "error", "seconds"]
        return cols, [[r[c] for c in cols] for _, r in self.prompts[cols].iterrows()]

    def drill(self, row: int) -> Drill:
        """One prompt's image, per-word statistics and, with a kept trace, its heatmaps."""
        hit = self.prompts[self.prompts["row"] == row]
        if hit.empty:
            raise BatchError(
                f"row {row!r} is not in this dataset (rows 0..{self.prompts['row'].max()})"
            )
        p = hit.iloc[0]
        image = heatmaps = None
        if isinstance(p["image"], str):
            from PIL import Image

            with Image.open(_file(self.folder, p["image"], MAX_IMAGE_BYTES)) as im:
                image = im.convert("RGB")
        if isinstance(p["trace"], str):
            from unetviz.capture import Trace
            from unetviz.render.plots import token_grid

            path = _file(self.folder, p["trace"], MAX_TRACE_BYTES)
            trace = Trace.load(path, max_bytes=MAX_TRACE_BYTES)
            heatmaps = token_grid(trace, image=image, preset="daam")
        df = self.frame[self.frame["row"] == row]
        return Drill(
            row=int(row),
            prompt=str(p["prompt"]),
            status=str(p["status"]),
            error=str(p["error"] or ""),
            image=image,
            words=_word_table(df),
            figure=_word_figure(df) if len(df) else None,
            heatmaps=heatmaps,
        )


def _word_table(df: Any) -> tuple[list[str], list[list[Any]]]:
    cols = ["word", "word_class", "entropy", "peak_y", "peak_x", "area", "mass_in", "iou"]
    daam = df[df["layer"] == DAAM]
    rows = [[(round(v, 3) if isinstance(v, float) else v) for v in r] for r in daam[cols].values]
    return cols, rows


def _word_figure(df: Any) -> Any:
    import plotly.graph_objects as go

    from .summary import layer_order, short_layer

    metric = "iou" if df["has_mask"].any() else "concentration"
    layers = df[~df["layer"].isin(AGGREGATES)]
    grid = layers.groupby(["word", "layer"], sort=False)[metric].mean().unstack("layer")
    grid = grid[layer_order(list(grid.columns))]
    words = list(dict.fromkeys(df.sort_values("word_index")["word"]))
    grid = grid.loc[[w for w in words if w in grid.index]]
    fig = go.Figure(
        go.Heatmap(
            z=grid.values,
            x=[short_layer(c) for c in grid.columns],
            y=list(grid.index),
            colorscale="Viridis",
            colorbar={"title": metric},
        )
    )
    fig.update_layout(
        title=f"{metric} per word and layer (mean over step buckets)",
        yaxis={"autorange": "reversed"},
        height=120 + 28 * len(grid),
    )
    return fig


def open_dataset(folder: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> Dataset:
    """The batch folder ``folder`` (absolute, or relative to a root), if it lies inside one of
    ``roots``; BatchError naming the folder and the roots otherwise."""
    return Dataset(_inside(roots, folder))
