"""The records a run writes as JSON: `TrainRecord` (train.json, what was trained) and `RunRecord` (run.json,
one evaluation with the training it evaluated). Every writer and reader goes through these dataclasses.

Units: every metric in a `RunRecord` is a percentage (0-100); a class that cannot be scored is None (null).
Reading is lenient about what is absent (fields that were added later, records written by hand in tests or
by older versions) except for what a record is for: a run.json needs `row` and `metrics`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torchvision

from pointrend_core.config import RowConfig
from pointrend_core.engine.distributed import rank_and_world_size
from pointrend_core.engine.intervals import RunIntervals
from pointrend_core.files import atomic_write_json

UNITS = "every metric is a percentage (0-100); null = class with no pixels to score"


@dataclass(frozen=True)
class TrainRecord:
    """train.json: what was trained, how long it took, on what, and the final losses."""

    row: str | None = None
    config: dict[str, Any] | None = None
    iterations: int | None = None
    max_iters: int | None = None
    iters_per_epoch: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    per_process_batch: int | None = None
    world_size: int = 1
    synchronized_batchnorm_layers: int = 0
    device: str | None = None
    amp: str | None = None
    channels_last: bool = False
    """The memory format the training ran in: the option, or this machine's default (`engine.memory_format`);
    of the last session, when a run was resumed elsewhere."""
    seed: int | None = None
    wall_seconds: float | None = None
    """Training wall time over every session (resumes included)."""
    session_seconds: float | None = None
    iters_per_second: float | None = None
    """Of the last session."""
    resumed_from_iteration: int | None = None
    final_losses: dict[str, float] = field(default_factory=dict)
    final_lr: float | None = None
    checkpoint: str | None = None
    """The final checkpoint this training wrote."""
    options: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, json_safe(dataclasses.asdict(self)))

    @classmethod
    def read(cls, path: str | os.PathLike) -> TrainRecord:
        return _from_dict(cls, _read_json(Path(path), "training summary"), Path(path))


@dataclass(frozen=True)
class OutputMetrics:
    """One output's (refined or coarse) dataset-level metrics in percent; per-class values by class name."""

    mIoU: float | None = None
    aAcc: float | None = None
    mAcc: float | None = None
    IoU: dict[str, float | None] = field(default_factory=dict)
    Acc: dict[str, float | None] = field(default_factory=dict)
    boundary_mIoU: float | None = None
    boundary_IoU: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics:
    refined: OutputMetrics
    coarse: OutputMetrics


@dataclass(frozen=True)
class DataRecord:
    """What was evaluated: the dataset class, its root and split, how many images of how many."""

    dataset: str | None = None
    root: str | None = None
    """Absolute since evaluations are keyed by it (records written before kept the root as given)."""
    split: str | None = None
    num_images: int | None = None
    dataset_size: int | None = None
    max_images: int | None = None
    classes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TimingRecord:
    images_per_second: float | None = None
    seconds: float | None = None
    """Wall time of the evaluation loop (data loading included; under DDP the slowest process)."""
    num_images: int | None = None
    precision: str | None = None
    """The inference precision ("fp32", "bf16", "fp16"; `model.inference.prepare_for_inference`)."""
    compiled: bool | None = None
    """Whether the feature extractor ran under torch.compile."""
    eval_mode: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """run.json: one evaluation of one checkpoint of one row, with the training summary of that checkpoint."""

    row: str
    metrics: Metrics
    units: str = UNITS
    config: dict[str, Any] | None = None
    checkpoint: str | None = None
    """The weights evaluated (None: the model as it was, e.g. during training)."""
    data: DataRecord = field(default_factory=DataRecord)
    published_mIoU: float | None = None
    gain_refined_minus_coarse: dict[str, float | None] = field(default_factory=dict)
    delta_refined_minus_published_mIoU: float | None = None
    timing: TimingRecord = field(default_factory=TimingRecord)
    environment: dict[str, Any] = field(default_factory=dict)
    training: TrainRecord | None = None
    intervals: RunIntervals | None = None
    """Bootstrap intervals over the evaluated images (`engine.intervals`); None in records written before
    per-image counts were kept."""

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_json())

    def to_json(self) -> dict[str, Any]:
        """The JSON object (NaN and inf as null)."""
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunRecord:
        return _from_dict(cls, _read_json(Path(path), "run record"), Path(path))

    @classmethod
    def from_json(cls, data: Any, source: str = "run record") -> RunRecord:
        """From a run.json object already in memory (`source` names it in errors)."""
        return _from_dict(cls, data, Path(source))


# --------------------------------------------------------------------------------------------------
# What every record says about its run


def config_json(row: RowConfig) -> dict[str, Any]:
    """`dataclasses.asdict(row)` with the dataset class replaced by its name (JSON-serialisable)."""
    config = dataclasses.asdict(row)
    config["data"]["dataset"] = row.data.dataset.__name__
    return config


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def environment(device: str | torch.device) -> dict[str, Any]:
    """Software and hardware the run used (no hostname)."""
    device = torch.device(device)
    cuda_name = None
    if torch.cuda.is_available():
        cuda_name = torch.cuda.get_device_name(device if device.type == "cuda" else 0)
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": cuda_name if device.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cuda_device_name": cuda_name,
        "world_size": rank_and_world_size()[1],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def json_safe(value: Any) -> Any:
    """NaN / inf -> None (JSON null) recursively; tuples -> lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# Reading


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected a {what} written by pointrend_core") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a JSON {type(content).__name__}; expected a {what} (an object)")
    return content


Record = TypeVar("Record")


def _from_dict(cls: type[Record], data: Any, path: Path) -> Record:
    """`cls` (a dataclass) from its JSON object: nested dataclass fields are built recursively, unknown keys are
    ignored, and a missing field without a default is a ValueError naming the file and the key."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{path} lacks '{f.name}'; expected a {cls.__name__} written by pointrend_core")
            continue
        value, nested = data[f.name], _dataclass_in(hints[f.name])
        if value is None and nested is not None and type(None) not in typing.get_args(hints[f.name]):
            raise ValueError(f"{path}: '{f.name}' is null; expected a {nested.__name__} object")
        values[f.name] = _from_dict(nested, value, path) if nested is not None and value is not None else value
    return cls(**values)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass of a field annotated `D` or `D | None`, else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)), None)
    return None
