"""Where unetviz writes: atomic files and folders, under rules that keep a user's files safe.

- A file is written to a hidden temporary name beside its destination and renamed into place:
  a reader never sees half a file and a failure (or SIGTERM) leaves nothing behind.
- A folder of outputs carries a marker (``.unetviz-output.json``) listing what unetviz wrote.
  An existing folder is replaced only when it is empty or its marker lists everything in it;
  a foreign non-empty folder is refused unless ``force=True``, which writes unetviz's files
  into it and replaces only files of the same name - never deletes anything else.
- ``/``, the home folder, the working directory and its ancestors are never written as a
  folder of outputs, with or without ``force``.
- Modes follow the umask (0666 / 0777 minus it), like any other tool's files; a replaced
  file keeps its mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import OutputError

MARKER = ".unetviz-output.json"


def umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # pragma: no cover - non-Linux fallback
    os.umask(old)
    return old


@contextlib.contextmanager
def sigterm_raises(make: Callable[[int], BaseException]) -> Iterator[None]:
    """Turn SIGTERM into the exception ``make(signum)`` for the length of the ``with`` (main
    thread only), so ``except``/``finally`` clean-ups run: the default action kills the
    process mid-write. Writers raise ``SystemExit``; a batch job raises ``KeyboardInterrupt``
    to stop like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise make(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate_as_exit() -> contextlib.AbstractContextManager[None]:
    return sigterm_raises(lambda signum: SystemExit(128 + signum))


def _parent_of(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(
            f"cannot write {os.fspath(path)!r}: folder {os.fspath(parent)!r} does not exist"
        )
    return parent


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for binary writing; on success it is renamed
    over ``path`` (keeping an existing file's mode), on any failure it is removed."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {os.fspath(path)!r}: it is a folder, expected a file")
    if path.exists() and not path.is_file():  # a FIFO or device: renaming would replace the node
        raise OutputError(
            f"cannot write {os.fspath(path)!r}: it is a special file (FIFO or device), "
            "expected a regular file"
        )
    parent = _parent_of(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write {os.fspath(path)!r}: {exc.strerror or exc}") from None
    try:
        with _terminate_as_exit():
            with os.fdopen(fd, "wb") as fh:
                yield fh
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask()
            os.chmod(tmp, mode)
            os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {os.fspath(path)!r}: {exc.strerror or exc}") from None
        raise


def write_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def protected_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` may never be used as a folder of outputs, or None if it may."""
    target = Path(path).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "it is the filesystem root"
    if target == Path.home().resolve():
        return "it is your home folder"
    if target == cwd:
        return "it is the working directory"
    if target in cwd.parents:
        return "it is an ancestor of the working directory"
    return None


def _listing(folder: Path) -> set[str]:
    """Every file and folder below ``folder``, as relative POSIX paths."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _written_by_us(folder: Path) -> bool:
    """True if ``folder``'s marker lists everything in it (nothing of the user's inside)."""
    marker = folder / MARKER
    if not marker.is_file() or marker.is_symlink():
        return False
    try:
        listed = set(json.loads(marker.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    present = _listing(folder) - {MARKER}
    return present <= listed


def _merge_into(src: Path, dest: Path) -> None:
    """Move every file of ``src`` into ``dest``, replacing only same-named files."""
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if rel.as_posix() == MARKER:
            continue
        target = dest / rel
        if item.is_dir():
            if target.exists() and not target.is_dir():
                raise OutputError(f"cannot write {os.fspath(target)!r}: a file is in the way")
            target.mkdir(exist_ok=True)
        else:
            if target.is_dir():
                raise OutputError(f"cannot write {os.fspath(target)!r}: a folder is in the way")
            os.replace(item, target)


def check_output_folder(output: str | os.PathLike, force: bool = False) -> bool:
    """Raise ``OutputError`` if ``write_folder(output, ..., force)`` would refuse; call it
    before expensive work. Returns True if ``output`` is a foreign folder (written into)."""
    output = Path(output)
    reason = protected_reason(output)
    if reason is not None:
        raise OutputError(
            f"refusing to write outputs into {os.fspath(output)!r}: {reason}; "
            "give a new or empty folder, e.g. -o out/"
        )
    if output.exists() and not output.is_dir():
        raise OutputError(f"{os.fspath(output)!r} exists and is not a folder")
    foreign = output.is_dir() and any(output.iterdir()) and not _written_by_us(output)
    if foreign and not force:
        raise OutputError(
            f"{os.fspath(output)!r} is not empty and was not written by unetviz; choose a new "
            "folder, or pass --force to write into it (only files of the same names are "
            "replaced, nothing is deleted)"
        )
    return foreign


def write_folder(
    output: str | os.PathLike, fill: Callable[[Path], object], force: bool = False
) -> Path:
    """Build a folder of outputs with ``fill(tmp)`` in a hidden temporary folder beside
    ``output``, then put it in place under the rules in the module docstring. A failure in
    ``fill`` (or SIGTERM) leaves ``output`` as it was and no temporary folder behind."""
    output = Path(output)
    foreign = check_output_folder(output, force)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {os.fspath(output)!r}: {exc.strerror or exc}") from None
    old: Path | None = None
    try:
        with _terminate_as_exit():
            fill(tmp)
            files = sorted(_listing(tmp))
            (tmp / MARKER).write_text(json.dumps({"tool": "unetviz", "files": files}) + "\n")
            os.chmod(tmp, 0o777 & ~umask())
            if foreign:
                _merge_into(tmp, output)
                shutil.rmtree(tmp)
            elif output.is_dir() and any(output.iterdir()):
                old = output.with_name(f".{output.name}.{os.getpid()}.old")
                os.replace(output, old)
                os.replace(tmp, output)
            else:
                os.replace(tmp, output)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not output.exists():
            os.replace(old, output)
        if isinstance(exc, OSError):
            raise OutputError(
                f"cannot write {os.fspath(output)!r}: {exc.strerror or exc}"
            ) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # held only unetviz's own files (checked above)
    return output
