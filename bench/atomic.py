"""The one way pricebench writes a file: atomically, and only inside a folder it was given.

- :func:`atomic_path` / :func:`write_text` / :func:`write_bytes`: write a
  temporary file in the target's folder, flush it to disk, then rename it over
  the target, so a reader (or a run interrupted by Ctrl-C or SIGKILL) never
  sees half a file. Files get the ordinary mode (0666 less the umask), not
  mkstemp's 0600.
- :func:`append_line`: add one line to a log (the results store's rows) with a
  single ``write`` on an ``O_APPEND`` descriptor and ``fsync``; concurrent
  writers never interleave within a line, and a crash loses at most the line
  being written (a reader skips a torn last line).
- :func:`inside`: the path of ``name`` inside ``folder``, refusing anything
  that would land outside it (``..``, absolute paths, separators), whatever a
  suite's names contain.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
MAX_NAME = 100


def _mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    ``suffix`` keeps an extension for writers that look at it (``savefig``
    picks the format from ``.png``, ``np.savez`` appends ``.npz`` otherwise).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_with(path: str | os.PathLike, write) -> None:
    """Atomically write ``path`` through ``write(fh)`` on a text file handle."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            write(fh)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (a newline is added) to ``path`` in one write, then fsync."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _mode())
    try:
        written = os.write(fd, data)
        while written < len(data):  # a short write is rare but possible
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def safe_name(name: str) -> str:
    """``name`` made fit for one path component: letters, digits, '_', '.', '-', at most 100 characters."""
    text = _UNSAFE.sub("_", str(name)).lstrip(".") or "_"
    return text[:MAX_NAME]


def inside(folder: str | os.PathLike, name: str, suffix: str = "") -> Path:
    """The file ``safe_name(name) + suffix`` in ``folder``; never a path outside ``folder``."""
    folder = Path(folder)
    path = folder / (safe_name(name) + suffix)
    if path.resolve().parent != folder.resolve():  # pragma: no cover - safe_name already guarantees it
        raise ValueError(f"{name!r} would be written outside {folder}")
    return path
