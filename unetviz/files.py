"""Bounded reads of files from outside: the one place a config, vocabulary or index is read.

Imports nothing of ours but the error base, so both ``config`` and ``detect`` build on it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import UnetvizError


class ModelPathError(UnetvizError):
    """A model path that does not exist, cannot be read, or is not a model unetviz opens."""


def os_message(path: Path, exc: OSError) -> str:
    """One line for an OSError on ``path``: permission denied, symlink loop, or its reason."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{str(path)!r}: permission denied"
    if exc.errno == errno.ELOOP:
        return f"{str(path)!r} is a symlink loop"
    return f"cannot read {str(path)!r}: {exc.strerror or exc}"


def read_bytes(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes: FIFOs, devices and
    ``/dev/zero`` are refused before any read; errors say permission denied / not found /
    too large, never the content."""
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ModelPathError(
                f"{what} {str(path)!r} is not a regular file (a FIFO, socket, device or folder)"
            )
        if st.st_size > limit:
            raise ModelPathError(
                f"{what} {str(path)!r} is {st.st_size:,} bytes: more than the {limit:,} allowed"
            )
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise ModelPathError(f"{what} not found: {str(path)!r}") from None
    except OSError as exc:
        raise ModelPathError(f"{what}: {os_message(path, exc)}") from None
    if len(data) > limit:
        raise ModelPathError(f"{what} {str(path)!r} grew past the {limit:,} bytes allowed")
    return data
