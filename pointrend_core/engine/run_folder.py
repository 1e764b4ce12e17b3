"""One run per folder: a lock that a second run into the same folder cannot take, and that a killed run
never leaves behind.

The lock is `fcntl.flock` on `<folder>/.lock` (the file also names the holder's pid and command line for
the message). The operating system drops a flock when its process ends, however it ends, so a killed run
never blocks `--resume`. Child processes of a lock holder (the workbook's notebook kernel, torchrun's
workers) inherit the right to work in the folder through `POINTREND_HELD_RUN_FOLDERS`, so the layers of one
run do not lock each other out.
"""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"
HELD_ENV = "POINTREND_HELD_RUN_FOLDERS"


class RunFolderBusy(ValueError):
    """Another process holds the run folder; the message names the folder and that process."""


def _held() -> list[str]:
    return [p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p]


@contextmanager
def run_folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold `folder` (created if needed) for the block; RunFolderBusy at once if another run holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if key in _held():  # our parent process holds it for this same run: work under its lock
                yield folder
                return
            raise RunFolderBusy(f"run folder {folder} is in use by {holder}; wait for it to finish, stop it, or "
                                "choose another folder") from None
        # Taken: either nobody held it, or the parent that did has died (then this process carries on alone
        # and holds the folder itself, so a new run cannot start beside it).
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} ({' '.join(sys.argv)[:200]})\n")
        handle.flush()
        previous = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = os.pathsep.join([*_held(), key])
        try:
            yield folder
        finally:
            if previous is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
