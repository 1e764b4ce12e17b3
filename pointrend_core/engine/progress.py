"""Live training progress in a run folder: `progress.json`, rewritten after every optimiser step.

The trainer writes it (rank 0) and anything watching the run folder reads it: the workbook runner draws a
terminal progress bar from it while a notebook trains in its kernel, where the trainer's own tqdm bar would
only fill the notebook's output. It is a snapshot, not a log (metrics.jsonl is the log): written by renaming
a temporary file, without fsync, because losing the last snapshot in a crash costs nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainProgress:
    """Where a training run is: `iteration` of `max_iters` steps done, the last step's total loss and lr,
    wall seconds since this session (re)started at `start_iteration`, and when it was written (time.time())."""

    iteration: int
    max_iters: int
    loss: float
    lr: float
    session_seconds: float
    start_iteration: int
    written_at: float

    @property
    def seconds_per_iteration(self) -> float | None:
        done = self.iteration - self.start_iteration
        return self.session_seconds / done if done > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds until max_iters at this session's average pace (None before the first step)."""
        pace = self.seconds_per_iteration
        return None if pace is None else pace * (self.max_iters - self.iteration)

    def write(self, path: Path) -> None:
        """Replace the snapshot at `path` (a run folder's `RunFolder.progress_file`)."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(temporary, path)


def read_progress(path: str | os.PathLike) -> TrainProgress | None:
    """The snapshot at `path`, or None when there is none (or it cannot be read as one)."""
    try:
        return TrainProgress(**json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
