"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed.

An interrupted run therefore never leaves a truncated checkpoint, JSON or report behind: readers see
either the old file or the complete new one. A full disk is one `DiskFull` error naming the file and the
space it needs, whatever layer noticed it first (torch's checkpoint writer reports it as its own error).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import torch


class DiskFull(OSError):
    """No space left for a file; the message names it, the space it needs and what is free."""

    def __str__(self) -> str:
        return str(self.strerror)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size} bytes"


def _is_disk_full(error: BaseException) -> bool:
    """Whether ENOSPC (or a quota) is anywhere in `error`'s chain of causes."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _disk_full(path: Path, written: int, error: BaseException) -> DiskFull:
    previous = path.stat().st_size if path.is_file() else 0
    free = shutil.disk_usage(path.parent).free
    need = f"about {_megabytes(previous)}" if previous > written else f"more than {_megabytes(written)}"
    kept = "; the previous file is kept" if previous else ""
    return DiskFull(errno.ENOSPC, f"no space left on the device writing {path}: it needs {need}, "
                                  f"the device has {_megabytes(free)}{kept}; free some space and run again")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(f)` on a temporary file next to `path`, then rename it over `path`. `DiskFull` when the
    device fills up (the temporary is removed, `path` is untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        if _is_disk_full(error):
            raise _disk_full(path, 0, error) from None
        raise
    try:
        # mkstemp creates files 0600; give the result the permissions an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, Exception) and _is_disk_full(error):
            raise _disk_full(path, written, error) from None
        raise
    return path


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy the file `source` to `target` atomically (16 MiB at a time)."""
    with open(source, "rb") as f:
        return atomic_write(target, lambda out: shutil.copyfileobj(f, out, length=1 << 24))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))
