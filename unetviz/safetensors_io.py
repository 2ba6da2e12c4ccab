"""The one safetensors reader: a bounded header read, one dtype table, declared-vs-actual byte
checks, and tensor data streamed straight into its own storage.

Weights (``weights.py``) and trace bundles (``capture/bundle.py``) both read safetensors from
outside; both go through :func:`read_header` before anything is allocated from a header. Torch
is imported only when a tensor is made (the header is plain data).

A header is accepted only when every entry has a known dtype, a shape of at most ``MAX_RANK``
non-negative ints, ``data_offsets`` whose length equals ``prod(shape) * itemsize``, and the
entries tile the data section exactly (no gap, no overlap, no byte after the last one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import UnetvizError

#: safetensors dtype name -> (bytes per element, torch attribute name). Sub-byte dtypes (F4, F6)
#: are not listed: their byte counts are not a whole number per element.
DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"),
    "F32": (4, "float32"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
    "C64": (8, "complex64"),
    "I64": (8, "int64"),
    "I32": (4, "int32"),
    "I16": (2, "int16"),
    "I8": (1, "int8"),
    "U64": (8, "uint64"),
    "U32": (4, "uint32"),
    "U16": (2, "uint16"),
    "U8": (1, "uint8"),
    "BOOL": (1, "bool"),
}
#: the floating dtypes (weights load only these)
FLOAT_NAMES = ("F64", "F32", "F16", "BF16")
#: safetensors' own header limit
MAX_HEADER_BYTES = 100 * 2**20
MAX_RANK = 8
CHUNK = 2**20


def offenders(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` of ``names`` joined for an error message, with how many more."""
    head = ", ".join(names[:limit])
    return head + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


class SafetensorsFormatError(UnetvizError):
    """The bytes are not a well-formed safetensors file (a ValueError); the message says which
    check failed."""


@dataclass(frozen=True)
class Entry:
    """One tensor of a header: dtype name, shape and its byte range (offsets from the file's
    start, so ``begin`` can be seeked to)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def torch_dtype(name: str) -> Any:
    """The torch dtype of a safetensors dtype name (``"F16"`` -> ``torch.float16``)."""
    import torch

    return getattr(torch, DTYPES[name][1])


def read_header(
    fh: IO[bytes], size: int, max_header: int = MAX_HEADER_BYTES
) -> tuple[list[Entry], dict[str, str]]:
    """(entries in file order, ``__metadata__``) of the safetensors file of ``size`` bytes read
    from ``fh`` (positioned at its start; left at the first data byte). At most ``max_header``
    header bytes are read; SafetensorsFormatError (a ValueError) when any check fails."""
    if size < 8:
        raise SafetensorsFormatError(f"{size} bytes: too short for a safetensors header")
    n = int.from_bytes(read_exact(fh, 8), "little")
    if not 2 <= n <= min(size - 8, max_header):
        raise SafetensorsFormatError(
            f"a header of {n} bytes in a {size}-byte file (at most {max_header} allowed)"
        )
    try:
        header = json.loads(read_exact(fh, n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SafetensorsFormatError(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SafetensorsFormatError("__metadata__ is not an object of strings")
    base = 8 + n
    entries = sorted((_entry(name, e, base) for name, e in header.items()), key=lambda e: e.begin)
    offset = base
    for e in entries:
        if e.begin != offset:
            raise SafetensorsFormatError(
                f"tensor {e.name!r} starts at data byte {e.begin - base}, expected "
                f"{offset - base} (tensors must tile the data exactly)"
            )
        offset = e.end
    if offset != size:
        raise SafetensorsFormatError(
            f"the data is {size - base} bytes but the header declares {offset - base}"
        )
    return entries, meta


def _entry(name: str, e: Any, base: int) -> Entry:
    if not isinstance(e, dict):
        raise SafetensorsFormatError(f"entry {name!r} is not an object")
    dtype, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
    if dtype not in DTYPES:
        raise SafetensorsFormatError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if not _ints(shape, MAX_RANK) or not _ints(offsets, 2) or len(offsets) != 2:
        raise SafetensorsFormatError(f"tensor {name!r}: bad shape or data_offsets")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPES[dtype][0]
    if end - begin != nbytes:
        raise SafetensorsFormatError(
            f"tensor {name!r}: {end - begin} bytes declared for shape {shape} of {dtype} "
            f"({nbytes} bytes)"
        )
    return Entry(name, dtype, tuple(shape), base + begin, base + end)


def _ints(value: Any, max_len: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= max_len
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def read_exact(fh: IO[bytes], n: int) -> bytes:
    """Exactly ``n`` bytes from ``fh`` (EOFError when the file ends first)."""
    data = fh.read(n)
    if len(data) != n:
        raise EOFError(f"expected {n} bytes, got {len(data)}")
    return data


def read_into(fh: IO[bytes], buf: Any, n: int) -> None:
    """Read exactly ``n`` bytes from ``fh`` into the writable buffer ``buf`` in CHUNK pieces
    (works on streams that cannot ``readinto``, such as a zip member)."""
    view = memoryview(buf).cast("B") if n else memoryview(b"")
    pos = 0
    while pos < n:
        chunk = fh.read(min(CHUNK, n - pos))
        if not chunk:
            raise EOFError(f"tensor data ends after {pos} of {n} bytes")
        view[pos : pos + len(chunk)] = chunk
        pos += len(chunk)


def read_tensor(fh: IO[bytes], entry: Entry) -> Any:
    """The next tensor of a stream positioned at ``entry.begin``, read into its own storage."""
    import torch

    t = torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
    if entry.nbytes:
        read_into(fh, t.view(-1).view(torch.uint8).numpy(), entry.nbytes)
    return t


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file on disk (offsets from the file's start)."""

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_at(fh: IO[bytes], entry: Entry | TensorEntry, out: Any = None) -> Any:
    """The tensor of ``entry`` read from the seekable file ``fh`` with one ``readinto`` (no
    mmap, so pages of the file never count towards the process's memory). ``out``: a uint8
    tensor of at least the entry's bytes to read into instead of a tensor of its own (the
    result is then a view of it). EOFError when the file is cut short."""
    import torch

    start = entry.begin if isinstance(entry, Entry) else entry.start
    nbytes = entry.end - start
    if out is None:
        tensor = torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
        buf = tensor.reshape(-1).view(torch.uint8)
    else:
        buf = out[:nbytes]
    fh.seek(start)
    if nbytes and fh.readinto(buf.numpy()) != nbytes:  # type: ignore[attr-defined]
        raise EOFError(f"tensor data ends before {nbytes} bytes")
    return tensor if out is None else buf.view(torch_dtype(entry.dtype)).reshape(entry.shape)


def read_tensors(
    entries: Iterable[TensorEntry],
    target: Any,
    device: Any = "cpu",
    error: type[Exception] = SafetensorsFormatError,
) -> Iterator[tuple[str, Any]]:
    """(key, tensor at ``target`` dtype) for each floating-point entry, read one at a time with
    plain file reads and checked finite (``error`` naming the file and key otherwise). Without
    a cast the bytes land in the final tensor; with one they land in one reused scratch
    buffer, so the peak is the tensors at ``target`` plus the largest one (a float32 file
    loads as float16 at ~0.5x its size)."""
    import torch

    entries = list(entries)
    scratch: Any = None
    handles: dict[Path, Any] = {}
    e: TensorEntry | None = None
    try:
        for e in entries:
            src = torch_dtype(e.dtype)
            fh = handles.get(e.file) or handles.setdefault(e.file, open(e.file, "rb"))  # noqa: SIM115
            if src == target:
                tensor = read_at(fh, e)
            else:
                if scratch is None:  # one buffer, as large as the largest tensor to cast
                    size = max(x.end - x.start for x in entries if torch_dtype(x.dtype) != target)
                    scratch = torch.empty(size, dtype=torch.uint8)
                tensor = read_at(fh, e, scratch).to(target)
            if not bool(torch.isfinite(tensor).all()):
                raise error(
                    f"{e.file}: tensor {e.key!r} holds NaN or infinite values"
                    + (f" (after casting {e.dtype} to {target})" if src != target else "")
                )
            yield e.key, tensor.to(device) if str(device) != "cpu" else tensor
    except EOFError:
        assert e is not None
        raise error(f"{e.file}: tensor {e.key!r} is cut short (truncated file?)") from None
    except OSError as exc:
        raise error(f"cannot read the weights: {exc}") from None
    finally:
        for fh in handles.values():
            fh.close()
