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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetviz.errors import UnetvizError

KEYS = ("prompt", "seed", "negative_prompt", "steps", "guidance", "masks", "classes")
MAX_FILE_BYTES = 256 * 1024**2
MAX_LINE_CHARS = 64 * 1024
MAX_PROMPT_CHARS = 4096
MAX_MASK_BYTES = 64 * 1024**2
MAX_MASK_SIDE = 4096
MAX_STEPS = 1000
MAX_ERRORS_SHOWN = 8


class BatchError(UnetvizError):
    """A prompt set, a mask file, an output folder or a batch option is wrong."""


@dataclass
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
        return asdict(self)


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
        if not 0 <= g <= 100:
            raise ValueError(f"'guidance' must be from 0 to 100, got {g!r}")
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
    data = row.to_dict()
    for k in ("index", "line", "key"):
        data.pop(k)
    row.key = _row_key(index, data)
    return row


def _read_text(path: Path) -> str:
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
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchError(f"{str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise BatchError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def read_prompts(path: str | os.PathLike) -> list[PromptRow]:
    """Every row of a prompts file, validated; BatchError listing the bad lines (all of them
    checked, the first few shown) and nothing else happens."""
    path = Path(path)
    text = _read_text(path)
    base = path.resolve().parent
    rows: list[PromptRow] = []
    errors: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            if len(raw) > MAX_LINE_CHARS:
                raise ValueError(f"line is {len(raw):,} characters (at most {MAX_LINE_CHARS:,})")
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            rows.append(parse_row(obj, len(rows), n, base))
        except ValueError as exc:
            errors.append(f"{path.name} line {n}: {exc}")
    if errors:
        more = len(errors) - MAX_ERRORS_SHOWN
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise BatchError(f"{len(errors)} bad row(s) in {str(path)!r}: {shown}")
    if not rows:
        raise BatchError(f"{str(path)!r} has no prompts: expected one JSON object per line")
    return rows


# ---------------------------------------------------------------------------------- masks
def _as_mask(word: str, arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim != 2 or not (
        0 < arr.shape[0] <= MAX_MASK_SIDE and 0 < arr.shape[1] <= MAX_MASK_SIDE
    ):
        raise BatchError(
            f"mask of {word!r} in {where} has shape {tuple(arr.shape)}: expected 2-D (H, W), "
            f"sides 1..{MAX_MASK_SIDE}"
        )
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "uif" or not np.isin(arr, (0, 1)).all():
        raise BatchError(f"mask of {word!r} in {where}: expected booleans or 0/1 values")
    return arr.astype(bool)


def load_masks(base: str | os.PathLike, rel: str) -> dict[str, np.ndarray]:
    """The per-word masks a row names: ``{word (lower case): (H, W) bool}``; BatchError for a
    file that is too large, not an npz of 2-D arrays, or outside ``base``."""
    base = Path(base).resolve()
    target = (base / rel).resolve()
    if target != base and not target.is_relative_to(base):
        raise BatchError(f"masks {rel!r} resolve outside {str(base)!r}")
    out: dict[str, np.ndarray] = {}
    if target.is_dir():
        from PIL import Image

        for png in sorted(target.glob("*.png")):
            if png.stat().st_size > MAX_MASK_BYTES:
                raise BatchError(f"mask {str(png)!r} is larger than {MAX_MASK_BYTES:,} bytes")
            with Image.open(png) as im:
                if im.width > MAX_MASK_SIDE or im.height > MAX_MASK_SIDE:
                    raise BatchError(f"mask {str(png)!r} is {im.width}x{im.height}: too large")
                out[png.stem.lower()] = np.asarray(im.convert("L")) > 127
        return out
    if not target.is_file() or target.stat().st_size > MAX_MASK_BYTES:
        raise BatchError(
            f"masks {rel!r}: expected an .npz file of at most {MAX_MASK_BYTES:,} bytes"
        )
    try:
        with np.load(target, allow_pickle=False) as npz:
            for word in npz.files:
                out[word.lower()] = _as_mask(word, npz[word], rel)
    except BatchError:
        raise
    except Exception as exc:  # zip / npy format errors all mean a bad file
        raise BatchError(
            f"masks {rel!r} is not a readable .npz: {type(exc).__name__}: {exc}"
        ) from None
    return out
