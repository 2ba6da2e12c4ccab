"""Prompt sets: one JSON object per line, validated row by row before any model loads.

    {"prompt": "a red circle", "seed": 3, "negative_prompt": "", "steps": 25, "guidance": 4.0,
     "masks": "masks/00003.npz", "classes": {"circle": "noun"}}

Only ``prompt`` is required. ``seed`` defaults to the row's index (0-based, blank lines not
counted), so every row has its own fixed noise whichever engine runs it. ``masks`` is a path
relative to the prompts file's folder (it may not leave that folder): an ``.npz`` of 2-D
boolean/0-1 arrays keyed by word, or a folder of ``<word>.png`` files (white = inside).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from unetviz.callargs import MAX_GUIDANCE, MAX_STEPS
from unetviz.errors import UnetvizError
from unetviz.safetensors_io import read_into

KEYS = ("prompt", "seed", "negative_prompt", "steps", "guidance", "masks", "classes")
MAX_FILE_BYTES = 256 * 1024**2
#: prompts one file may hold (validated rows are kept: ~350 bytes each, ~70 MB at the bound)
MAX_ROWS = 200_000
MAX_LINE_CHARS = 64 * 1024
MAX_PROMPT_CHARS = 4096
#: a mask file (.npz or .png) on disk
MAX_MASK_BYTES = 64 * 1024**2
MAX_MASK_SIDE = 4096
#: masks one row may name (arrays in its .npz, or .png files in its folder)
MAX_MASKS = 256
#: bytes one row's masks take once read (each array's header is checked before its data)
MAX_MASK_TOTAL_BYTES = 256 * 1024**2
MAX_ERRORS_SHOWN = 8


class BatchError(UnetvizError):
    """A prompt set, a mask file, an output folder or a batch option is wrong."""


@dataclass(slots=True)
class PromptRow:
    """One validated row. ``key`` identifies it across reruns: its index and a hash of its
    content, so an edited line is run again and an unchanged one is skipped."""

    index: int
    line: int
    prompt: str
    seed: int
    negative_prompt: str = ""
    steps: int | None = None
    guidance: float | None = None
    masks: str | None = None
    classes: dict[str, str] = field(default_factory=dict)
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELDS} | {"classes": dict(self.classes)}


_FIELDS = tuple(f.name for f in fields(PromptRow))
#: what a row's key hashes: its content, not where it sits
_CONTENT = tuple(f for f in _FIELDS if f not in ("index", "line", "key"))


def _row_key(index: int, row: dict[str, Any]) -> str:
    blob = json.dumps(row, sort_keys=True, separators=(",", ":")).encode()
    return f"{index:07d}-{hashlib.sha256(blob).hexdigest()[:12]}"


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name!r} must be an integer from {lo} to {hi}, got {value!r}")
    return value


def _check_masks_path(base: Path, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ValueError(f"'masks' must be a path (a non-empty string), got {value!r}")
    target = (base / value).resolve()
    if target != base and not target.is_relative_to(base):
        raise ValueError(
            f"'masks' {value!r} resolves outside the prompts file's folder {str(base)!r}: "
            "mask files must lie inside it"
        )
    if not target.exists():
        raise ValueError(f"'masks' {value!r}: no such file or folder in {str(base)!r}")
    if not (target.is_dir() or (target.is_file() and target.suffix == ".npz")):
        raise ValueError(
            f"'masks' {value!r}: expected an .npz file or a folder of <word>.png files"
        )
    return value


def parse_row(obj: Any, index: int, line: int, base: Path) -> PromptRow:
    """Validate one decoded JSON line; ValueError with the field at fault."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}: expected some of {list(KEYS)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"'prompt' must be a non-empty string, got {prompt!r}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"'prompt' has {len(prompt)} characters (at most {MAX_PROMPT_CHARS})")
    row = PromptRow(index=index, line=line, prompt=prompt, seed=index)
    if "seed" in obj:
        row.seed = _int(obj["seed"], "seed", 0, 2**63 - 1)
    if "negative_prompt" in obj:
        neg = obj["negative_prompt"]
        if not isinstance(neg, str) or len(neg) > MAX_PROMPT_CHARS:
            raise ValueError(f"'negative_prompt' must be a string, got {neg!r:.80}")
        row.negative_prompt = neg
    if obj.get("steps") is not None:
        row.steps = _int(obj["steps"], "steps", 1, MAX_STEPS)
    if obj.get("guidance") is not None:
        g = obj["guidance"]
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise ValueError(f"'guidance' must be a finite number, got {g!r}")
        if not 0 <= g <= MAX_GUIDANCE:
            raise ValueError(f"'guidance' must be from 0 to {MAX_GUIDANCE:g}, got {g!r}")
        row.guidance = float(g)
    if obj.get("masks") is not None:
        row.masks = _check_masks_path(base, obj["masks"])
    if obj.get("classes") is not None:
        cls = obj["classes"]
        if not isinstance(cls, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= 40 for k, v in cls.items()
        ):
            raise ValueError(f"'classes' must map words to class names, got {cls!r:.80}")
        row.classes = {k.lower(): v for k, v in cls.items()}
    row.key = _row_key(index, {f: getattr(row, f) for f in _CONTENT})
    return row


def _open(path: Path) -> IO[bytes]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BatchError(f"prompts file not found: {str(path)!r}") from None
    except OSError as exc:
        raise BatchError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BatchError(f"{str(path)!r} is a folder: expected a .jsonl file, one JSON per line")
    if not stat.S_ISREG(st.st_mode):
        raise BatchError(f"{str(path)!r} is not a regular file (a FIFO, socket or device)")
    if st.st_size > MAX_FILE_BYTES:
        raise BatchError(f"{str(path)!r} is {st.st_size:,} bytes: more than {MAX_FILE_BYTES:,}")
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by read_prompts
    except OSError as exc:
        raise BatchError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _lines(fh: IO[bytes], path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text) of each line, read one at a time; a line over MAX_LINE_CHARS is
    skipped to its end and given as None (it is never held whole)."""
    limit = 4 * MAX_LINE_CHARS + 1  # UTF-8: at most 4 bytes a character
    n = 0
    while True:
        raw = fh.readline(limit)
        if not raw:
            return
        n += 1
        if len(raw) == limit and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(limit)
            yield n, None
            continue
        try:
            yield n, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise BatchError(
                f"{str(path)!r} is not UTF-8 text (line {n}, byte {exc.start} of it)"
            ) from None


def _parse_line(raw: str | None, index: int, n: int, base: Path) -> PromptRow:
    if raw is None or len(raw) > MAX_LINE_CHARS:
        raise ValueError(f"line is longer than {MAX_LINE_CHARS:,} characters")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply (expected one flat object)") from None
    return parse_row(obj, index, n, base)


def read_prompts(path: str | os.PathLike) -> list[PromptRow]:
    """Every row of a prompts file, validated as it is read (one line held at a time, at most
    :data:`MAX_ROWS` rows); BatchError listing the bad lines (all of them counted, the first
    few shown) and nothing else happens."""
    path = Path(path)
    base = path.resolve().parent
    rows: list[PromptRow] = []
    errors: list[str] = []
    bad = 0
    with _open(path) as fh:
        try:
            for n, raw in _lines(fh, path):
                if raw is not None and not raw.strip():
                    continue
                try:
                    row = _parse_line(raw, len(rows), n, base)
                except ValueError as exc:
                    bad += 1
                    if len(errors) < MAX_ERRORS_SHOWN:
                        errors.append(f"{path.name} line {n}: {exc}")
                    continue
                if len(rows) == MAX_ROWS:
                    raise BatchError(
                        f"{str(path)!r} has more than {MAX_ROWS:,} prompts (line {n}): split it "
                        "into several files"
                    )
                rows.append(row)
        except OSError as exc:
            raise BatchError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if bad:
        more = bad - len(errors)
        shown = "; ".join(errors) + (f"; and {more} more" if more > 0 else "")
        raise BatchError(f"{bad} bad row(s) in {str(path)!r}: {shown}")
    if not rows:
        raise BatchError(f"{str(path)!r} has no prompts: expected one JSON object per line")
    return rows


# ---------------------------------------------------------------------------------- masks
def _as_mask(word: str, arr: np.ndarray, where: str) -> np.ndarray:
    _check_side(word, arr.shape, where)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "uif" or not np.isin(arr, (0, 1)).all():
        raise BatchError(f"mask of {word!r} in {where}: expected booleans or 0/1 values")
    return arr.astype(bool)


def load_masks(base: str | os.PathLike, rel: str) -> dict[str, np.ndarray]:
    """The per-word masks a row names: ``{word (lower case): (H, W) bool}``; BatchError for a
    file that is too large, not an npz of 2-D arrays, or outside ``base``. Sizes are read from
    each array's header (or each PNG's) and bounded before any pixel is read."""
    base = Path(base).resolve()
    target = (base / rel).resolve()
    if target != base and not target.is_relative_to(base):
        raise BatchError(f"masks {rel!r} resolve outside {str(base)!r}")
    if target.is_dir():
        return _png_masks(target, rel)
    if not target.is_file() or target.stat().st_size > MAX_MASK_BYTES:
        raise BatchError(
            f"masks {rel!r}: expected an .npz file of at most {MAX_MASK_BYTES:,} bytes"
        )
    try:
        return _npz_masks(target, rel)
    except BatchError:
        raise
    except Exception as exc:  # zip / npy format errors all mean a bad file
        raise BatchError(
            f"masks {rel!r} is not a readable .npz: {type(exc).__name__}: {exc}"
        ) from None


def _check_side(word: str, shape: tuple[int, ...], where: str) -> None:
    if len(shape) != 2 or not all(0 < v <= MAX_MASK_SIDE for v in shape):
        raise BatchError(
            f"mask of {word!r} in {where} has shape {tuple(shape)}: expected 2-D (H, W), "
            f"sides 1..{MAX_MASK_SIDE}"
        )


def _budget(total: int, where: str) -> None:
    if total > MAX_MASK_TOTAL_BYTES:
        raise BatchError(
            f"masks {where!r} take over {MAX_MASK_TOTAL_BYTES:,} bytes once read: at most "
            f"{MAX_MASK_TOTAL_BYTES:,} per row"
        )


def _png_masks(target: Path, rel: str) -> dict[str, np.ndarray]:
    from PIL import Image

    pngs = sorted(target.glob("*.png"))
    if len(pngs) > MAX_MASKS:
        raise BatchError(f"masks {rel!r} holds {len(pngs)} .png files: at most {MAX_MASKS}")
    out: dict[str, np.ndarray] = {}
    total = 0
    for png in pngs:
        if png.stat().st_size > MAX_MASK_BYTES:
            raise BatchError(f"mask {str(png)!r} is larger than {MAX_MASK_BYTES:,} bytes")
        with Image.open(png) as im:  # reads the header only
            if im.width > MAX_MASK_SIDE or im.height > MAX_MASK_SIDE:
                raise BatchError(f"mask {str(png)!r} is {im.width}x{im.height}: too large")
            total += im.width * im.height
            _budget(total, rel)
            out[png.stem.lower()] = np.asarray(im.convert("L")) > 127
    return out


def _npz_masks(target: Path, rel: str) -> dict[str, np.ndarray]:
    """Each array's .npy header (shape, dtype) is read and bounded before its data."""
    out: dict[str, np.ndarray] = {}
    total = 0
    with zipfile.ZipFile(target) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MASKS:
            raise BatchError(f"masks {rel!r} holds {len(infos)} arrays: at most {MAX_MASKS}")
        for info in infos:
            word = info.filename.removesuffix(".npy")
            with zf.open(info) as fh:
                shape, fortran, dtype = _npy_header(fh)
                _check_side(word, shape, rel)
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise BatchError(f"mask of {word!r} in {rel}: expected booleans or 0/1 values")
                nbytes = shape[0] * shape[1] * dtype.itemsize
                total += nbytes
                _budget(total, rel)
                if info.file_size - fh.tell() != nbytes:  # the zip's own size, before allocating
                    raise BatchError(
                        f"mask of {word!r} in {rel}: its header says {nbytes} bytes of data; "
                        "the file holds a different number"
                    )
                arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
                try:
                    read_into(fh, arr.T if fortran else arr, nbytes)
                except EOFError:
                    nbytes = -1
                if nbytes < 0 or fh.read(1):
                    raise BatchError(
                        f"mask of {word!r} in {rel}: its header says {arr.nbytes} bytes of "
                        "data; the file holds a different number"
                    )
            out[word.lower()] = _as_mask(word, arr, rel)
    return out


def _npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        return fmt.read_array_header_1_0(fh)
    if version == (2, 0):
        return fmt.read_array_header_2_0(fh)
    raise ValueError(f".npy format version {version}: expected 1.0 or 2.0")
