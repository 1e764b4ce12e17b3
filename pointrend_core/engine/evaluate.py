"""Inference with test-time options, the evaluation loop, and the per-run result file.

Shapes: C classes; (H', W') the resized network input, (H, W) the original image / label size; logits are
(1, C, ., .) float32. Pipeline (recipe §5.2 and §8, `docs/reference-recipe.md`): the dataset gives the resized, normalised
image and the label at its ORIGINAL size; the model's logits are resized bilinearly (align_corners=False)
straight to (H, W) -- no crop back to (H', W') first, as the reference does -- then argmax. Every metric is
computed twice, for the refined output (`PointRendOutput.logits`) and for the coarse stride-4 output
(`coarse_logits`) upsampled the same way, so a run reports what the point head adds.

Units: `EvalResult` and `SegmentationMetrics` hold fractions in [0, 1]; `run.json` holds percentages
(0-100, as in the model-zoo table) for every metric, and says so in its `"units"` entry.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from pointrend_core.checkpoints import check_checkpoint_path, load_checkpoint
from pointrend_core.checks import check_max_images
from pointrend_core.config import EvalConfig, RowConfig
from pointrend_core.data.transforms import eval_transforms
from pointrend_core.engine.distributed import all_reduce_, rank_and_world_size
from pointrend_core.engine.image_counts import ImageCounts, gather_image_counts
from pointrend_core.engine.intervals import write_counts_and_intervals
from pointrend_core.engine.metrics import BoundaryIoU, BoundaryMetrics, ConfusionMatrix, SegmentationMetrics, class_counts
from pointrend_core.engine.records import DataRecord, Metrics, OutputMetrics, RunRecord, TimingRecord, config_json, environment
from pointrend_core.engine.run_folder import EvaluationKey, RunFolder
from pointrend_core.labels import IGNORE_INDEX
from pointrend_core.model import PointRend, Subdivision, build_model
from pointrend_core.model.inference import InferenceModel, Precision, check_precision, prepare_for_inference


# --------------------------------------------------------------------------------------------------
# Inference


def slide_windows(
    size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Windows (y0, y1, x0, x1) covering an (H, W) image with crops (h, w) every (sh, sw) pixels.

    mmseg's / sssegmentation's slide layout: ceil((H - h) / sh) + 1 rows of windows (at least one); the last
    window of a row or column is shifted back to end at the image border, and windows are clipped to the
    image when the image is smaller than the crop.
    """
    (height, width), (crop_h, crop_w), (stride_h, stride_w) = size, crop, stride
    if min(crop_h, crop_w, stride_h, stride_w) < 1:
        raise ValueError(f"slide crop {crop} and stride {stride} must be positive")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"slide stride {stride} larger than crop {crop} would leave pixels unpredicted")
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for r in range(rows):
        y1 = min(r * stride_h + crop_h, height)
        y0 = max(y1 - crop_h, 0)
        for c in range(cols):
            x1 = min(c * stride_w + crop_w, width)
            x0 = max(x1 - crop_w, 0)
            windows.append((y0, y1, x0, x1))
    return windows


def _resize(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear, align_corners=False (the reference everywhere); identity when the size already matches."""
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _rescale(image: Tensor, scale: float) -> Tensor:
    """The reference's multi-scale input: `F.interpolate(scale_factor=scale)`, bilinear, align_corners=False.

    The output size is floor(scale * size) and the bilinear sampling uses `scale` itself, not output/input
    size: at 301 x 423 and scale 0.75 that is 225 x 317 sampled at 1 / 0.75, where rounding the size would
    give 226 x 317 and another grid (recipe §8). Scale 1 leaves the image untouched (the reference's
    interpolation at scale 1 is the identity).

    This is not an OpenCV resize on purpose: the reference rescales the normalised float tensor with
    `F.interpolate` in its test-time augmentation, after its data pipeline's uint8 `cv2.resize` to base_size
    (`data.transforms.EvalTransforms`), so torch's kernel is what gives its numbers.
    """
    if scale == 1.0:
        return image
    return F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)


def _forward(model: nn.Module, image: Tensor, subdivision: Subdivision | None) -> tuple[Tensor, Tensor]:
    """Model outputs for (1, 3, h, w): refined and coarse logits at the model's own resolutions, float32."""
    if subdivision is None:
        out = model(image)
    else:
        out = model(image, subdivision_steps=subdivision.steps, subdivision_num_points=subdivision.num_points)
    try:
        refined, coarse = out.logits, out.coarse_logits
    except AttributeError:
        raise TypeError(
            "evaluation needs a model output with .logits and .coarse_logits (PointRendOutput), "
            f"got {type(out).__name__}"
        ) from None
    return refined.float(), coarse.float()


def _forward_slide(
    model: nn.Module, image: Tensor, cfg: EvalConfig, subdivision: Subdivision | None
) -> tuple[Tensor, Tensor]:
    """Sliding-window logits (1, C, h, w) for both outputs: each window's outputs are resized to the window,
    summed into place, and divided by how many windows cover each pixel."""
    if cfg.slide_crop is None or cfg.slide_stride is None:
        raise ValueError(
            f"eval mode 'slide' needs slide_crop and slide_stride, got {cfg.slide_crop} and {cfg.slide_stride}"
        )
    height, width = image.shape[-2:]
    refined_sum = coarse_sum = None
    count = image.new_zeros(1, 1, height, width)
    for y0, y1, x0, x1 in slide_windows((height, width), cfg.slide_crop, cfg.slide_stride):
        refined, coarse = _forward(model, image[..., y0:y1, x0:x1], subdivision)
        if refined_sum is None:
            refined_sum = refined.new_zeros(1, refined.shape[1], height, width)
            coarse_sum = coarse.new_zeros(1, coarse.shape[1], height, width)
        refined_sum[..., y0:y1, x0:x1] += _resize(refined, (y1 - y0, x1 - x0))
        coarse_sum[..., y0:y1, x0:x1] += _resize(coarse, (y1 - y0, x1 - x0))
        count[..., y0:y1, x0:x1] += 1
    return refined_sum / count, coarse_sum / count


@torch.inference_mode()
def predict(
    model: nn.Module,
    image: Tensor,
    out_size: Sequence[int],
    eval_cfg: EvalConfig,
    subdivision: Subdivision | None = None,
) -> tuple[Tensor, Tensor]:
    """Refined and coarse logits (1, C, H, W) for one normalised image (1, 3, H', W'), at `out_size` (H, W).

    For each scale s in `eval_cfg.scales` the image is rescaled as the reference does (`_rescale`:
    floor(s * (H', W')), sampled at 1 / s; s = 1 is left untouched); with `eval_cfg.flip` it is also run mirrored (the output is mirrored back). Each pass is
    'whole' (one forward, logits kept at the model's resolution) or 'slide' (windows `slide_crop` every
    `slide_stride`, averaged where they overlap). Each pass's refined and coarse logits are resized
    bilinearly straight to (H, W) and the passes are averaged as LOGITS, not probabilities: the reference's
    `use_probs_before_resize` is False, and with its defaults (one scale, no flip) the two agree anyway.
    `subdivision` (a PointRend model only) overrides the model's inference steps and points per step.
    `model` is called as given (in eval mode, on the image's device): a `PointRend` runs eager float32, an
    `InferenceModel` (`prepare_for_inference`) runs its own fast path and precision; `evaluate` prepares one.
    """
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3 or not image.is_floating_point():
        raise ValueError(
            f"predict expects one float image (1, 3, H, W), got dtype {image.dtype} shape {tuple(image.shape)}"
        )
    if eval_cfg.mode not in ("whole", "slide"):
        raise ValueError(f"eval mode must be 'whole' or 'slide', got {eval_cfg.mode!r}")
    if not eval_cfg.scales:
        raise ValueError("eval scales must hold at least one scale, got ()")
    refined_sum = coarse_sum = None
    passes = 0
    for scale in eval_cfg.scales:
        if scale <= 0:
            raise ValueError(f"eval scales must be positive, got {scale}")
        scaled = _rescale(image, scale)
        for flip in (False, True) if eval_cfg.flip else (False,):
            x = scaled.flip(-1) if flip else scaled
            if eval_cfg.mode == "slide":
                refined, coarse = _forward_slide(model, x, eval_cfg, subdivision)
            else:
                refined, coarse = _forward(model, x, subdivision)
            if flip:
                refined, coarse = refined.flip(-1), coarse.flip(-1)
            refined, coarse = _resize(refined, out_size), _resize(coarse, out_size)
            refined_sum = refined if refined_sum is None else refined_sum + refined
            coarse_sum = coarse if coarse_sum is None else coarse_sum + coarse
            passes += 1
    return refined_sum / passes, coarse_sum / passes


# --------------------------------------------------------------------------------------------------
# Evaluation loop


def inference_model(
    model: nn.Module, precision: Precision = "fp32", compile: bool = False, device: torch.device | str | None = None
) -> nn.Module:
    """The module an evaluation runs for `model`: the one inference path for a PointRend.

    - `PointRend`, or a wrapper holding one in `.module` (DDP): `prepare_for_inference(model, precision,
      compile)` -- a BatchNorm-folded, channels-last copy under inference_mode, `model` left untouched.
    - `InferenceModel`: as it is; `precision` and `compile` must be its own (or the defaults).
    - Any other module (a baseline, a stub): as it is, in float32; other precisions are refused.
    `device` (default: the model's) is where it will run, so that a precision it cannot run fails first.
    """
    network = getattr(model, "module", model)
    if isinstance(network, InferenceModel):
        if (precision, compile) not in (("fp32", False), (network.precision, network.compiled)):
            raise ValueError(
                f"the model was prepared for precision {network.precision!r} (compiled={network.compiled}); "
                f"got precision {precision!r} (compile={compile}): prepare it again or leave them out"
            )
        return network
    if isinstance(network, PointRend):
        return prepare_for_inference(network, precision, compile, device=device)
    check_precision(precision, device if device is not None else "cpu")
    if precision != "fp32" or compile:
        raise ValueError(
            f"precision {precision!r} and compile apply to a PointRend (through prepare_for_inference); "
            f"{type(network).__name__} runs as it is, in fp32"
        )
    return model


@dataclass(frozen=True)
class EvalResult:
    """Dataset-level metrics (fractions in [0, 1]) for the refined and the coarse output, and timings.

    `seconds` is the wall time of the loop (data loading included; under DDP the slowest rank) and
    `images_per_second` = num_images / seconds over all processes. `counts` holds every image's per-class
    pixel counts (`engine.image_counts`), in dataset order, on every process; summed they give these metrics.
    """

    refined: SegmentationMetrics
    coarse: SegmentationMetrics
    refined_boundary: BoundaryMetrics
    coarse_boundary: BoundaryMetrics
    num_images: int
    seconds: float
    images_per_second: float
    counts: ImageCounts | None = None


def _check_item(index: int, image: Tensor, mask: Tensor) -> None:
    if not (isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] == 3 and image.is_floating_point()):
        raise ValueError(
            f"dataset item {index}: expected a normalised float image (3, H', W'), got "
            f"{getattr(image, 'dtype', type(image).__name__)} shape {tuple(getattr(image, 'shape', ()))} "
            "(use eval_transforms)"
        )
    if not (isinstance(mask, Tensor) and mask.dim() == 2 and not mask.is_floating_point()):
        raise ValueError(
            f"dataset item {index}: expected an integer label map (H, W) at the original size, got "
            f"{getattr(mask, 'dtype', type(mask).__name__)} shape {tuple(getattr(mask, 'shape', ()))}"
        )


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    eval_cfg: EvalConfig,
    device: str | torch.device,
    num_classes: int,
    precision: Precision = "fp32",
    progress: bool = True,
    max_images: int | None = None,
    workers: int = 0,
    ignore_index: int = IGNORE_INDEX,
    subdivision: Subdivision | None = None,
    compile: bool = False,
) -> EvalResult:
    """Evaluate `model` (already on `device`) on the first `max_images` items of `dataset` (all if None).

    Items are (image float (3, H', W') resized + normalised, label int (H, W) at the original size); batch
    size 1. Under torch.distributed each rank takes items rank, rank + world, ... (no padding duplicates,
    so every image counts exactly once), and the metric states are all-reduced: every rank returns the
    dataset-level result.

    The network that runs is `inference_model(model, precision, compile)`: a `PointRend` (or a DDP wrapper of
    one) through the fast path of `prepare_for_inference` -- a folded copy, so `model` itself is left as it
    is, whatever its mode --, an `InferenceModel` as it was prepared, anything else as it is.
    """
    device = torch.device(device)
    net = inference_model(model, precision, compile, device)
    rank, world = rank_and_world_size()
    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    indices = list(range(rank, total, world))
    loader = DataLoader(Subset(dataset, indices), batch_size=None, shuffle=False, num_workers=workers)
    meters = {name: (ConfusionMatrix(num_classes, ignore_index),
                     BoundaryIoU(num_classes, eval_cfg.boundary_dilation_ratio, ignore_index))
              for name in ("refined", "coarse")}
    # Per image (this process's, in `indices` order): (4, 3, C) counts in image_counts.OUTPUTS order.
    image_counts: list[Tensor] = []
    was_training = net.training
    net.eval()
    start = time.perf_counter()
    try:
        bar = tqdm(loader, total=len(indices), desc="evaluate", unit="img", disable=not progress or rank != 0)
        for position, (image, mask) in enumerate(bar):
            _check_item(indices[position], image, mask)
            image = image.to(device, non_blocking=True)[None]
            mask = mask.to(device)
            refined, coarse = predict(net, image, mask.shape, eval_cfg, subdivision)
            image_counts.append(_score_image(meters, {"refined": refined, "coarse": coarse}, mask))
    finally:
        net.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    all_reduce_(seconds, dist.ReduceOp.MAX)
    for confusion, boundary in meters.values():
        confusion.all_reduce()
        boundary.all_reduce()
    counts = gather_image_counts(image_counts, indices, total, num_classes)
    elapsed = seconds.item()
    return EvalResult(
        refined=meters["refined"][0].compute(),
        coarse=meters["coarse"][0].compute(),
        refined_boundary=meters["refined"][1].compute(),
        coarse_boundary=meters["coarse"][1].compute(),
        num_images=total,
        seconds=elapsed,
        images_per_second=total / elapsed if elapsed > 0 else float("nan"),
        counts=counts,
    )


def _score_image(meters: dict[str, tuple[ConfusionMatrix, BoundaryIoU]], logits: dict[str, Tensor],
                 mask: Tensor) -> Tensor:
    """Add one image's argmax predictions (refined and coarse logits (1, C, H, W)) to the meters; returns its
    per-class counts (4, 3, C) in `image_counts.OUTPUTS` order (full image, then boundary band)."""
    full, band = [], []
    for name in ("refined", "coarse"):
        pred = logits[name].argmax(dim=1)[0]
        confusion, boundary = meters[name]
        full.append(class_counts(confusion.update(pred, mask)).cpu())
        band.append(boundary.update(pred, mask)[0].cpu())
    return torch.stack(full + band)


# --------------------------------------------------------------------------------------------------
# One run -> run.json


def _percent(value: float) -> float:
    return 100.0 * value


def _output_metrics(metrics: SegmentationMetrics, boundary: BoundaryMetrics, classes: Sequence[str]) -> OutputMetrics:
    """One output's metrics in percent, per-class values keyed by class name."""
    return OutputMetrics(
        mIoU=_percent(metrics.mIoU),
        aAcc=_percent(metrics.aAcc),
        mAcc=_percent(metrics.mAcc),
        IoU={name: _percent(v) for name, v in zip(classes, metrics.iou)},
        Acc={name: _percent(v) for name, v in zip(classes, metrics.acc)},
        boundary_mIoU=_percent(boundary.mIoU),
        boundary_IoU={name: _percent(v) for name, v in zip(classes, boundary.iou)},
    )


def _class_names(dataset: Dataset, row: RowConfig, num_classes: int) -> list[str]:
    names = getattr(dataset, "classes", None) or getattr(row.data.dataset, "CLASSES", None)
    if names is None:
        return [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(
            f"dataset {type(dataset).__name__} has {len(names)} classes but the model predicts {num_classes}"
        )
    return list(names)


def default_evaluation_folder(
    row: RowConfig, checkpoint: str | Path, data_root: str | Path | None, split: str | None, max_images: int | None,
    precision: Precision = "fp32",
) -> Path:
    """Where `evaluate` writes when given no folder: the checkpoint's own folder, unless its run.json records
    another evaluation; then `<that folder>/evaluations/<checkpoint stem>_<row>_<split>[_first<N>][_<precision>]`."""
    key = EvaluationKey.create(checkpoint, row.data.dataset.__name__, row.data.resolve_root(data_root),
                               split or row.data.val_split, max_images, precision, row.overrides)
    return RunFolder.for_evaluation(checkpoint, key, row.name).path


def evaluate_run(
    row: RowConfig,
    checkpoint: str | Path | None,
    data_root: str | Path | None,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    split: str | None = None,
    max_images: int | None = None,
    model: nn.Module | None = None,
    *,
    precision: Precision = "fp32",
    compile: bool = False,
    workers: int = 0,
    progress: bool = True,
    replace: bool = False,
) -> RunRecord:
    """Evaluate one table row and write `out_dir/run.json` (atomically, rank 0 only); returns its record.

    The model is `model` if given, else `build_model(row)`; `checkpoint`, when given, is loaded into it with
    `load_checkpoint` (None evaluates the weights as they are). The dataset is
    `row.data.dataset(data_root or row.data.default_root, split or row.data.val_split,
    transforms=eval_transforms(row.data))`. The record's `training` is out_dir/train.json when there is one
    (`engine.records` describes every field) when that summary is of `checkpoint`; every metric is a
    percentage (0-100). An existing out_dir/run.json of another evaluation is never replaced (ValueError)
    unless `replace` (the caller starts the folder afresh, e.g. the workbook's --force). The network runs
    through `inference_model(model, precision, compile)`; the record's `timing` says which.
    """
    check_precision(precision, device)  # before any data or weights are read
    check_max_images(max_images)
    folder = RunFolder(out_dir)
    if checkpoint is not None:
        checkpoint = os.path.abspath(check_checkpoint_path(checkpoint))  # absolute: the record is read from other folders
    root = row.data.resolve_root(data_root)
    split = split or row.data.val_split
    num_classes = row.model.num_classes
    key = EvaluationKey.create(checkpoint, row.data.dataset.__name__, root, split, max_images, precision, row.overrides)
    if not replace:
        folder.check_may_record(key)  # read-only: every process, so that all refuse together

    dataset = row.data.dataset(root, split, transforms=eval_transforms(row.data))
    classes = _class_names(dataset, row, num_classes)
    if model is None:
        model = build_model(row)
    # Read before a long evaluation, so that a bad file fails first.
    training = (RunFolder(Path(checkpoint).parent).training_of(checkpoint, load_checkpoint(model, checkpoint))
                if checkpoint is not None else None)
    model.to(device)

    result = evaluate(
        model, dataset, row.eval, device, num_classes,
        precision=precision, compile=compile, progress=progress, max_images=max_images, workers=workers,
    )
    intervals = write_counts_and_intervals(folder.image_counts, result.counts, classes)
    record = _run_record(row, key, checkpoint, len(dataset), classes, result, compile, device, training,
                         intervals)
    if rank_and_world_size()[0] == 0:
        record.write(folder.run_record)
    return record


def _run_record(
    row: RowConfig, key: EvaluationKey, checkpoint: str | None, dataset_size: int, classes: Sequence[str],
    result: EvalResult, compile: bool, device: str | torch.device, training: Any, intervals: Any,
) -> RunRecord:
    """The run.json of an evaluation (`key`: what was evaluated, its paths absolute, as the record keeps them)
    of `row`: metrics in percent, the published number only for the recipe itself (a row with overrides is
    never compared with it)."""
    refined = _output_metrics(result.refined, result.refined_boundary, classes)
    coarse = _output_metrics(result.coarse, result.coarse_boundary, classes)
    published = row.published_miou if not row.overrides else None
    return RunRecord(
        row=row.name,
        config=config_json(row),
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        data=DataRecord(dataset=key.dataset, root=key.root, split=key.split, num_images=result.num_images,
                        dataset_size=dataset_size, max_images=key.max_images, classes=list(classes)),
        published_mIoU=published,
        metrics=Metrics(refined, coarse),
        gain_refined_minus_coarse={
            name: getattr(refined, name) - getattr(coarse, name) for name in ("mIoU", "aAcc", "mAcc", "boundary_mIoU")
        },
        delta_refined_minus_published_mIoU=refined.mIoU - published if published is not None else None,
        timing=TimingRecord(images_per_second=result.images_per_second, seconds=result.seconds,
                            num_images=result.num_images, precision=key.precision, compiled=compile,
                            eval_mode=row.eval.mode),
        environment=environment(device),
        training=training,
        intervals=intervals,
    )


__all__ = [
    "predict", "slide_windows", "inference_model", "evaluate", "EvalResult", "evaluate_run", "default_evaluation_folder",
]
