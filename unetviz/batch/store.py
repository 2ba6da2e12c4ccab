"""The output folder of a batch job, written so that it is consistent at every instant.

    out/batch.json            the job: model, options, prompts file (a rerun must match)
    out/parts/part-NNNNN.parquet   results of a group of prompts, each written atomically;
                              its schema metadata holds the prompts' status rows (ok / error)
    out/images/<key>.png      each prompt's generated image
    out/traces/<key>.trace    trace bundles (``--keep-traces`` only)
    out/table.parquet         every part merged: one row per (prompt, word, layer, bucket)
    out/prompts.parquet       one row per prompt: status, error, seconds, worker, files
    out/summary.html          the headline plots, self-contained

Every file goes through ``unetviz.outputs``; the folder's marker lists each file *before* it is
written, so the folder is always recognisably unetviz's own. A part is the unit of progress:
a prompt counts as done once its part exists, so Ctrl-C or a crash loses at most the prompts
of the part being gathered, and a rerun skips every prompt already in a part.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unetviz.outputs import MARKER, atomic_file, check_output_folder, write_file, write_folder

from .rows import BatchError
from .stats import COLUMNS

JOB_FILE = "batch.json"
TABLE, PROMPTS, SUMMARY = "table.parquet", "prompts.parquet", "summary.html"
PART_META = b"unetviz.prompts"
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
PROMPT_FIELDS = (
    "key", "row", "prompt", "seed", "negative_prompt", "steps", "guidance", "status", "error",
    "seconds", "roundtrip", "attempts", "worker", "peak_rss_mb", "image", "trace", "words",
)  # fmt: skip


def pa_modules() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), imported only when a batch runs."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise BatchError(
            "unetviz batch writes Parquet tables: pip install 'unetviz[batch]' (pyarrow)"
        ) from None
    return pa, pq


def schema() -> Any:
    """The table's columns and types (fixed, so every engine writes the same bytes)."""
    pa, _ = pa_modules()
    types = {
        "key": pa.string(), "row": pa.int32(), "prompt": pa.string(), "seed": pa.int64(),
        "word": pa.string(), "word_index": pa.int16(), "word_class": pa.string(),
        "layer": pa.string(), "block": pa.string(), "location": pa.string(),
        "resolution": pa.int16(), "bucket": pa.int16(), "step_lo": pa.int16(),
        "step_hi": pa.int16(), "has_mask": pa.bool_(),
    }  # fmt: skip
    return pa.schema([(c, types.get(c, pa.float64())) for c in COLUMNS])


class Store:
    """One batch output folder."""

    def __init__(self, out: Path, created: bool = False):
        self.out = out
        self.created = created  # this Store made the folder (it holds only unetviz's files)
        self._listed: set[str] = set()

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls, out: str | Path, job: dict[str, Any], force: bool = False, extra: tuple = ()
    ) -> Store:
        """Open ``out`` for ``job``: a new folder is created (atomically, with its subfolders);
        a folder of the same job is resumed; anything else is refused with the reason."""
        out = Path(out)
        job_file = out / JOB_FILE
        if job_file.is_file() and not job_file.is_symlink():
            try:
                old = json.loads(job_file.read_text())
            except (OSError, ValueError) as exc:
                raise BatchError(f"{str(job_file)!r} is unreadable: {exc}") from None
            check_output_folder(out, force)
            diff = sorted(
                k
                for k in set(old.get("identity", {})) | set(job["identity"])
                if old.get("identity", {}).get(k) != job["identity"].get(k)
            )
            if diff:
                was = old.get("identity", {})
                changes = ", ".join(
                    f"{k} {was.get(k)!r} (now {job['identity'].get(k)!r})" for k in diff
                )
                raise BatchError(
                    f"{str(out)!r} holds a batch run with other options: {changes}; use a new "
                    "folder, or the same options to resume it"
                )
            store = cls(out)
            store._read_marker()
            return store

        def fill(tmp: Path) -> None:
            text = json.dumps(job, indent=1, sort_keys=True, allow_nan=False)
            (tmp / JOB_FILE).write_text(text + "\n")
            for sub in ("parts", "images", "traces", *extra):
                (tmp / sub).mkdir()

        existed = out.exists()
        write_folder(out, fill, force=force)
        store = cls(out, created=not existed)
        store._read_marker()
        return store

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder for one run: a second run into it (another process, or another
        thread here) is refused while this one writes. The lock is on ``batch.json`` (no new
        file) and the kernel drops it when the process ends, however it ends."""
        fd = os.open(self.out / JOB_FILE, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BatchError(
                    f"{str(self.out)!r} is in use by another unetviz batch run: wait for it to "
                    "finish (then rerun to resume) or use another folder"
                ) from None
            yield
        finally:
            os.close(fd)

    def _read_marker(self) -> None:
        try:
            self._listed = set(json.loads((self.out / MARKER).read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            self._listed = set()

    def claim(self, names: list[str]) -> None:
        """List ``names`` in the folder's marker before writing them."""
        new = set(names) - self._listed
        if new:
            self._listed |= new
            data = {"tool": "unetviz", "files": sorted(self._listed)}
            write_file(self.out / MARKER, json.dumps(data) + "\n")

    # ------------------------------------------------------------------ parts
    def parts(self) -> list[Path]:
        folder = self.out / "parts"
        found = [p for p in folder.iterdir() if _PART.match(p.name)] if folder.is_dir() else []
        return sorted(found, key=lambda p: int(_PART.match(p.name).group(1)))

    def _part_prompts(self, part: Path) -> list[dict[str, Any]]:
        _, pq = pa_modules()
        try:
            meta = pq.read_schema(part).metadata or {}
            return json.loads(meta[PART_META])
        except Exception as exc:
            raise BatchError(
                f"{str(part)!r} is not a readable batch part ({type(exc).__name__}: {exc}); "
                "move it away to run its prompts again"
            ) from None

    def done(self) -> dict[str, str]:
        """key -> status ("ok" / "error") of every prompt already in a part (latest wins)."""
        status: dict[str, str] = {}
        for part in self.parts():
            for p in self._part_prompts(part):
                status[p["key"]] = p["status"]
        return status

    def write_part(self, results: list[dict[str, Any]]) -> Path | None:
        """Write the images/traces of ``results``, then their part (the commit point)."""
        if not results:
            return None
        pa, pq = pa_modules()
        existing = self.parts()
        seq = int(_PART.match(existing[-1].name).group(1)) + 1 if existing else 0
        name = f"parts/part-{seq:05d}.parquet"
        files = []
        for r in results:
            if r["status"] == "ok":
                files.append(f"images/{r['key']}.png")
                if r.get("trace"):
                    files.append(f"traces/{r['key']}.trace")
        self.claim(files + [name])
        prompts = []
        for r in results:
            if r["status"] == "ok":
                write_file(self.out / "images" / f"{r['key']}.png", r["image"])
                if r.get("trace"):
                    write_file(self.out / "traces" / f"{r['key']}.trace", r["trace"])
            prompts.append(_prompt_row(r))
        sch = schema()
        tables = [pa.table(r["records"], schema=sch) for r in results if r["records"]]
        table = pa.concat_tables(tables) if tables else sch.empty_table()
        table = table.replace_schema_metadata({PART_META: json.dumps(prompts).encode()})
        with atomic_file(self.out / name) as fh:
            pq.write_table(table, fh)
        return self.out / name

    # ------------------------------------------------------------------ consolidate
    def consolidate(self, keys: list[str]) -> tuple[Any, Any]:
        """Merge every part into table.parquet and prompts.parquet (only the prompts of the
        current prompt set, the latest result of each); returns (table, prompts)."""
        pa, pq = pa_modules()
        import pyarrow.compute as pc

        wanted = set(keys)
        winner: dict[str, tuple[int, dict[str, Any]]] = {}
        parts = self.parts()
        for i, part in enumerate(parts):
            for p in self._part_prompts(part):
                if p["key"] in wanted:
                    winner[p["key"]] = (i, p)
        tables = []
        for i, part in enumerate(parts):
            mine = [k for k, (j, _) in winner.items() if j == i]
            if mine:
                t = pq.read_table(part, schema=schema())
                tables.append(t.filter(pc.is_in(t["key"], value_set=pa.array(mine))))
        table = pa.concat_tables(tables) if tables else schema().empty_table()
        table = table.replace_schema_metadata(None).sort_by(
            [("row", "ascending"), ("word_index", "ascending"), ("layer", "ascending"),
             ("bucket", "ascending")]
        )  # fmt: skip
        prompts = sorted((p for _, p in winner.values()), key=lambda p: p["row"])
        ptable = pa.table({f: [p.get(f) for p in prompts] for f in PROMPT_FIELDS})
        self.claim([TABLE, PROMPTS])
        for name, t in ((TABLE, table), (PROMPTS, ptable)):
            with atomic_file(self.out / name) as fh:
                pq.write_table(t, fh)
        return table, ptable


def _prompt_row(r: dict[str, Any]) -> dict[str, Any]:
    row = r.get("row_info", {})
    ok = r["status"] == "ok"
    return {
        "key": r["key"],
        "row": r["row"],
        "prompt": row.get("prompt", ""),
        "seed": row.get("seed"),
        "negative_prompt": row.get("negative_prompt", ""),
        "steps": row.get("steps"),
        "guidance": row.get("guidance"),
        "status": r["status"],
        "error": r["error"],
        "seconds": round(float(r.get("seconds") or 0.0), 4),
        "roundtrip": round(float(r.get("roundtrip") or 0.0), 4),
        "attempts": r.get("attempts", 1),
        "worker": r.get("worker", ""),
        "peak_rss_mb": r.get("peak_rss_mb"),
        "image": f"images/{r['key']}.png" if ok else None,
        "trace": f"traces/{r['key']}.trace" if ok and r.get("trace") else None,
        "words": r.get("words", []),
    }
