"""What the notebooks look at, as plain functions: a trained model's predictions on validation images, its
training-time point selection, its subdivision steps, and the sweep of subdivision settings.

Shapes: B batch, C classes, (H', W') the resized and normalised network input, (H, W) the original label
size, h x w the stride-4 coarse grid. Images for figures are uint8 (3, H', W') from `denormalize`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor

from pointrend_core.checkpoints import load_checkpoint
from pointrend_core.config import EvalConfig, ModelConfig, RowConfig
from pointrend_core.data.datasets import SegmentationDataset
from pointrend_core.data.transforms import denormalize, eval_transforms
from pointrend_core.engine.evaluate import evaluate, inference_model, predict
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.model import PointRend, PointRendOutput, Subdivision, build_model
from pointrend_core.model.inference import Precision
from pointrend_core.model.points import TrainingPoints, sample_training_points
from pointrend_core.workbook.figures import PredictionSample


@dataclass(frozen=True)
class EvalSample:
    """One validation item: `image` uint8 (3, H', W') for figures, `input` float (1, 3, H', W') normalised
    for the model, `gt` int64 (H, W) at the original size."""

    image: Tensor
    input: Tensor
    gt: Tensor
    title: str


def run_checkpoint(out_dir: str | os.PathLike) -> Path:
    """The checkpoint a run evaluated (from its run.json), so later notebooks look at the same weights; for a
    run that was trained but not evaluated, its final checkpoint (or its last, while it is unfinished)."""
    folder = RunFolder(out_dir)
    record = folder.read_run()
    if record is not None:
        if not record.checkpoint:
            raise ValueError(f"{folder.run_record} records no checkpoint (the run evaluated untrained weights); "
                             "pass a checkpoint")
        return Path(record.checkpoint)
    for path in (folder.final_checkpoint, folder.last_checkpoint):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{folder.path} holds no run.json and no checkpoint: train the row into it first "
        f"(python -m pointrend_core train --config ROW --out {folder.path}) or pass a checkpoint")


def load_model(row: RowConfig, checkpoint: str | os.PathLike | None, device: str | torch.device = "cpu") -> PointRend:
    """The row's network with `checkpoint` loaded (random weights when None), in eval mode on `device`."""
    model = build_model(row)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval().to(device)


def eval_dataset(
    row: RowConfig, data_root: str | os.PathLike | None, split: str | None = None
) -> SegmentationDataset:
    """The row's validation split with the test pipeline: items (float (3, H', W'), int64 (H, W))."""
    return row.data.dataset(row.data.resolve_root(data_root), split or row.data.val_split, transforms=eval_transforms(row.data))


def eval_sample(dataset: SegmentationDataset, index: int) -> EvalSample:
    """Item `index` of an `eval_dataset`, ready for the model and for figures."""
    if not 0 <= index < len(dataset):
        raise IndexError(f"image index {index} is outside the split's {len(dataset)} images")
    image, gt = dataset[index]
    return EvalSample(denormalize(image), image[None], gt, str(dataset.ids[index]))


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def subdivision_output(model: PointRend, sample: EvalSample, precision: Precision = "fp32") -> PointRendOutput:
    """The eval forward of one image with every subdivision step recorded (B = 1), through the evaluation's
    inference path (`engine.evaluate.inference_model`) at `precision`."""
    device = _device_of(model)
    return inference_model(model, precision, device=device)(sample.input.to(device), record_steps=True)


@torch.inference_mode()
def training_points(
    model: PointRend, sample: EvalSample, generator: torch.Generator | None = None
) -> tuple[Tensor, TrainingPoints]:
    """The training-time point selection the model's config makes on this image's coarse prediction.

    Returns the coarse prediction (h, w) int64 and `TrainingPoints` for B = 1 (the model's train_num_points,
    oversample_ratio and importance_sample_ratio). The coarse logits come from an eval-mode forward, so the
    figure shows the selection the trained network would make, not one perturbed by batch statistics.
    """
    cfg = model.cfg
    _, coarse_logits = model.features(sample.input.to(_device_of(model)))
    points = sample_training_points(
        coarse_logits.float().cpu(), cfg.train_num_points, cfg.oversample_ratio, cfg.importance_sample_ratio, generator
    )
    return coarse_logits[0].argmax(0).cpu(), points


def prediction_samples(
    model: PointRend,
    dataset: SegmentationDataset,
    eval_cfg: EvalConfig,
    indices: Sequence[int],
    precision: Precision = "fp32",
) -> list[PredictionSample]:
    """Refined and coarse predictions (H, W) of the images `indices`, as the evaluation computes them
    (`engine.evaluate.predict` on `inference_model(model, precision)`: logits resized to the label size, then
    argmax). The image stays at the network's input size (H', W'), the same aspect ratio; the figures draw
    every map on the unit square."""
    device = _device_of(model)
    net = inference_model(model, precision, device=device)
    samples = []
    for index in indices:
        sample = eval_sample(dataset, index)
        refined, coarse = predict(net, sample.input.to(device), sample.gt.shape, eval_cfg)
        samples.append(
            PredictionSample(
                image=sample.image,
                gt=sample.gt,
                coarse=coarse.argmax(1)[0].cpu(),
                refined=refined.argmax(1)[0].cpu(),
                title=sample.title,
            )
        )
    return samples


def default_sweep(cfg: ModelConfig) -> tuple[list[int], list[int]]:
    """(steps, points) a sweep covers by default: 0 (coarse) up to the row's steps, and a quarter, half and
    all of the row's points per step (8196 for the table rows, 4096 for demo)."""
    n = cfg.subdivision_num_points
    return list(range(cfg.subdivision_steps + 1)), sorted({max(n // 4, 1), max(n // 2, 1), n})


def subdivision_sweep(
    model: PointRend,
    dataset: SegmentationDataset,
    eval_cfg: EvalConfig,
    steps: Sequence[int] | None,
    points: Sequence[int] | None,
    device: str | torch.device = "cpu",
    max_images: int | None = None,
    precision: Precision = "fp32",
) -> pd.DataFrame:
    """Evaluate every (subdivision steps, points per step) pair on the first `max_images` images.

    None for `steps` or `points` takes `default_sweep(model.cfg)`, which always includes the row's own
    setting; each setting is passed to the evaluation, the model is left as it is. Steps = 0 is the upsampled coarse prediction; it is evaluated once,
    with points = 0. Returns one line per setting: steps, points, mIoU, boundary_mIoU (percent, refined
    output), seconds_per_image (wall time of the evaluation loop, data loading included), images, and
    row_setting (True on the line of the row's own steps and points). Every setting runs the same network,
    prepared once: `engine.evaluate.inference_model(model, precision)`.
    """
    default_steps, default_points = default_sweep(model.cfg)
    steps = default_steps if steps is None else steps
    points = default_points if points is None else points
    if any(s < 0 for s in steps) or any(p < 1 for p in points):
        raise ValueError(f"sweep needs steps >= 0 and points >= 1, got steps {list(steps)} and points {list(points)}")
    settings = sorted({(s, p if s > 0 else 0) for s in steps for p in points})
    lines = []
    # The first forward pays one-time costs (allocator growth, kernel selection) that would otherwise be
    # charged to whichever setting comes first.
    net = inference_model(model, precision, device=device)
    evaluate(net, dataset, eval_cfg, device, model.num_classes, progress=False, max_images=1)
    for num_steps, num_points in settings:
        result = evaluate(
            net, dataset, eval_cfg, device, model.num_classes, progress=False, max_images=max_images,
            subdivision=Subdivision(num_steps, max(num_points, 1)),
        )
        lines.append(
            {
                "steps": num_steps,
                "points": num_points,
                "mIoU": 100.0 * result.refined.mIoU,
                "boundary_mIoU": 100.0 * result.refined_boundary.mIoU,
                "seconds_per_image": result.seconds / max(result.num_images, 1),
                "images": result.num_images,
                "row_setting": (num_steps, num_points)
                == (model.cfg.subdivision_steps, model.cfg.subdivision_num_points),
            }
        )
    return pd.DataFrame(lines)
