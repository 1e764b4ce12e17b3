"""Dataset-level segmentation metrics: a streaming confusion matrix and boundary IoU.

Shapes: B images, C classes, H x W pixels, K classes in one chunk. Predictions and targets are integer
class maps (H, W) or (B, H, W) on any device; the metric state lives on the device of the first update and
its size depends only on C, never on the number or size of the images.

Conventions (all metric values here are fractions in [0, 1]; reports multiply by 100):

* Ignored pixels: target == `ignore_index`, and, following the reference (sssegmentation test driver,
  recipe §8), any target value outside [0, C). They count nowhere.
* mIoU, mAcc, aAcc follow chainercv's `eval_semantic_segmentation` and mmseg's `mean_iou`: one confusion
  matrix summed over the whole dataset (not averaged per image), rows = ground truth, columns =
  prediction; IoU_c = TP / (TP + FP + FN); acc_c = TP / (TP + FN); aAcc = trace / total; classes with no
  union (resp. no ground-truth pixel) are NaN and skipped by the nanmean, as the reference does.
* Boundary IoU follows Cheng et al. 2021, "Boundary IoU: Improving Object-Centric Image Segmentation
  Evaluation" and their boundary-iou-api: the boundary band of a binary mask is the mask minus its
  erosion by d = max(1, round(dilation_ratio * image diagonal)) pixels, and Boundary IoU is the IoU of the
  ground-truth band and the predicted band. For semantic segmentation it is applied per class, per image,
  and the band intersections and unions are summed over the dataset per class (the same dataset-level
  accumulation as mIoU); the mean is the nanmean over classes with nonzero union.
* Per-image counts: `ConfusionMatrix.update` returns the (C, C) matrix one update added and `class_counts`
  turns it into (3, C) int64 counts [intersection, prediction, ground truth] per class; `BoundaryIoU.update`
  returns the same (3, C) counts of the boundary bands for each image, (B, 3, C). Union = prediction +
  ground truth - intersection, so summing an image's counts over images gives the dataset totals the
  metrics are computed from, exactly (integers): every dataset-level statistic can be recomputed on any
  subset or resample of the images (`engine.intervals`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pointrend_core.engine.distributed import all_reduce_
from pointrend_core.labels import IGNORE_INDEX

DEFAULT_CHUNK_ELEMENTS = 2**24
"""Boundary IoU works on (K, H, W) boolean masks with K * H * W at most this (16 Mi elements, a few
hundred MB of temporaries): 64 classes at a time at 512 x 512, 8 at 1024 x 2048."""


@dataclass(frozen=True)
class SegmentationMetrics:
    """Confusion-matrix metrics as fractions in [0, 1]; NaN for a class that cannot be scored.

    `acc[c]` is NaN when class c has no ground-truth pixel; `iou[c]` is NaN when class c appears in neither
    ground truth nor prediction. `mAcc` and `mIoU` are the nanmeans of those vectors (NaN if all are NaN).
    """

    aAcc: float
    mAcc: float
    mIoU: float
    acc: tuple[float, ...]
    iou: tuple[float, ...]


@dataclass(frozen=True)
class BoundaryMetrics:
    """Boundary IoU as fractions in [0, 1]: `iou` per class (NaN where the summed band union is 0) and
    `mIoU`, their nanmean; `dilation_ratio` is the band width as a fraction of the image diagonal."""

    iou: tuple[float, ...]
    mIoU: float
    dilation_ratio: float


# --------------------------------------------------------------------------------------------------
# Pure helpers


def _as_batch(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check a prediction/target pair and return both as int64 (B, H, W)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if pred.dim() not in (2, 3):
        raise ValueError(f"expected class maps of shape (H, W) or (B, H, W), got shape {tuple(pred.shape)}")
    for name, t in (("prediction", pred), ("target", target)):
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"{name} must be an integer class map, got dtype {t.dtype} (take the argmax of logits)")
    if pred.dim() == 2:
        pred, target = pred[None], target[None]
    return pred.long(), target.to(pred.device).long()


def valid_pixels(target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Boolean mask of scored pixels: target in [0, C) and not `ignore_index` (same shape as target)."""
    return (target >= 0) & (target < num_classes) & (target != ignore_index)


def _check_pred_range(pred: Tensor, num_classes: int) -> None:
    """Out-of-range predictions would silently land in other cells of the flattened confusion matrix."""
    if pred.numel() == 0:
        return
    lo, hi = torch.aminmax(pred)
    if lo.item() < 0 or hi.item() >= num_classes:
        raise ValueError(
            f"prediction values must lie in [0, {num_classes}) on scored pixels, got range [{lo.item()}, {hi.item()}]"
        )


def metrics_from_confusion(confusion: Tensor) -> SegmentationMetrics:
    """aAcc, per-class acc and IoU, mAcc and mIoU from a (C, C) confusion matrix [ground truth, prediction]."""
    cm = confusion.detach().to("cpu", torch.float64)
    tp = cm.diagonal()
    gt_total = cm.sum(dim=1)
    pred_total = cm.sum(dim=0)
    union = gt_total + pred_total - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    acc = torch.where(gt_total > 0, tp / gt_total.clamp(min=1), nan)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    total = cm.sum()
    a_acc = (tp.sum() / total).item() if total > 0 else float("nan")
    return SegmentationMetrics(
        aAcc=a_acc,
        mAcc=_nanmean(acc),
        mIoU=_nanmean(iou),
        acc=tuple(acc.tolist()),
        iou=tuple(iou.tolist()),
    )


COUNT_KINDS = ("intersection", "prediction", "ground_truth")
"""The rows of a (3, C) per-class count array, in order."""


def class_counts(confusion: Tensor) -> Tensor:
    """(3, C) int64 [intersection, prediction, ground truth] pixel counts per class from a (C, C) confusion
    matrix [ground truth, prediction] (the diagonal, the column sums, the row sums)."""
    cm = confusion.detach().long()
    return torch.stack([cm.diagonal(), cm.sum(dim=0), cm.sum(dim=1)])


def mean_iou_from_counts(counts: Tensor) -> float:
    """Mean IoU (fraction) from (3, C) summed counts [intersection, prediction, ground truth]: the nanmean over
    classes with a nonzero union (= P + G - I) of I / union; NaN when no class has one. The same float64
    arithmetic as `metrics_from_confusion` and `BoundaryIoU.compute`, so summed per-image counts give the
    dataset-level value exactly."""
    inter, pred, gt = torch.as_tensor(counts).to("cpu", torch.float64)
    union = pred + gt - inter
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return _nanmean(torch.where(union > 0, inter / union.clamp(min=1), nan))


def _nanmean(values: Tensor) -> float:
    """nanmean that returns NaN (instead of warning) when every entry is NaN."""
    finite = values[~values.isnan()]
    return finite.mean().item() if finite.numel() else float("nan")


def boundary_width(height: int, width: int, dilation_ratio: float) -> int:
    """Band width d = max(1, round(dilation_ratio * sqrt(H^2 + W^2))) in pixels (Cheng et al. 2021).

    Python's round (half to even) matches the boundary-iou-api, which also uses it.
    """
    if dilation_ratio <= 0:
        raise ValueError(f"boundary dilation_ratio must be > 0, got {dilation_ratio}")
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def _window_any(x: Tensor, width: int, dim: int) -> Tensor:
    """Sliding-window OR of `width` consecutive entries along `dim` (output length n - width + 1).

    Log-step doubling: after the loop x[j] covers [j, j + span) with span the largest power of two <= width,
    and two overlapping spans cover any window. O(log width) whole-tensor ops instead of O(width) per pixel,
    which matters at Cityscapes size (d = 46, window 93).
    """
    out_len = x.shape[dim] - width + 1
    span = 1
    while span * 2 <= width:
        n = x.shape[dim] - span
        x = x.narrow(dim, 0, n) | x.narrow(dim, span, n)
        span *= 2
    return x.narrow(dim, 0, out_len) | x.narrow(dim, width - span, out_len)


def mask_boundary(masks: Tensor, d: int) -> Tensor:
    """Inner boundary band of binary masks: mask minus its erosion by d pixels. (K, H, W) bool -> same.

    Structuring element: the (2d+1) x (2d+1) square (Chebyshev distance <= d), i.e. exactly d iterations of
    the 3 x 3 all-ones kernel the boundary-iou-api erodes with; it is applied separably (rows, then columns).
    Image borders: everything outside the image counts as background, as the api's one-pixel zero padding
    makes it, so a mask touching the image edge has a band along that edge. Erosion is computed as the
    complement of a dilation of the complement, padded with True (= background) by d on every side.
    """
    if masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(f"expected boolean masks (K, H, W), got dtype {masks.dtype} shape {tuple(masks.shape)}")
    if d < 1:
        raise ValueError(f"boundary width d must be >= 1, got {d}")
    background = F.pad(~masks, (d, d, d, d), value=True)
    near_background = _window_any(_window_any(background, 2 * d + 1, dim=2), 2 * d + 1, dim=1)
    return masks & near_background


def _writable(state: Tensor) -> Tensor:
    """`state`, or a normal copy if it was created under torch.inference_mode and we are now outside it
    (in-place updates of inference tensors are only allowed inside inference mode)."""
    if state.is_inference() and not torch.is_inference_mode_enabled():
        return state.clone()
    return state


# --------------------------------------------------------------------------------------------------
# Streaming accumulators


class ConfusionMatrix:
    """Streaming (C, C) int64 confusion matrix [ground truth, prediction] over a whole dataset.

    `update` adds `bincount(C * target + pred)` over the scored pixels (see `valid_pixels`); the state is
    created on the device of the first update. `compute` gives `SegmentationMetrics` (chainercv / mmseg
    conventions, recipe §8). `merge` adds another matrix (e.g. another shard), `all_reduce` sums
    the matrices of all processes in place.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix: Tensor | None = None

    @property
    def matrix(self) -> Tensor:
        """(C, C) int64 counts; rows ground truth, columns prediction."""
        if self._matrix is None:
            self._matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self._matrix

    def update(self, pred: Tensor, target: Tensor) -> Tensor:
        """Add integer class maps `pred`, `target` of shape (H, W) or (B, H, W); returns the (C, C) int64
        counts this update added (summed over the batch; `class_counts` gives its per-class counts)."""
        pred, target = _as_batch(pred, target)
        valid = valid_pixels(target, self.num_classes, self.ignore_index)
        p, t = pred[valid], target[valid]
        _check_pred_range(p, self.num_classes)
        counts = torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2)
        counts = counts.view(self.num_classes, self.num_classes)
        if self._matrix is None:
            self._matrix = counts.clone()
        else:
            self._matrix = _writable(self._matrix)
            self._matrix += counts.to(self._matrix.device)
        return counts

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (every rank must call it); no-op without torch.distributed."""
        self._matrix = _writable(self.matrix)
        all_reduce_(self._matrix)

    def compute(self) -> SegmentationMetrics:
        return metrics_from_confusion(self.matrix)


class BoundaryIoU:
    """Streaming per-class Boundary IoU (Cheng et al. 2021) summed over a dataset.

    For each image and each class c present in its ground truth or prediction: G = (target == c), P =
    (pred == c), both restricted to scored pixels; bands G_d = `mask_boundary(G, d)`, P_d likewise with
    d = `boundary_width(H, W, dilation_ratio)`; intersection |G_d & P_d| and union |G_d | P_d| are added to
    per-class int64 totals. Restricting P to scored pixels treats ignored regions (e.g. VOC's void outlines)
    as unknown for both masks, so a prediction that is right on every scored pixel scores exactly 1.
    Classes are processed together as one-hot (K, H, W) stacks, K chosen so that K * H * W stays within
    `chunk_elements`.
    """

    def __init__(
        self,
        num_classes: int,
        dilation_ratio: float = 0.02,
        ignore_index: int = IGNORE_INDEX,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        boundary_width(1, 1, dilation_ratio)  # validates the ratio
        self.num_classes = num_classes
        self.dilation_ratio = dilation_ratio
        self.ignore_index = ignore_index
        self.chunk_elements = chunk_elements
        self._state: Tensor | None = None  # (2, C): row 0 intersections, row 1 unions

    @property
    def state(self) -> Tensor:
        """(2, C) int64: summed band intersections (row 0) and unions (row 1) per class."""
        if self._state is None:
            self._state = torch.zeros(2, self.num_classes, dtype=torch.int64)
        return self._state

    def update(self, pred: Tensor, target: Tensor) -> Tensor:
        """Add integer class maps `pred`, `target` of shape (H, W) or (B, H, W); returns each image's band
        counts, (B, 3, C) int64 [intersection, predicted band, ground-truth band] per class."""
        pred, target = _as_batch(pred, target)
        if self._state is None:
            self._state = torch.zeros(2, self.num_classes, dtype=torch.int64, device=pred.device)
        return torch.stack([self._update_image(p, t) for p, t in zip(pred, target)])

    def _update_image(self, pred: Tensor, target: Tensor) -> Tensor:
        """Add one image; its (3, C) band counts. Union = |P_d| + |G_d| - |P_d & G_d| = |P_d | G_d|."""
        height, width = target.shape
        d = boundary_width(height, width, self.dilation_ratio)
        valid = valid_pixels(target, self.num_classes, self.ignore_index)
        _check_pred_range(pred[valid], self.num_classes)
        # Classes absent from both maps have empty bands: they add nothing, so skip them.
        present = torch.unique(torch.cat([target[valid], pred[valid]]))
        per_chunk = max(1, self.chunk_elements // max(1, height * width))
        state = self._state = _writable(self.state)
        counts = torch.zeros(3, self.num_classes, dtype=torch.int64, device=state.device)
        for classes in present.split(per_chunk):
            ids = classes.view(-1, 1, 1)
            gt_band = mask_boundary((target == ids) & valid, d)
            pred_band = mask_boundary((pred == ids) & valid, d)
            idx = classes.to(state.device)
            counts[0].index_add_(0, idx, (gt_band & pred_band).flatten(1).sum(1).to(state.device))
            counts[1].index_add_(0, idx, pred_band.flatten(1).sum(1).to(state.device))
            counts[2].index_add_(0, idx, gt_band.flatten(1).sum(1).to(state.device))
        state[0] += counts[0]
        state[1] += counts[1] + counts[2] - counts[0]
        return counts

    def all_reduce(self) -> None:
        """Sum the totals of all processes (every rank must call it); no-op without torch.distributed."""
        self._state = _writable(self.state)
        all_reduce_(self._state)

    def compute(self) -> BoundaryMetrics:
        inter, union = self.state.detach().to("cpu", torch.float64)
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64))
        return BoundaryMetrics(iou=tuple(iou.tolist()), mIoU=_nanmean(iou), dilation_ratio=self.dilation_ratio)


__all__ = [
    "SegmentationMetrics",
    "BoundaryMetrics",
    "ConfusionMatrix",
    "BoundaryIoU",
    "metrics_from_confusion",
    "class_counts",
    "mean_iou_from_counts",
    "COUNT_KINDS",
    "boundary_width",
    "mask_boundary",
    "valid_pixels",
    "all_reduce_",
]
