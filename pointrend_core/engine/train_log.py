"""The training log `metrics.jsonl`: one JSON object per line, appended by rank 0 as training goes.

Two kinds of line, told apart by their keys:
- a training window, every `log_every` steps: iteration, fractional epoch, lr of the last step, `loss` (the
  sum) and each weighted loss (`loss_aux`, `loss_point`) as means over the window's steps, `window` (its
  number of steps) and `seconds` (cumulative training wall time over every session);
- an evaluation during training: iteration, epoch, mIoU, coarse_mIoU and boundary_mIoU in percent.
A resume drops the lines written after the checkpoint it continues from, so the log never counts a step twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from pointrend_core.engine.state import Position
from pointrend_core.files import atomic_write_text

METRICS_FILE = "metrics.jsonl"


def window_record(
    position: Position, steps_per_epoch: int, lr: float, window: Mapping[str, list[float]], seconds: float
) -> dict[str, Any]:
    """The line after `position.iteration` steps: the lr of the last step, mean losses over the steps since
    the previous line (`window`: each loss's values, one per step), fractional epochs and cumulative seconds."""
    means = {name: sum(v) / len(v) for name, v in window.items()}
    return {
        "iteration": position.iteration,
        "epoch": position.epochs(steps_per_epoch),
        "lr": lr,
        "loss": sum(means.values()),
        **means,
        "window": len(next(iter(window.values()), [])),
        "seconds": round(seconds, 3),
    }


def append_line(path: Path, record: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def keep_lines_up_to(path: Path, iteration: int) -> None:
    """Drop the lines written after `iteration` (a resume redoes those steps); lines cut short by a kill go too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["iteration"] <= iteration:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_train_log(path: str | os.PathLike) -> pd.DataFrame:
    """The log as a DataFrame, one row per line (columns absent from a line are NaN)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no training metrics at {path} (written by engine.train as {METRICS_FILE})")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty: training logged no iteration")
    return pd.read_json(path, lines=True)
