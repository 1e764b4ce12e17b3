"""Configurations as frozen dataclasses; the model-zoo table rows are named instances of them.

A row (`RowConfig`) bundles what one line of the table needs: the network (`ModelConfig`), the data
recipe (`DataConfig`), the optimisation schedule (`ScheduleConfig`) and the evaluation protocol
(`EvalConfig`). Values follow the sssegmentation reference (`docs/reference-recipe.md`,
§2-§8). Overrides are made with `dataclasses.replace`, never by mutating a row.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pointrend_core.data.datasets import (
    ADE20kSegmentation,
    CityscapesSegmentation,
    DemoShapes,
    FolderSegmentation,
    SegmentationDataset,
    VOCSegmentation,
)
from pointrend_core.labels import IGNORE_INDEX  # re-exported: the one ignore label (see labels.py)


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    depth: int = 50
    """ResNet-v1c depth: 18, 34, 50 or 101."""
    output_stride: int = 32
    """32 for the published models; 16 or 8 dilate the last stages instead of striding."""
    fpn_channels: int = 256
    scale_head_channels: int = 128
    point_head_channels: int = 256
    num_point_fcs: int = 3
    # Training-time point selection (PointRend paper, section 3.1 / recipe §3.2).
    train_num_points: int = 2048
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    # Inference-time adaptive subdivision (recipe §3.1).
    subdivision_steps: int = 2
    subdivision_num_points: int = 8196  # sic: the reference uses 8196, not 8192
    # Loss weights (recipe §6).
    aux_loss_weight: float = 0.4
    point_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        _check(self.depth in (18, 34, 50, 101), "model.depth", self.depth, "18, 34, 50 or 101")
        _check(self.output_stride in (8, 16, 32), "model.output_stride", self.output_stride, "8, 16 or 32")
        for name in ("fpn_channels", "scale_head_channels", "point_head_channels", "num_point_fcs",
                     "train_num_points", "subdivision_num_points"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), "a positive integer")
        _check(self.subdivision_steps >= 0, "model.subdivision_steps", self.subdivision_steps, "an integer >= 0")
        _check(self.oversample_ratio >= 1, "model.oversample_ratio", self.oversample_ratio, "a number >= 1")
        _check(0 <= self.importance_sample_ratio <= 1, "model.importance_sample_ratio", self.importance_sample_ratio,
               "a number in [0, 1]")


@dataclass(frozen=True)
class DataConfig:
    dataset: type[SegmentationDataset]
    """The dataset class; it reads its own on-disk layout and knows its class names."""
    default_root: str
    """Where the data lives when no --data-root is given (relative to the working directory)."""
    train_split: str
    val_split: str
    crop_size: tuple[int, int]
    """(height, width) of training crops."""
    base_size: tuple[int, int]
    """(long side, short side) the image is resized to fit, at scale 1.0 (train) and at test time."""
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    """A training crop is retried (up to 10 times) while one class covers this fraction of it or more."""

    def __post_init__(self) -> None:
        for name in ("crop_size", "base_size"):
            value = getattr(self, name)
            _check(len(value) == 2 and min(value) >= 1, f"data.{name}", value, "two positive integers")
        low, high = self.scale_range
        _check(0 < low <= high, "data.scale_range", self.scale_range, "two numbers 0 < low <= high")
        _check(0 < self.cat_max_ratio <= 1, "data.cat_max_ratio", self.cat_max_ratio, "a number in (0, 1]")

    def resolve_root(self, data_root: str | os.PathLike | None) -> Path:
        """`data_root`, or `default_root` when it is None: the one place where the default applies."""
        return Path(data_root if data_root is not None else self.default_root)


@dataclass(frozen=True)
class ScheduleConfig:
    batch_size: int
    """Total batch size over all processes."""
    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    min_lr: float = 1e-4
    warmup_iters: int = 200
    warmup_ratio: float = 0.1
    eval_every_epochs: int = 10
    workers_per_process: int = 2

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "eval_every_epochs"):
            _check(getattr(self, name) >= 1, f"schedule.{name}", getattr(self, name), "a positive integer")
        for name in ("lr", "poly_power"):
            _check(getattr(self, name) > 0, f"schedule.{name}", getattr(self, name), "a positive number")
        for name in ("momentum", "weight_decay", "min_lr", "warmup_iters", "warmup_ratio", "workers_per_process"):
            _check(getattr(self, name) >= 0, f"schedule.{name}", getattr(self, name), "a number >= 0")


@dataclass(frozen=True)
class EvalConfig:
    mode: Literal["whole", "slide"] = "whole"
    slide_crop: tuple[int, int] | None = None
    """(height, width) of sliding windows; only for mode 'slide'."""
    slide_stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    boundary_dilation_ratio: float = 0.02
    """Boundary IoU band width d as a fraction of the image diagonal (Cheng et al. 2021)."""

    def __post_init__(self) -> None:
        _check(self.mode in ("whole", "slide"), "eval.mode", self.mode, "'whole' or 'slide'")
        _check(len(self.scales) >= 1 and min(self.scales) > 0, "eval.scales", self.scales, "positive numbers")
        if self.mode == "slide":
            for name in ("slide_crop", "slide_stride"):
                value = getattr(self, name)
                _check(value is not None and len(value) == 2 and min(value) >= 1, f"eval.{name}", value,
                       "two positive integers (mode 'slide')")
        _check(0 < self.boundary_dilation_ratio < 1, "eval.boundary_dilation_ratio", self.boundary_dilation_ratio,
               "a number in (0, 1)")


@dataclass(frozen=True)
class RowConfig:
    name: str
    model: ModelConfig
    data: DataConfig
    schedule: ScheduleConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    published_miou: float | None = None
    """mIoU (%) in the sssegmentation model zoo; None for rows that are not in the table."""
    release_file: str | None = None
    """File name of the released sssegmentation checkpoint."""
    pretrained_backbone: str | None = None
    """File name of the ImageNet ResNet-v1c weights the recipe starts from (supplied by the user)."""
    recipe: str | None = None
    """For a row made by `on_dataset`: the table row whose recipe it runs on another dataset (None: a table row)."""
    overrides: tuple[str, ...] = ()
    """`section.field=value` changes of the recipe (`overrides.apply_overrides`); a row with any is not the
    published row."""

    def __post_init__(self) -> None:
        classes = getattr(self.data.dataset, "CLASSES", None)
        if classes is not None and len(classes) != self.model.num_classes:
            raise ValueError(
                f"row {self.name!r}: model has {self.model.num_classes} classes but "
                f"{self.data.dataset.__name__} has {len(classes)}"
            )


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _voc_data() -> DataConfig:
    return DataConfig(
        dataset=VOCSegmentation,
        default_root="data/VOCdevkit/VOC2012",
        train_split="trainaug",
        val_split="val",
        crop_size=(512, 512),
        base_size=(2048, 512),
    )


def _ade20k_data() -> DataConfig:
    return DataConfig(
        dataset=ADE20kSegmentation,
        default_root="data/ADE20k",
        train_split="train",
        val_split="val",
        crop_size=(512, 512),
        base_size=(2048, 512),
    )


def _cityscapes_data() -> DataConfig:
    return DataConfig(
        dataset=CityscapesSegmentation,
        default_root="data/Cityscapes",
        train_split="train",
        val_split="val",
        crop_size=(512, 1024),
        base_size=(2048, 1024),
    )


_RELEASE = "pointrend_resnet{depth}os32_{dataset}.pth"
_IMAGENET = {18: "resnet18_v1c-b5776b93.pth", 50: "resnet50_v1c-2cccc1ad.pth", 101: "resnet101_v1c-e67eebb6.pth"}


def _table_row(depth: int, dataset: str, miou: float) -> RowConfig:
    data, classes, schedule = {
        "voc": (_voc_data(), 21, ScheduleConfig(batch_size=16, epochs=60)),
        "ade20k": (_ade20k_data(), 150, ScheduleConfig(batch_size=16, epochs=130)),
        "cityscapes": (_cityscapes_data(), 19, ScheduleConfig(batch_size=8, epochs=220)),
    }[dataset]
    return RowConfig(
        name=f"pointrend_r{depth}_{dataset}",
        model=ModelConfig(num_classes=classes, depth=depth),
        data=data,
        schedule=schedule,
        published_miou=miou,
        release_file=_RELEASE.format(depth=depth, dataset=dataset),
        pretrained_backbone=_IMAGENET[depth],
    )


DEMO = RowConfig(
    name="demo",
    model=ModelConfig(
        num_classes=len(DemoShapes.CLASSES),
        depth=18,
        fpn_channels=128,
        scale_head_channels=64,
        point_head_channels=128,
        train_num_points=1024,
        subdivision_num_points=4096,
    ),
    data=DataConfig(
        dataset=DemoShapes,
        default_root="data/demo",
        train_split="train",
        val_split="val",
        crop_size=(128, 128),
        base_size=(256, 256),
        scale_range=(0.75, 1.25),
    ),
    schedule=ScheduleConfig(batch_size=6, epochs=14, lr=0.05, warmup_iters=20, eval_every_epochs=4),
)
"""A small row that trains on 2 CPU cores in minutes, on the embedded procedural dataset: ResNet-18 from
scratch, 560 steps of 6 crops of 128 x 128. Why each setting is what it is, and what was measured: docs/demo.md."""

ROWS: dict[str, RowConfig] = {
    row.name: row
    for row in (
        _table_row(50, "voc", 69.84),
        _table_row(101, "voc", 72.31),
        _table_row(50, "ade20k", 37.80),
        _table_row(101, "ade20k", 40.26),
        _table_row(50, "cityscapes", 76.89),
        _table_row(101, "cityscapes", 78.80),
        DEMO,
    )
}
"""The six model-zoo rows plus `demo`, by name."""


DATASETS: dict[str, type[SegmentationDataset]] = {
    "voc": VOCSegmentation,
    "ade20k": ADE20kSegmentation,
    "cityscapes": CityscapesSegmentation,
    "demo": DemoShapes,
    "folder": FolderSegmentation,
}
"""The on-disk layouts a row can run on, by the name `--dataset` takes."""

_DATASET_DATA = {"voc": _voc_data, "ade20k": _ade20k_data, "cityscapes": _cityscapes_data}


def on_dataset(row: RowConfig, dataset: str | None, data_root: str | os.PathLike | None = None) -> RowConfig:
    """`row`'s recipe (network, schedule, crop and scales, points, evaluation) on another dataset.

    The dataset supplies the classes and the heads are sized to them: a fixed list for voc / ade20k /
    cityscapes / demo, `data_root/classes.txt` for a folder (which therefore needs `data_root`). Splits are
    the dataset's usual ones (VOC: trainaug / val; the others, folders included: train / val). The new row is
    named `<row>_<dataset>` (`<row>_<folder name>` for a folder) so that its runs, reports and table line
    stand beside the table rows; it has no published mIoU. `dataset` None, or the row's own, returns `row`.
    """
    if dataset is None:
        return row
    try:
        dataset_cls = DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of: {', '.join(DATASETS)}") from None
    if dataset_cls is row.data.dataset:
        return row
    if dataset == "folder":
        if data_root is None:
            raise ValueError("dataset 'folder' needs a data root (--data-root PATH): the folder holding images/, "
                             "masks/ and classes.txt")
        root = Path(data_root)
        classes, default_root, tag = FolderSegmentation.class_names(root), str(root), root.resolve().name
        train_split, val_split = "train", "val"
    else:
        base = _DATASET_DATA[dataset]() if dataset in _DATASET_DATA else DEMO.data
        classes, default_root, tag = base.dataset.CLASSES, base.default_root, dataset
        train_split, val_split = base.train_split, base.val_split
    return replace(
        row,
        name=f"{row.name}_{tag}",
        model=replace(row.model, num_classes=len(classes)),
        data=replace(row.data, dataset=dataset_cls, default_root=default_root, train_split=train_split,
                     val_split=val_split),
        published_miou=None,
        release_file=None,
        recipe=row.recipe or row.name,
    )


RUNS_DIR = Path("runs")
"""Where runs go unless told otherwise: one folder per run, `runs/<run name>`."""


def default_run_dir(row: RowConfig) -> Path:
    """`runs/<row name>`, the folder of a row's run when none is given; a row with overrides gets
    `runs/<row name>+<6 hex digits of its overrides>`, so that it never shares the published row's folder."""
    return RUNS_DIR / (f"{row.name}+{overrides_tag(row.overrides)}" if row.overrides else row.name)


def overrides_tag(overrides: Sequence[str]) -> str:
    """6 hex digits naming a set of overrides, whatever their order."""
    return hashlib.sha1("\n".join(sorted(overrides)).encode()).hexdigest()[:6]


def get_row(name: str) -> RowConfig:
    """The row called `name`; the error lists the valid names."""
    try:
        return ROWS[name]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; expected one of: {', '.join(ROWS)}") from None


__all__ = [
    "IGNORE_INDEX",
    "ModelConfig",
    "DataConfig",
    "ScheduleConfig",
    "EvalConfig",
    "RowConfig",
    "ROWS",
    "DEMO",
    "get_row",
    "DATASETS",
    "on_dataset",
    "RUNS_DIR",
    "default_run_dir",
    "replace",
]
