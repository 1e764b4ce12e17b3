"""Stopping on a signal with one line instead of a traceback: Ctrl-C (SIGINT), `kill` (SIGTERM) and a
closed terminal (SIGHUP) are handled alike everywhere.

- During training steps the first signal only sets a flag (`StopFlag`): the trainer finishes the step,
  writes checkpoint_last.pth and raises `engine.train.TrainingInterrupted`. A second signal stops at once
  (`Stopped`); checkpoints are written atomically, so the previous one stays valid whatever is interrupted.
- Anywhere else (loading data, evaluating) a signal raises `Stopped` at once (`signals_raise_stopped`).
- Loader workers ignore all three (`ignore_stop_signals`, their `worker_init_fn`): a signal sent to the whole
  process group, as a terminal's Ctrl-C is, would otherwise kill them mid-batch and turn a clean stop into
  "DataLoader worker exited unexpectedly". The main process ends them on its way out.
Exit codes follow the shell: 128 + the signal number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_code(signum: int) -> int:
    return 128 + int(signum)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; `signum` says which. A KeyboardInterrupt, so that code that cleans up after
    Ctrl-C (papermill shutting a kernel down, atomic writes removing their temporary) does so for all three."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def signals_raise_stopped() -> Iterator[None]:
    """Within the block, each stop signal raises `Stopped` (main thread only; handlers restored after)."""
    if not _in_main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    previous = {each: signal.signal(each, stop) for each in STOP_SIGNALS}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


class StopFlag:
    """Within the block, the first stop signal sets `signum` (checked by the loop once per step); a second one
    raises `Stopped` at once. Main thread only; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopFlag:
        if _in_main_thread():  # signal handlers live in the main thread
            self._previous = {each: signal.signal(each, self._handle) for each in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Stopped(signum)
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for each, handler in self._previous.items():
            signal.signal(each, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A loader worker's `worker_init_fn`: the main process decides when the workers stop."""
    for each in STOP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)
