"""The explorer's numbers, one view at a time: settings, the per-image features, the subdivision steps with
their timings, the predictions and scores, the training-time candidates and one pixel's readout (pure functions).

Shapes and conventions: see `workbook.explorer` (the package docstring)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pointrend_core.config import EvalConfig, ModelConfig, RowConfig, get_row
from pointrend_core.data.image_io import read_image, read_label_png
from pointrend_core.data.transforms import denormalize, eval_transforms
from pointrend_core.engine.metrics import BoundaryIoU, ConfusionMatrix
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.labels import IGNORE_INDEX
from pointrend_core.model import PointRend, SubdivisionStep
from pointrend_core.model.points import TrainingPoints, coordinate_dtype, sample_training_points
from pointrend_core.workbook.analysis import EvalSample


MAX_STEPS = 4
"""The steps slider's range is 0..MAX_STEPS (each step doubles the grid: 4 steps of a 256 x 256 input give
1024 x 1024 logits)."""

Pixel = tuple[int, int]
"""(row, col) in the label grid (H, W)."""

ProgressCallback = Callable[[str, int, int], None]
"""Told (what, done, total) as long work advances: "features" (0 of 1, then 1 of 1), "step" (i of steps)."""


# --------------------------------------------------------------------------------------------------------
# Settings and the numbers of one view


@dataclass(frozen=True)
class ExplorerSettings:
    """Everything the user chooses. Inference: `steps`, `num_points` (per step). Training-time candidates:
    `train_num_points` (N), `oversample_ratio` (k), `importance_sample_ratio` (beta), `seed` of their draw.
    `image_index` into the validation split (0 for an image file); `pixel` (row, col) at the label size
    (None: `default_pixel`)."""

    image_index: int = 0
    steps: int = 2
    num_points: int = 4096
    train_num_points: int = 1024
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    seed: int = 0
    pixel: Pixel | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.image_index < 0:
            problems.append(f"image_index >= 0 (got {self.image_index})")
        if self.steps < 0:
            problems.append(f"steps >= 0 (got {self.steps})")
        if self.num_points < 1 or self.train_num_points < 1:
            problems.append(f"num_points and train_num_points >= 1 (got {self.num_points}, {self.train_num_points})")
        if self.oversample_ratio < 1 or not 0 <= self.importance_sample_ratio <= 1:
            problems.append(
                f"oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1 "
                f"(got {self.oversample_ratio}, {self.importance_sample_ratio})"
            )
        if problems:
            raise ValueError("explorer settings need " + "; ".join(problems))

    @classmethod
    def of_model(cls, cfg: ModelConfig, **overrides: Any) -> ExplorerSettings:
        """The model's own inference and training point settings; `overrides` (None values ignored) win."""
        base = dict(
            steps=cfg.subdivision_steps,
            num_points=cfg.subdivision_num_points,
            train_num_points=cfg.train_num_points,
            oversample_ratio=cfg.oversample_ratio,
            importance_sample_ratio=cfg.importance_sample_ratio,
        )
        base.update({key: value for key, value in overrides.items() if value is not None})
        if base.get("pixel") is not None:
            base["pixel"] = tuple(int(v) for v in base["pixel"])
        return cls(**base)


@dataclass(frozen=True)
class ImageFeatures:
    """What the network computes once per image (B = 1): `fine_features` (1, F, h0, w0) P2 features and
    `coarse_logits` (1, C, h0, w0), on the model's device; `seconds` the wall time of `model.features`."""

    sample: EvalSample
    fine_features: Tensor
    coarse_logits: Tensor
    seconds: float


@dataclass(frozen=True)
class Scores:
    """Per-image scores as fractions in [0, 1] (NaN without ground truth): mIoU over the classes present in
    the label or the prediction, and boundary mIoU (`engine.metrics`, the evaluation's band width)."""

    mIoU: float
    boundary_mIoU: float


@dataclass(frozen=True)
class ExplorerView:
    """One setting of the subdivision on one image.

    refined_logits: (1, C, h_s, w_s) float32 on the CPU, equal to `model(x, subdivision_steps=steps,
        subdivision_num_points=num_points).logits` (the coarse logits for 0 steps).
    coarse_logits: (1, C, h0, w0) float32 on the CPU.
    subdivision: one `SubdivisionStep` per step (upsampled logits, uncertainty, point indices and coordinates).
    step_seconds: wall time of each step (empty if the steps could not be timed one by one).
    refine_seconds: wall time of the whole `refine` call.
    refined_pred, coarse_pred: (H, W) int64 labels, the logits resized to the label size then argmax.
    refined, coarse: their `Scores` against the label; score_seconds: the time they took.
    """

    steps: int
    num_points: int
    refined_logits: Tensor
    coarse_logits: Tensor
    subdivision: tuple[SubdivisionStep, ...]
    step_seconds: tuple[float, ...]
    refine_seconds: float
    refined_pred: Tensor
    coarse_pred: Tensor
    refined: Scores
    coarse: Scores
    score_seconds: float

    def grid(self, step: int) -> tuple[int, int]:
        """(h, w) of step `step`'s grid (1-based; 0 is the coarse grid)."""
        logits = self.coarse_logits if step == 0 else self.subdivision[step - 1].logits
        return int(logits.shape[-2]), int(logits.shape[-1])


@dataclass(frozen=True)
class StepPixel:
    """One pixel at one subdivision step (`step` 1-based): its `cell` (row, col) in that step's grid and
    flat `index` (row * w + col, as `SubdivisionStep.point_indices`), whether the step `refined` it and as
    which chosen point (`rank`, 0 = the most uncertain; None when not chosen), the `uncertainty` the step
    saw there, the class probabilities (C,) of the upsampled logits before refinement (`upsampled_probs`)
    and of the point head at the cell centre (`point_probs`: what replaced them where the cell was chosen)."""

    step: int
    cell: Pixel
    index: int
    refined: bool
    rank: int | None
    uncertainty: float
    upsampled_probs: Tensor
    point_probs: Tensor


@dataclass(frozen=True)
class PixelReadout:
    """One label pixel: `gt` label (IGNORE_INDEX where ignored or without ground truth); `coarse_cell` in the
    coarse grid and `coarse_probs` (C,) there; `refined_probs` (C,) in the final grid's cell; the labels
    the scored predictions give it (`coarse_label`, `refined_label`); one `StepPixel` per step."""

    pixel: Pixel
    label_size: tuple[int, int]
    gt: int
    coarse_cell: Pixel
    coarse_probs: Tensor
    refined_probs: Tensor
    coarse_label: int
    refined_label: int
    steps: tuple[StepPixel, ...]


# --------------------------------------------------------------------------------------------------------
# Choosing the model, the row and the image


def _recorded(section: Any, values: dict[str, Any] | None) -> Any:
    """`section` (a config dataclass) with the values a run.json recorded for it (lists back to tuples);
    keys it does not know, and the dataset class (recorded by name), are left alone."""
    if not values:
        return section
    known = {f.name for f in fields(section)} - {"dataset"}
    changes = {key: tuple(v) if isinstance(v, list) else v for key, v in values.items() if key in known}
    return replace(section, **changes)


def row_of_run(run_dir: str | os.PathLike, config: str | None = None) -> RowConfig:
    """The row a run evaluated: `config` (a row name) or the run.json's row, with the model, data and
    evaluation settings the run recorded (e.g. smaller channels or another test-time size), so that its
    checkpoint loads and its images are prepared as they were evaluated."""
    folder = RunFolder(run_dir)
    record = folder.read_run() or folder.read_training()  # a run trained but not evaluated has train.json
    if record is None:
        raise FileNotFoundError(
            f"{folder.path} holds neither run.json nor train.json: not a run folder (train into it with "
            f"python -m pointrend_core train --config ROW --out {folder.path})")
    name = config or record.row
    try:
        row = get_row(name)
    except KeyError:
        raise ValueError(
            f"{folder.path} is a run of row {name!r}, which is not a row of pointrend_core.config.ROWS "
            "(a row run on another dataset?); pass config= a row name and checkpoint="
        ) from None
    if config is not None and config != record.row:
        return row
    recorded = record.config or {}
    return replace(
        row,
        model=_recorded(row.model, recorded.get("model")),
        data=_recorded(row.data, recorded.get("data")),
        eval=_recorded(row.eval, recorded.get("eval")),
    )


def file_sample(
    row: RowConfig, image_path: str | os.PathLike, label_path: str | os.PathLike | None = None
) -> EvalSample:
    """An image file prepared as the row's validation images are (keep-ratio resize to base_size, normalise).

    `label_path` (optional) is a PNG of train ids at the image's size (values outside [0, C) are ignored);
    without one the label is all IGNORE_INDEX and the scores are NaN.
    """
    image = read_image(image_path)
    size = tuple(image.shape[-2:])
    if label_path is not None:
        label = torch.from_numpy(np.ascontiguousarray(read_label_png(label_path)).astype(np.int64))
        if tuple(label.shape) != size:
            raise ValueError(f"label {label_path} is {tuple(label.shape)} but image {image_path} is {size} (H, W)")
    else:
        label = torch.full(size, IGNORE_INDEX, dtype=torch.int64)
    network_input, _ = eval_transforms(row.data)(image, torch.zeros(size, dtype=torch.uint8))
    return EvalSample(denormalize(network_input), network_input[None], label, Path(image_path).name)


# --------------------------------------------------------------------------------------------------------
# Pure computation


def _synchronize(tensor: Tensor) -> None:
    if tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def image_features(model: PointRend, sample: EvalSample) -> ImageFeatures:
    """Backbone, FPN and coarse head on `sample.input` (1, 3, H', W'): the part computed once per image."""
    start = time.perf_counter()
    fine_features, coarse_logits = model.features(sample.input.to(_device_of(model)))
    _synchronize(coarse_logits)
    return ImageFeatures(sample, fine_features, coarse_logits, time.perf_counter() - start)


@contextmanager
def _timed_subdivisions(model: PointRend, on_step: Callable[[int], None] | None) -> Iterator[list[float]]:
    """While active, every `model.subdivide` call (one per step of `model.refine`) is timed into the yielded
    list and reported to `on_step(steps done)`; the model is left as it was afterwards."""
    original = model.subdivide
    seconds: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> tuple[Tensor, SubdivisionStep]:
        start = time.perf_counter()
        result = original(*args, **kwargs)
        _synchronize(result[0])
        seconds.append(time.perf_counter() - start)
        if on_step is not None:
            on_step(len(seconds))
        return result

    model.subdivide = timed  # an instance attribute shadows the method for this model only
    try:
        yield seconds
    finally:
        del model.subdivide


def label_prediction(logits: Tensor, label_size: Sequence[int]) -> Tensor:
    """logits (1, C, h, w) -> labels (H, W) int64: resized bilinearly (align_corners=False) to the label size
    when they differ, then argmax, as `engine.evaluate.predict` and `evaluate` do."""
    size = (int(label_size[0]), int(label_size[1]))
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1)[0]


def image_scores(pred: Tensor, gt: Tensor, num_classes: int, dilation_ratio: float) -> Scores:
    """mIoU and boundary mIoU of one prediction (H, W) against its label (H, W), as the evaluation computes
    them over a one-image dataset (`ConfusionMatrix`, `BoundaryIoU`)."""
    confusion = ConfusionMatrix(num_classes)
    boundary = BoundaryIoU(num_classes, dilation_ratio)
    confusion.update(pred, gt)
    boundary.update(pred, gt)
    return Scores(confusion.compute().mIoU, boundary.compute().mIoU)


@torch.inference_mode()
def refine_view(
    model: PointRend,
    features: ImageFeatures,
    steps: int,
    num_points: int,
    eval_cfg: EvalConfig,
    progress: ProgressCallback | None = None,
) -> ExplorerView:
    """The subdivision of one image with `steps` steps of `num_points` points, from its cached features:
    only `model.refine` runs (each step timed), then both outputs are scored at the label size."""
    report = (lambda done: progress("step", done, steps)) if progress is not None else None
    start = time.perf_counter()
    with _timed_subdivisions(model, report) as seconds:
        output = model.refine(features.fine_features, features.coarse_logits, steps, num_points, record_steps=True)
    _synchronize(output.logits)
    refine_seconds = time.perf_counter() - start
    start = time.perf_counter()
    gt = features.sample.gt
    refined_pred = label_prediction(output.logits.float(), gt.shape).cpu()
    coarse_pred = label_prediction(output.coarse_logits.float(), gt.shape).cpu()
    ratio = eval_cfg.boundary_dilation_ratio
    refined = image_scores(refined_pred, gt, model.num_classes, ratio)
    coarse = image_scores(coarse_pred, gt, model.num_classes, ratio)
    cpu_steps = tuple(
        SubdivisionStep(
            s.logits.float().cpu(), s.uncertainty.float().cpu(), s.point_indices.cpu(), s.point_coords.cpu()
        )
        for s in output.steps
    )
    return ExplorerView(
        steps=steps,
        num_points=num_points,
        refined_logits=output.logits.float().cpu(),
        coarse_logits=output.coarse_logits.float().cpu(),
        subdivision=cpu_steps,
        step_seconds=tuple(seconds) if len(seconds) == steps else (),
        refine_seconds=refine_seconds,
        refined_pred=refined_pred,
        coarse_pred=coarse_pred,
        refined=refined,
        coarse=coarse,
        score_seconds=time.perf_counter() - start,
    )


def candidate_points(features: ImageFeatures, settings: ExplorerSettings) -> TrainingPoints:
    """The training-time selection (`sample_training_points`) on the image's coarse logits with the settings'
    N, k and beta, drawn from a generator seeded with `settings.seed` (on the CPU: the same points whatever
    the device). candidates (1, k*N, 2), points (1, N, 2)."""
    generator = torch.Generator().manual_seed(settings.seed)
    return sample_training_points(
        features.coarse_logits.float().cpu(),
        settings.train_num_points,
        settings.oversample_ratio,
        settings.importance_sample_ratio,
        generator,
    )


def cell_of(pixel: Pixel, label_size: tuple[int, int], grid: tuple[int, int]) -> Pixel:
    """The cell (row, col) of an (h, w) grid that contains the centre of label pixel `pixel` of (H, W): both
    maps span the same unit square (the logits are resized straight to the label size)."""
    (row, col), (height, width), (h, w) = pixel, label_size, grid
    return min(int((row + 0.5) * h / height), h - 1), min(int((col + 0.5) * w / width), w - 1)


def cell_centre(cell: Pixel, grid: tuple[int, int], dtype: torch.dtype = torch.float32) -> Tensor:
    """(1, 1, 2) (x, y) centre of `cell` of an (h, w) grid, with the float arithmetic of
    `model.points.uncertain_points_on_grid` (so it is the point the subdivision would sample there)."""
    (row, col), (h, w) = cell, grid
    x_step, y_step = 1.0 / w, 1.0 / h
    x = x_step / 2.0 + torch.tensor([col], dtype=dtype) * x_step
    y = y_step / 2.0 + torch.tensor([row], dtype=dtype) * y_step
    return torch.stack([x, y], dim=1)[None]


def pixel_of_cell(cell: Pixel, grid: tuple[int, int], label_size: tuple[int, int]) -> Pixel:
    """The label pixel under the centre of `cell` of an (h, w) grid."""
    (row, col), (h, w), (height, width) = cell, grid, label_size
    return min(int((row + 0.5) * height / h), height - 1), min(int((col + 0.5) * width / w), width - 1)


def default_pixel(view: ExplorerView, label_size: tuple[int, int]) -> Pixel:
    """The label pixel under the first step's most uncertain cell (the image centre without steps)."""
    if not view.subdivision:
        return label_size[0] // 2, label_size[1] // 2
    grid = view.grid(1)
    index = int(view.subdivision[0].point_indices[0, 0])
    return pixel_of_cell((index // grid[1], index % grid[1]), grid, label_size)


def _probs(logits: Tensor, cell: Pixel) -> Tensor:
    """Softmax over classes of logits (1, C, h, w) at `cell` -> (C,) float32."""
    return logits[0, :, cell[0], cell[1]].float().softmax(0)


@torch.inference_mode()
def pixel_readout(model: PointRend, features: ImageFeatures, view: ExplorerView, pixel: Pixel) -> PixelReadout:
    """Class probabilities at one label pixel: coarse, at each step (before refinement and from the point
    head at the cell centre), refined; and whether each step chose that pixel's cell."""
    label_size = tuple(features.sample.gt.shape)
    row, col = pixel
    if not (0 <= row < label_size[0] and 0 <= col < label_size[1]):
        raise ValueError(f"pixel {pixel} lies outside the {label_size[0]}x{label_size[1]} label (rows x cols)")
    device = _device_of(model)
    dtype = coordinate_dtype(features.coarse_logits)
    steps = []
    for number, step in enumerate(view.subdivision, start=1):
        grid = view.grid(number)
        cell = cell_of(pixel, label_size, grid)
        index = cell[0] * grid[1] + cell[1]
        chosen = (step.point_indices[0] == index).nonzero()
        centre = cell_centre(cell, grid, dtype).to(device)
        point = model.point_logits(features.fine_features, features.coarse_logits, centre)
        steps.append(
            StepPixel(
                step=number,
                cell=cell,
                index=index,
                refined=bool(len(chosen)),
                rank=int(chosen[0, 0]) if len(chosen) else None,
                uncertainty=float(step.uncertainty[0, 0, cell[0], cell[1]]),
                upsampled_probs=_probs(step.logits, cell),
                point_probs=point[0, :, 0].float().softmax(0).cpu(),
            )
        )
    coarse_cell = cell_of(pixel, label_size, view.grid(0))
    final_cell = cell_of(pixel, label_size, tuple(view.refined_logits.shape[-2:]))
    return PixelReadout(
        pixel=(row, col),
        label_size=label_size,
        gt=int(features.sample.gt[row, col]),
        coarse_cell=coarse_cell,
        coarse_probs=_probs(view.coarse_logits, coarse_cell),
        refined_probs=_probs(view.refined_logits, final_cell),
        coarse_label=int(view.coarse_pred[row, col]),
        refined_label=int(view.refined_pred[row, col]),
        steps=tuple(steps),
    )
