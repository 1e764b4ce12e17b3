"""The training log `metrics.jsonl`: one JSON object per line (`LogLine`), appended by rank 0 as training goes.

Two kinds of line, told apart by what they hold:
- a training window, every `log_every` steps: iteration, fractional epoch, lr of the last step, `loss` (the
  sum) and each weighted loss (`loss_aux`, `loss_point`) as means over the window's steps, `window` (its
  number of steps) and `seconds` (cumulative training wall time over every session);
- an evaluation during training: iteration, epoch, mIoU, coarse_mIoU and boundary_mIoU in percent.
A resume drops the lines written after the checkpoint it continues from, so the log never counts a step twice.
The file's name belongs to `engine.run_folder.RunFolder` (`metrics_log`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from pointrend_core.engine.state import Position
from pointrend_core.files import atomic_write_text


@dataclass(frozen=True)
class LogLine:
    """One line of metrics.jsonl. On disk the losses are flat keys beside `loss` (their sum)."""

    iteration: int
    epoch: float | None = None
    lr: float | None = None
    losses: Mapping[str, float] = field(default_factory=dict)
    """Each weighted loss (loss_aux, loss_point), the mean over the window's steps."""
    window: int | None = None
    seconds: float | None = None
    """Cumulative training wall time over every session."""
    images_per_second: float | None = None
    """Training images per second over the window (all processes)."""
    data_seconds: float | None = None
    """Mean seconds per step spent waiting for the next batch."""
    mIoU: float | None = None
    coarse_mIoU: float | None = None
    boundary_mIoU: float | None = None

    @property
    def is_evaluation(self) -> bool:
        return self.mIoU is not None

    @property
    def loss(self) -> float | None:
        return sum(self.losses.values()) if self.losses else None

    def to_json(self) -> dict[str, Any]:
        flat: dict[str, Any] = {"iteration": self.iteration, "epoch": self.epoch}
        if self.is_evaluation:
            return flat | {"mIoU": self.mIoU, "coarse_mIoU": self.coarse_mIoU, "boundary_mIoU": self.boundary_mIoU}
        return flat | {"lr": self.lr, "loss": self.loss, **self.losses, "window": self.window, "seconds": self.seconds,
                       "images_per_second": self.images_per_second, "data_seconds": self.data_seconds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LogLine:
        """From a line's object (KeyError or TypeError when it is not one of ours)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"losses"}
        losses = {k: float(v) for k, v in data.items() if k.startswith("loss_")}
        return cls(**{k: data[k] for k in names if k in data}, losses=losses)


COLUMNS = ("iteration", "epoch", "lr", "loss", "window", "seconds", "images_per_second", "data_seconds", "mIoU",
           "coarse_mIoU", "boundary_mIoU")
"""The DataFrame's columns of `read_train_log` (each loss_* column besides)."""


def window_line(
    position: Position, steps_per_epoch: int, lr: float, window: Mapping[str, list[float]], seconds: float,
    images_per_second: float | None = None, data_seconds: float | None = None,
) -> LogLine:
    """The line after `position.iteration` steps: the lr of the last step, mean losses over the steps since
    the previous line (`window`: each loss's values, one per step), fractional epochs and cumulative seconds;
    the window's speed and mean data wait when measured."""
    return LogLine(
        iteration=position.iteration,
        epoch=position.epochs(steps_per_epoch),
        lr=lr,
        losses={name: sum(v) / len(v) for name, v in window.items()},
        window=len(next(iter(window.values()), [])),
        seconds=round(seconds, 3),
        images_per_second=None if images_per_second is None else round(images_per_second, 3),
        data_seconds=None if data_seconds is None else round(data_seconds, 5),
    )


def append_line(path: Path, line: LogLine) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line.to_json()) + "\n")


def read_lines(path: str | os.PathLike) -> list[LogLine]:
    """Every complete line of ours (a line cut short by a kill, or foreign, is skipped)."""
    lines = []
    for text in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            lines.append(LogLine.from_json(json.loads(text)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue
    return lines


def keep_lines_up_to(path: Path, iteration: int) -> None:
    """Drop the lines written after `iteration` (a resume redoes those steps); lines cut short by a kill go too."""
    if not path.exists():
        return
    kept = [line for line in read_lines(path) if line.iteration <= iteration]
    atomic_write_text(path, "".join(json.dumps(line.to_json()) + "\n" for line in kept))


def read_train_log(path: str | os.PathLike) -> pd.DataFrame:
    """The log as a DataFrame, one row per line (`COLUMNS` and each loss_*; absent values are NaN)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no training metrics at {path} (written by pointrend_core's train)")
    lines = read_lines(path)
    if not lines:
        if Path(path).read_text(encoding="utf-8").strip():
            raise ValueError(f"{path} has no iteration column: not a training log written by pointrend_core's train")
        raise ValueError(f"{path} is empty: training logged no iteration")
    return pd.DataFrame([line.to_json() for line in lines])
