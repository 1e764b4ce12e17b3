"""The interactive explorer of PointRend's decisions on one image (`notebooks/explore.ipynb`).

Three layers, each usable without the next:

1. Pure computation, one view's numbers at a time: `image_features` (backbone, FPN and coarse head, run once
   per image), `refine_view` (the subdivision steps with their timings, the predictions at the label size and
   the per-image scores), `candidate_points` (the training-time selection), `pixel_readout` (one pixel's class
   probabilities and whether each step re-predicted it).
2. `Explorer`: the state, i.e. a model, an image source, the current `ExplorerSettings` (a frozen dataclass,
   replaced by `update`) and caches (features per image, the last view, the last candidates), so that changing
   the steps or points re-runs only `PointRend.refine`.
3. `ExplorerWidget`: ipywidgets 8 controls wired to an `Explorer`; figures are matplotlib `Figure` objects
   rendered to PNG into `ipywidgets.Image`s (no widget backend needed). `snapshot_html` renders the same
   state as static HTML, for a notebook executed by papermill (an HTML report shows no live widget).

Shapes: C classes; (H', W') the resized network input; (H, W) the label, i.e. the original image size;
h0 x w0 the stride-4 coarse grid; step i (1-based) works on h_i x w_i = (2^i h0) x (2^i w0). A pixel is
(row, col) in the label grid, where the scores are computed (as `engine.evaluate.predict` does: logits resized
bilinearly to (H, W), then argmax). The explorer shows one whole-image forward pass: a row evaluated with
sliding windows, several scales or flips is scored here without them.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from pointrend_core.config import EvalConfig, ModelConfig, RowConfig, get_row
from pointrend_core.data.datasets import SegmentationDataset
from pointrend_core.data.image_io import read_image, read_label_png
from pointrend_core.data.transforms import denormalize, eval_transforms
from pointrend_core.engine.metrics import BoundaryIoU, ConfusionMatrix
from pointrend_core.engine.records import RUN_FILE, RunRecord
from pointrend_core.labels import IGNORE_INDEX
from pointrend_core.model import PointRend, SubdivisionStep
from pointrend_core.model.points import TrainingPoints, coordinate_dtype, sample_training_points
from pointrend_core.workbook import figures
from pointrend_core.workbook.analysis import EvalSample, eval_dataset, eval_sample, load_model, run_checkpoint

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
    record = RunRecord.read(Path(run_dir) / RUN_FILE)
    name = config or record.row
    try:
        row = get_row(name)
    except KeyError:
        raise ValueError(
            f"{Path(run_dir) / RUN_FILE} is of row {name!r}, which is not a row of pointrend_core.config.ROWS "
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


def file_sample(row: RowConfig, image_path: str | os.PathLike, label_path: str | os.PathLike | None = None) -> EvalSample:
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
        SubdivisionStep(s.logits.float().cpu(), s.uncertainty.float().cpu(), s.point_indices.cpu(), s.point_coords.cpu())
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
        point = model.point_logits(features.fine_features, features.coarse_logits, cell_centre(cell, grid, dtype).to(device))
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


# --------------------------------------------------------------------------------------------------------
# The state: model, image source, settings and caches


class Explorer:
    """A model, the images it is explored on (a validation split, or one prepared image), the current
    `settings`, and caches: features of the last `max_cached_images` images, the last view and candidates.

    Each accessor computes only what the settings it depends on changed: `features()` once per image,
    `view()` when the image, steps or points changed, `candidates()` when the image, N, k, beta or seed did.
    """

    def __init__(
        self,
        model: PointRend,
        row: RowConfig,
        *,
        dataset: SegmentationDataset | None = None,
        sample: EvalSample | None = None,
        settings: ExplorerSettings | None = None,
        max_cached_images: int = 8,
    ) -> None:
        if (dataset is None) == (sample is None):
            raise ValueError("an Explorer needs exactly one image source: a dataset or a sample")
        self.model = model.eval()
        self.row = row
        self.dataset = dataset
        self._sample = sample
        self.classes: tuple[str, ...] = tuple(
            getattr(dataset, "classes", None) or getattr(row.data.dataset, "CLASSES", None)
            or [f"class {i}" for i in range(model.num_classes)]
        )
        palette = getattr(dataset, "palette", None)
        if palette is None:
            palette = getattr(row.data.dataset, "PALETTE", None)
        self.palette = np.asarray(palette if palette is not None else figures.default_palette(model.num_classes),
                                  dtype=np.uint8)[: model.num_classes]
        self.progress: ProgressCallback | None = None
        self._max_cached = max(1, max_cached_images)
        self._features: OrderedDict[int, ImageFeatures] = OrderedDict()
        self._current: tuple[int, EvalSample] | None = None
        self._view: tuple[tuple, ExplorerView] | None = None
        self._candidates: tuple[tuple, TrainingPoints] | None = None
        self._settings = ExplorerSettings.of_model(model.cfg)
        self.update(**(vars(settings) if settings is not None else {}))

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike | None = None,
        *,
        config: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        data_root: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        image_path: str | os.PathLike | None = None,
        label_path: str | os.PathLike | None = None,
        **settings: Any,
    ) -> Explorer:
        """An explorer of a run folder (its row, as recorded, and the checkpoint its run.json evaluated, on
        the split it evaluated at `data_root`, default the recorded root), or of `config` and `checkpoint`
        (None: random weights). `image_path` explores that file instead of the split (`file_sample`).
        `settings` are initial `ExplorerSettings` values (None: the model's own)."""
        if run_dir is None and config is None:
            raise ValueError("pass a run folder (run_dir) or a row name (config) and a checkpoint")
        split = None
        if run_dir is not None:
            row = row_of_run(run_dir, config)
            record = RunRecord.read(Path(run_dir) / RUN_FILE)
            checkpoint = checkpoint or run_checkpoint(run_dir)
            if data_root is None and record.data.root and Path(record.data.root).is_dir():
                data_root = record.data.root
            split = record.data.split
        else:
            row = get_row(config)
        model = load_model(row, checkpoint, device)
        initial = ExplorerSettings.of_model(model.cfg, **settings)
        if image_path is not None:
            return cls(model, row, sample=file_sample(row, image_path, label_path), settings=initial)
        return cls(model, row, dataset=eval_dataset(row, data_root, split), settings=initial)

    # -- settings --------------------------------------------------------------------------------------

    @property
    def settings(self) -> ExplorerSettings:
        return self._settings

    @property
    def num_images(self) -> int:
        return len(self.dataset) if self.dataset is not None else 1

    def update(self, **changes: Any) -> ExplorerSettings:
        """Replace some settings (validated); a new image resets the pixel to its default."""
        if "pixel" in changes and changes["pixel"] is not None:
            changes["pixel"] = tuple(int(v) for v in changes["pixel"])
        settings = replace(self._settings, **changes)
        if not 0 <= settings.image_index < self.num_images:
            raise IndexError(f"image index {settings.image_index} is outside the {self.num_images} images")
        if settings.image_index != self._settings.image_index and "pixel" not in changes:
            settings = replace(settings, pixel=None)
        self._settings = settings
        return settings

    # -- what the settings give --------------------------------------------------------------------------

    def sample(self) -> EvalSample:
        """The current image (the dataset's item `image_index`, or the one prepared image)."""
        if self.dataset is None:
            return self._sample
        index = self._settings.image_index
        if self._current is None or self._current[0] != index:
            features = self._features.get(index)
            self._current = (index, features.sample if features is not None else eval_sample(self.dataset, index))
        return self._current[1]

    def has_features(self) -> bool:
        """Whether the current image's features are cached (the next view runs only the subdivision)."""
        return self._settings.image_index in self._features

    def features(self) -> ImageFeatures:
        """The current image's features, computed on the first request and cached."""
        index = self._settings.image_index
        if index in self._features:
            self._features.move_to_end(index)
            return self._features[index]
        if self.progress is not None:
            self.progress("features", 0, 1)
        features = image_features(self.model, self.sample())
        if self.progress is not None:
            self.progress("features", 1, 1)
        self._features[index] = features
        while len(self._features) > self._max_cached:
            self._features.popitem(last=False)
        return features

    def view(self) -> ExplorerView:
        """The subdivision with the current steps and points (recomputed only when those or the image change)."""
        s = self._settings
        key = (s.image_index, s.steps, s.num_points)
        if self._view is None or self._view[0] != key:
            features = self.features()
            self._view = (key, refine_view(self.model, features, s.steps, s.num_points, self.row.eval, self.progress))
        return self._view[1]

    def candidates(self) -> TrainingPoints:
        """The training-time selection with the current N, k, beta and seed."""
        s = self._settings
        key = (s.image_index, s.train_num_points, s.oversample_ratio, s.importance_sample_ratio, s.seed)
        if self._candidates is None or self._candidates[0] != key:
            self._candidates = (key, candidate_points(self.features(), s))
        return self._candidates[1]

    def label_size(self) -> tuple[int, int]:
        return tuple(self.sample().gt.shape)

    def pixel(self) -> Pixel:
        """The chosen pixel, or `default_pixel` of the current view."""
        return self._settings.pixel if self._settings.pixel is not None else default_pixel(self.view(), self.label_size())

    def readout(self) -> PixelReadout:
        return pixel_readout(self.model, self.features(), self.view(), self.pixel())


# --------------------------------------------------------------------------------------------------------
# Figures (matplotlib Figure objects; nothing is shown here) and text


def _draw(ax: Any, picture: np.ndarray, title: str, **kwargs: Any) -> None:
    ax.imshow(picture, extent=figures.UNIT_EXTENT, interpolation="nearest",
              aspect=picture.shape[0] / picture.shape[1], **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_axis_off()


def _mark(ax: Any, pixel: Pixel, label_size: tuple[int, int]) -> None:
    """The chosen pixel as a ring with a white outline, on the unit square."""
    x, y = (pixel[1] + 0.5) / label_size[1], (pixel[0] + 0.5) / label_size[0]
    ax.scatter([x], [y], s=150, facecolors="none", edgecolors="white", linewidths=3.0, zorder=5)
    ax.scatter([x], [y], s=150, facecolors="none", edgecolors="black", linewidths=1.2, zorder=6)


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}"


def _grid_text(grid: tuple[int, int]) -> str:
    return f"{grid[0]}×{grid[1]}"


def _panels(fig: Figure, rows: int, columns: int, right: float = 0.0, top: float = 0.5) -> np.ndarray:
    """(rows, columns) axes on a fixed grid (no layout engine: it would cost more than the drawing itself),
    leaving `right` and `top` inches free for a legend and titles."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.01, right=1 - (right + 0.1) / width, bottom=0.02, top=1 - top / height,
                        wspace=0.05, hspace=0.55 * rows / max(height, 1))
    return np.asarray(fig.subplots(rows, columns, squeeze=False))


def overview_figure(sample: EvalSample, view: ExplorerView, pixel: Pixel, palette: np.ndarray,
                    classes: Sequence[str] | None = None) -> Figure:
    """Image | coarse prediction (its own h0 x w0 grid) | refined prediction (scored, at the label size) |
    ground truth, with the chosen pixel marked and each output's per-image scores in its title."""
    label_size = tuple(sample.gt.shape)
    coarse = view.coarse_logits[0].argmax(0)
    fig = Figure(figsize=(13, 3.6))
    axes = _panels(fig, 1, 4, right=1.5, top=0.55)[0]
    image = sample.image.permute(1, 2, 0).numpy()
    _draw(axes[0], image, f"{sample.title}: input {image.shape[0]}×{image.shape[1]}")
    _draw(axes[1], figures.colorize(coarse, palette),
          f"coarse {_grid_text(view.grid(0))}\nmIoU {_percent(view.coarse.mIoU)} · boundary {_percent(view.coarse.boundary_mIoU)}")
    steps = f"{view.steps} step{'s' if view.steps != 1 else ''} × {view.num_points} points"
    _draw(axes[2], figures.colorize(view.refined_pred, palette),
          f"refined ({steps})\nmIoU {_percent(view.refined.mIoU)} · boundary {_percent(view.refined.boundary_mIoU)}")
    _draw(axes[3], figures.colorize(sample.gt, palette), f"ground truth {_grid_text(label_size)}")
    for ax in axes:
        _mark(ax, pixel, label_size)
    _class_legend(fig, [coarse, view.refined_pred, sample.gt], palette, classes)
    return fig


def _class_legend(fig: Figure, maps: Sequence[Tensor], palette: np.ndarray, classes: Sequence[str] | None) -> None:
    """`figures.class_legend`'s entries, placed at the figure's right edge without a layout engine."""
    figures.class_legend(fig, maps, palette, classes, beside=True)
    for legend in fig.legends:
        legend.set_loc("upper right")


def steps_figure(sample: EvalSample, view: ExplorerView, pixel: Pixel, palette: np.ndarray) -> Figure:
    """One column per subdivision step: the 2x-upsampled prediction with the chosen points (red), and the
    uncertainty it was chosen from (top-2 logit margin; brighter = less certain) with the same points."""
    label_size = tuple(sample.gt.shape)
    if not view.subdivision:
        fig = Figure(figsize=(6, 0.8))
        fig.text(0.5, 0.5, "0 subdivision steps: the refined output is the coarse prediction.", ha="center",
                 va="center", fontsize=10)
        return fig
    columns = len(view.subdivision)
    fig = Figure(figsize=(max(3.25 * columns, 4.0) + 1.2, 7.0))
    axes = _panels(fig, 2, columns, right=1.2, top=0.75)
    for i, step in enumerate(view.subdivision):
        grid = view.grid(i + 1)
        xs, ys = step.point_coords[0, :, 0].numpy(), step.point_coords[0, :, 1].numpy()
        took = f" · {1000 * view.step_seconds[i]:.0f} ms" if view.step_seconds else ""
        _draw(axes[0, i], figures.colorize(step.logits[0].argmax(0), palette),
              f"step {i + 1}: upsampled to {_grid_text(grid)}{took}")
        _draw(axes[1, i], step.uncertainty[0, 0].numpy(),
              f"step {i + 1}: {len(xs)} of {grid[0] * grid[1]} cells chosen", cmap="viridis")
        for ax in axes[:, i]:
            ax.scatter(xs, ys, s=1.0, c="red", marker=".", linewidths=0)
            _mark(ax, pixel, label_size)
    bar = fig.add_axes((1 - 0.9 / fig.get_size_inches()[0], 0.08, 0.12 / fig.get_size_inches()[0], 0.35))
    fig.colorbar(axes[1, 0].get_images()[0], cax=bar, label="uncertainty (2nd - 1st logit)")
    fig.suptitle("Adaptive subdivision (red: the cells the point head re-predicts; ring: the chosen pixel)",
                 fontsize=10)
    return fig


def candidates_figure(sample: EvalSample, features: ImageFeatures, points: TrainingPoints, palette: np.ndarray,
                      classes: Sequence[str] | None = None) -> Figure:
    """The training-time selection over the coarse prediction (`figures.show_training_points`)."""
    coarse = features.coarse_logits[0].argmax(0).cpu()
    return figures.show_training_points(sample.image, coarse, points, palette=palette, classes=classes)


def figure_png(fig: Figure, dpi: int = 72) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def summary_html(view: ExplorerView, features: ImageFeatures) -> str:
    """The per-image scores of both outputs and the setting, as an HTML table (percent)."""
    steps = f"{view.steps} step{'s' if view.steps != 1 else ''} × {view.num_points} points"
    sample = features.sample
    rows = [("coarse", view.coarse), ("refined", view.refined)]
    body = "".join(
        f"<tr><td>{name}</td><td class='pr-{name}-miou'>{_percent(s.mIoU)}</td><td>{_percent(s.boundary_mIoU)}</td></tr>"
        for name, s in rows
    )
    gain = (f"<tr><td>refined − coarse</td><td>{_signed(view.refined.mIoU - view.coarse.mIoU)}</td>"
            f"<td>{_signed(view.refined.boundary_mIoU - view.coarse.boundary_mIoU)}</td></tr>")
    return (
        f"<div><b>{html.escape(sample.title)}</b>: input {_grid_text(tuple(sample.input.shape[-2:]))}, "
        f"label {_grid_text(tuple(sample.gt.shape))} · <b class='pr-setting'>{steps}</b>"
        f"<table style='border-collapse: collapse'><tr><th>output</th><th>mIoU %</th><th>boundary mIoU %</th></tr>"
        f"{body}{gain}</table></div>"
    )


def _signed(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:+.1f}"


def timing_text(view: ExplorerView, features: ImageFeatures, cached: bool, drawing_seconds: float | None = None) -> str:
    """One line of wall times: features (once per image), each step, the whole refine, scores, drawing."""
    parts = [f"features {features.seconds:.2f} s{' (cached)' if cached else ''}"]
    parts += [f"step {i + 1} {1000 * t:.0f} ms" for i, t in enumerate(view.step_seconds)]
    parts += [f"refine {1000 * view.refine_seconds:.0f} ms", f"scores {1000 * view.score_seconds:.0f} ms"]
    if drawing_seconds is not None:
        parts.append(f"drawing {1000 * drawing_seconds:.0f} ms")
    return "time: " + " · ".join(parts)


def readout_html(readout: PixelReadout, classes: Sequence[str]) -> str:
    """The pixel's class probabilities (percent; the largest of each column in bold) from the coarse head, the
    point head at each step's cell, and the refined output, with whether each step re-predicted the pixel."""
    columns = [("coarse", readout.coarse_probs)]
    notes = []
    for s in readout.steps:
        chosen = f"refined (point #{s.rank})" if s.refined else "not refined"
        columns.append((f"step {s.step} point head", s.point_probs))
        notes.append(f"step {s.step}: cell {s.cell} of its grid, uncertainty {s.uncertainty:.3f}, "
                     f"<b class='pr-refined-{s.step}'>{chosen}</b>")
    columns.append(("refined", readout.refined_probs))
    best = [int(p.argmax()) for _, p in columns]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    lines = []
    for c, name in enumerate(classes):
        cells = "".join(
            f"<td>{'<b>' if best[j] == c else ''}{100 * float(p[c]):.1f}{'</b>' if best[j] == c else ''}</td>"
            for j, (_, p) in enumerate(columns)
        )
        marker = " ◀ ground truth" if readout.gt == c else ""
        lines.append(f"<tr><td>{html.escape(str(name))}{marker}</td>{cells}</tr>")
    gt = "ignored / none" if readout.gt == IGNORE_INDEX or readout.gt >= len(classes) else classes[readout.gt]
    row, col = readout.pixel
    return (
        f"<div><b>pixel (row {row}, col {col})</b> of {_grid_text(readout.label_size)}: ground truth "
        f"{html.escape(str(gt))}; coarse says {html.escape(str(classes[readout.coarse_label]))}, refined says "
        f"{html.escape(str(classes[readout.refined_label]))}; coarse cell {readout.coarse_cell}"
        f"<br>{'<br>'.join(notes) if notes else 'no subdivision step'}"
        f"<table><tr><th>class (%)</th>{head}</tr>{''.join(lines)}</table></div>"
    )


def _png_tag(png: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width: 100%"/>'


def snapshot_html(explorer: Explorer, dpi: int = 72) -> str:
    """The explorer's current state as static HTML (scores, timings, the pixel readout, the three figures as
    embedded PNGs): what an HTML report of the executed notebook shows in place of the live widget."""
    features, view = explorer.features(), explorer.view()
    sample, pixel = features.sample, explorer.pixel()
    parts = [
        summary_html(view, features),
        f"<p>{timing_text(view, features, cached=False)}</p>",
        _png_tag(figure_png(overview_figure(sample, view, pixel, explorer.palette, explorer.classes), dpi)),
        _png_tag(figure_png(steps_figure(sample, view, pixel, explorer.palette), dpi)),
        readout_html(explorer.readout(), explorer.classes),
        _png_tag(figure_png(candidates_figure(sample, features, explorer.candidates(), explorer.palette,
                                              explorer.classes), dpi)),
    ]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------
# The widgets


class ExplorerWidget:
    """ipywidgets controls and views of an `Explorer`. Display it (or its `.widget`) in a notebook.

    Controls (`controls[name]`): image (validation index), steps, points, N, k, beta, seed, pixel row and col.
    Views: `images["overview" | "steps" | "candidates"]` (PNG), `summary`, `readout`, `timing` (HTML), and
    `progress`. A change re-renders only what depends on it; `figures` holds the last drawn `Figure`s and
    `last_seconds` the wall time of the last update (computation and drawing), for tests and for the reader.
    """

    def __init__(self, explorer: Explorer, dpi: int = 72) -> None:
        import ipywidgets as w

        self.explorer = explorer
        self.dpi = dpi
        s, cfg = explorer.settings, explorer.model.cfg
        height, width = explorer.label_size()
        slider = dict(continuous_update=False, style={"description_width": "9em"},
                      layout=w.Layout(width="26em"))
        max_points = max(16384, 4 * cfg.subdivision_num_points, s.num_points)
        self.controls: dict[str, Any] = {
            "image": w.IntSlider(s.image_index, 0, max(explorer.num_images - 1, 0), description="image",
                                 disabled=explorer.num_images < 2, **slider),
            "steps": w.IntSlider(s.steps, 0, max(MAX_STEPS, s.steps), description="subdivision steps", **slider),
            "num_points": w.IntSlider(s.num_points, 1, max_points, description="points per step", **slider),
            "train_num_points": w.IntSlider(s.train_num_points, 1, max(4 * cfg.train_num_points, s.train_num_points),
                                            description="training N", **slider),
            "oversample_ratio": w.FloatSlider(s.oversample_ratio, min=1.0, max=max(10.0, s.oversample_ratio),
                                              step=0.5, description="oversample k", **slider),
            "importance_sample_ratio": w.FloatSlider(s.importance_sample_ratio, min=0.0, max=1.0, step=0.05,
                                                     description="importance β", **slider),
            "seed": w.BoundedIntText(s.seed, min=0, max=2**31 - 1, description="seed", style=slider["style"],
                                     layout=w.Layout(width="16em")),
            "row": w.IntSlider(0, 0, height - 1, description="pixel row", **slider),
            "col": w.IntSlider(0, 0, width - 1, description="pixel col", **slider),
        }
        for name, control in self.controls.items():
            control.add_class(f"pr-explorer-{name.replace('_', '-')}")
        self.images = {name: w.Image(format="png", layout=w.Layout(max_width="100%"))
                       for name in ("overview", "steps", "candidates")}
        self.summary, self.readout, self.timing = w.HTML(), w.HTML(), w.HTML()
        self.status = w.HTML()
        self.progress = w.IntProgress(0, 0, 1, description="", layout=w.Layout(width="16em"))
        for name in ("summary", "readout", "timing", "status"):
            getattr(self, name).add_class(f"pr-explorer-{name}")
        self.figures: dict[str, Figure] = {}
        self.last_seconds = 0.0
        self._syncing = False
        self.widget = self._layout(w)
        self._wire()
        explorer.progress = self._report
        self.refresh()

    # -- layout and wiring ----------------------------------------------------------------------------

    def _layout(self, w: Any) -> Any:
        c = self.controls
        inference = w.VBox([w.HTML("<b>inference</b>"), c["image"], c["steps"], c["num_points"]])
        training = w.VBox([w.HTML("<b>training-time candidates</b>"), c["train_num_points"], c["oversample_ratio"],
                           c["importance_sample_ratio"], c["seed"]])
        pixel = w.VBox([w.HTML("<b>pixel</b>"), c["row"], c["col"]])
        header = w.HBox([inference, training, pixel])
        status = w.HBox([self.progress, self.status])
        return w.VBox([
            header, status, self.summary, self.timing, self.images["overview"], self.images["steps"],
            self.readout, w.HTML("<b>Training-time point selection</b> (N, k, β above)"), self.images["candidates"],
        ])

    def _wire(self) -> None:
        for name in ("steps", "num_points"):
            self.controls[name].observe(lambda change, n=name: self._changed(n, change), names="value")
        for name in ("train_num_points", "oversample_ratio", "importance_sample_ratio", "seed"):
            self.controls[name].observe(lambda change, n=name: self._changed(n, change), names="value")
        self.controls["image"].observe(lambda change: self._changed("image_index", change), names="value")
        for name in ("row", "col"):
            self.controls[name].observe(lambda change: self._pixel_changed(), names="value")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- updates ----------------------------------------------------------------------------------------

    _DEPENDS = {
        "image_index": {"overview", "steps", "candidates", "readout"},
        "steps": {"overview", "steps", "readout"},
        "num_points": {"overview", "steps", "readout"},
        "train_num_points": {"candidates"},
        "oversample_ratio": {"candidates"},
        "importance_sample_ratio": {"candidates"},
        "seed": {"candidates"},
        "pixel": {"overview", "steps", "readout"},
    }

    def _changed(self, setting: str, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        self.explorer.update(**{setting: change["new"]})
        self.refresh(self._DEPENDS[setting])

    def _pixel_changed(self) -> None:
        if self._syncing:
            return
        self.explorer.update(pixel=(self.controls["row"].value, self.controls["col"].value))
        self.refresh(self._DEPENDS["pixel"])

    def _report(self, what: str, done: int, total: int) -> None:
        self.progress.max, self.progress.value = max(total, 1), done
        self.status.value = ("computing the backbone, FPN and coarse head…" if what == "features" and done < total
                             else f"subdivision step {done} of {total} done" if what == "step" else "")

    def _sync_pixel_controls(self) -> None:
        """Slider ranges follow the image's label size; their values follow the (possibly default) pixel."""
        height, width = self.explorer.label_size()
        row, col = self.explorer.pixel()
        self._syncing = True
        try:
            for name, size, value in (("row", height, row), ("col", width, col)):
                control = self.controls[name]
                if control.max != size - 1:
                    control.value = min(control.value, size - 1)
                    control.max = size - 1
                control.value = value
        finally:
            self._syncing = False

    def refresh(self, parts: set[str] | None = None) -> None:
        """Recompute and redraw `parts` (default: all) of "overview", "steps", "candidates", "readout"."""
        parts = parts or {"overview", "steps", "candidates", "readout"}
        start = time.perf_counter()
        explorer = self.explorer
        cached = explorer.has_features()
        features, view = explorer.features(), explorer.view()
        self._sync_pixel_controls()
        sample, pixel = features.sample, explorer.pixel()
        computed = time.perf_counter()
        self.status.value = "drawing…"
        draw = {
            "overview": lambda: overview_figure(sample, view, pixel, explorer.palette, explorer.classes),
            "steps": lambda: steps_figure(sample, view, pixel, explorer.palette),
            "candidates": lambda: candidates_figure(sample, features, explorer.candidates(), explorer.palette,
                                                    explorer.classes),
        }
        for name in sorted(parts & set(draw)):
            self.figures[name] = draw[name]()
            self.images[name].value = figure_png(self.figures[name], self.dpi)
        if "readout" in parts:
            self.readout.value = readout_html(explorer.readout(), explorer.classes)
        self.summary.value = summary_html(view, features)
        end = time.perf_counter()
        self.last_seconds = end - start
        self.timing.value = timing_text(view, features, cached, end - computed) + f" · update {self.last_seconds:.2f} s"
        self.status.value = "ready"


__all__ = [
    "MAX_STEPS",
    "ExplorerSettings",
    "ImageFeatures",
    "Scores",
    "ExplorerView",
    "StepPixel",
    "PixelReadout",
    "row_of_run",
    "file_sample",
    "image_features",
    "refine_view",
    "label_prediction",
    "image_scores",
    "candidate_points",
    "cell_of",
    "cell_centre",
    "pixel_of_cell",
    "default_pixel",
    "pixel_readout",
    "Explorer",
    "overview_figure",
    "steps_figure",
    "candidates_figure",
    "figure_png",
    "summary_html",
    "timing_text",
    "readout_html",
    "snapshot_html",
    "ExplorerWidget",
]
