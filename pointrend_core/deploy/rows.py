"""Which row, weights and palette a trained model stands for: a run folder, a row name and a checkpoint, or the
row recorded inside an exported ONNX file.

A run folder records its row as JSON (`engine.records.config_json`: the `RowConfig` with the dataset class
by name) in train.json, and run.json for a folder only evaluated. `row_from_config` rebuilds the `RowConfig`
from that record alone, so a run made with `--dataset folder` gets back its class count (the heads were sized
to the folder's classes.txt), its evaluation settings and any override (crop, batch size) without the data
being there. The palette of a row is its dataset's: VOC's for VOC rows, the demo's and Cityscapes' own, and
the dataset's default (VOC's bitwise colour map from index 1, as `SegmentationDataset` makes it) otherwise.

A run folder's files are found through `engine.run_folder.RunFolder`, here and nowhere else in `deploy/`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from pointrend_core.config import DATASETS, DataConfig, EvalConfig, ModelConfig, RowConfig, ScheduleConfig
from pointrend_core.data.image_io import bitwise_palette
from pointrend_core.engine.records import config_json, json_safe
from pointrend_core.engine.run_folder import RunFolder

_DATASET_CLASSES = {cls.__name__: cls for cls in DATASETS.values()}


def _tuples(values: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """JSON lists back to the tuples the frozen dataclasses hold (None stays None)."""
    return {k: (tuple(v) if k in names and v is not None else v) for k, v in values.items()}


def _fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of `cls` (a record written by a later version may hold more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def row_from_config(config: dict[str, Any], source: str = "row record") -> RowConfig:
    """The `RowConfig` recorded by `engine.records.config_json`; ValueError naming `source` when it is not one."""
    try:
        data = dict(config["data"])
        dataset_name = data.pop("dataset")
        try:
            dataset = _DATASET_CLASSES[dataset_name]
        except KeyError:
            raise ValueError(f"{source} names dataset {dataset_name!r}; expected one of: "
                             f"{', '.join(_DATASET_CLASSES)}") from None
        return RowConfig(
            name=config["name"],
            model=ModelConfig(**_fields(ModelConfig, config["model"])),
            data=DataConfig(dataset=dataset, **_tuples(_fields(DataConfig, data),
                                                       ("crop_size", "base_size", "scale_range"))),
            schedule=ScheduleConfig(**_fields(ScheduleConfig, config["schedule"])),
            eval=EvalConfig(**_tuples(_fields(EvalConfig, config["eval"]), ("slide_crop", "slide_stride", "scales"))),
            published_miou=config.get("published_miou"),
            release_file=config.get("release_file"),
            pretrained_backbone=config.get("pretrained_backbone"),
            recipe=config.get("recipe"),
            overrides=tuple(config.get("overrides") or ()),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{source} does not hold a row configuration written by pointrend_core ({error!r})") from None


def row_to_json(row: RowConfig) -> str:
    """The row as the JSON text `row_from_config(json.loads(text))` reads back (what an ONNX file carries)."""
    return json.dumps(json_safe(config_json(row)))


def run_row_and_checkpoint(run_dir: str | Path) -> tuple[RowConfig, Path]:
    """(row, final checkpoint) of a finished run folder; ValueError / FileNotFoundError naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist; expected the --out folder of a training run")
    folder = RunFolder(run_dir)
    checkpoint = folder.final_checkpoint
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist; expected a finished run (train writes "
                                f"{checkpoint.name} at its end), or pass --config and --checkpoint")
    record = folder.read_training() or folder.read_run()
    if record is None or record.config is None:
        raise FileNotFoundError(f"{run_dir} has no {folder.train_record.name} or {folder.run_record.name} recording "
                                "the row's configuration; pass --config and --checkpoint instead")
    return row_from_config(record.config, str(folder.path)), checkpoint


def palette_for(row: RowConfig) -> np.ndarray:
    """uint8 (C, 3) colours for the row's classes: the dataset's palette, or VOC's colour map from index 1."""
    palette = row.data.dataset.PALETTE
    num_classes = row.model.num_classes
    if palette is not None and len(palette) >= num_classes:
        return np.asarray(palette, dtype=np.uint8)[:num_classes]
    return bitwise_palette(num_classes, start=1)


__all__ = ["palette_for", "row_from_config", "row_to_json", "run_row_and_checkpoint"]
