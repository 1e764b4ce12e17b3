"""Confusion-matrix metrics and Boundary IoU on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pointrend_core.config import IGNORE_INDEX
from pointrend_core.engine.metrics import (
    COUNT_KINDS,
    BoundaryIoU,
    ConfusionMatrix,
    boundary_width,
    class_counts,
    mask_boundary,
    mean_iou_from_counts,
    metrics_from_confusion,
)

pytestmark = pytest.mark.numerics  # float results on this CPU's kernels: CI runs these twice (.ci/run)

X = IGNORE_INDEX

# 4x4 example, 3 classes, two ignored pixels (whose predictions must not count).
TARGET = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, X, 1], [2, 2, 2, X]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 2], [2, 0, 0, 1], [2, 2, 2, 0]])
# Counted by hand, rows = ground truth, columns = prediction.
EXPECTED_CM = torch.tensor([[3, 1, 0], [0, 4, 1], [1, 0, 4]])


def test_confusion_matrix_hand_example() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert torch.equal(cm.matrix, EXPECTED_CM)
    assert cm.matrix.dtype == torch.int64
    m = cm.compute()
    assert m.aAcc == pytest.approx(11 / 14)
    assert m.acc == pytest.approx((3 / 4, 4 / 5, 4 / 5))
    assert m.mAcc == pytest.approx((3 / 4 + 4 / 5 + 4 / 5) / 3)
    assert m.iou == pytest.approx((3 / 5, 4 / 6, 4 / 6))
    assert m.mIoU == pytest.approx(29 / 45)


def test_ignored_pixels_are_not_counted() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert int(cm.matrix.sum()) == 14  # 16 pixels, 2 ignored
    # Changing the predictions under the ignored pixels changes nothing.
    other = PRED.clone()
    other[2, 2], other[3, 3] = 2, 1
    cm2 = ConfusionMatrix(3)
    cm2.update(other, TARGET)
    assert torch.equal(cm2.matrix, EXPECTED_CM)


def test_out_of_range_targets_are_ignored_like_the_reference() -> None:
    target = TARGET.clone()
    target[0, 0] = 7  # recipe §8: gt outside [0, C) is ignored
    cm = ConfusionMatrix(3)
    cm.update(PRED, target)
    assert int(cm.matrix.sum()) == 13
    assert int(cm.matrix[0, 0]) == 2


def test_class_absent_from_gt_and_pred_is_skipped() -> None:
    cm = ConfusionMatrix(4)  # class 3 appears nowhere
    cm.update(PRED, TARGET)
    m = cm.compute()
    assert math.isnan(m.iou[3]) and math.isnan(m.acc[3])
    assert m.mIoU == pytest.approx(29 / 45)
    assert m.mAcc == pytest.approx((3 / 4 + 4 / 5 + 4 / 5) / 3)


def test_predicted_but_absent_class_has_zero_iou_and_nan_acc() -> None:
    pred = PRED.clone()
    pred[0, 0] = 3  # a false positive of class 3, absent from the ground truth
    m = ConfusionMatrix(4)
    m.update(pred, TARGET)
    result = m.compute()
    assert result.iou[3] == 0.0 and math.isnan(result.acc[3])
    assert result.mIoU == pytest.approx((2 / 5 + 4 / 6 + 4 / 6 + 0) / 4)


def test_batch_update_and_the_sum_of_two_halves_equal_the_whole() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 9, 11), generator=g)
    target[target == 4] = X
    pred = torch.randint(0, 4, (6, 9, 11), generator=g)
    whole = ConfusionMatrix(4)
    whole.update(pred, target)
    first, second = ConfusionMatrix(4), ConfusionMatrix(4)
    for i in range(6):
        (first if i < 3 else second).update(pred[i], target[i])
    # all_reduce sums the states of the processes; two halves summed must give the whole.
    assert torch.equal(first.matrix + second.matrix, whole.matrix)


def test_empty() -> None:
    cm = ConfusionMatrix(3)
    m = cm.compute()
    assert math.isnan(m.mIoU) and math.isnan(m.aAcc) and all(math.isnan(v) for v in m.iou)
    assert int(cm.matrix.sum()) == 0


def test_bad_inputs_give_clear_errors() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\) on scored pixels, got range \[5, 5\]"):
        cm.update(torch.full((4, 4), 5), TARGET)
    with pytest.raises(TypeError, match="integer class map.*argmax"):
        cm.update(PRED.float(), TARGET)
    with pytest.raises(ValueError, match=r"prediction shape \(4, 3\) differs from target shape \(4, 4\)"):
        cm.update(PRED[:, :3], TARGET)


def test_metrics_from_confusion_directly() -> None:
    m = metrics_from_confusion(torch.tensor([[2, 0], [2, 0]]))
    assert m.iou == pytest.approx((0.5, 0.0))
    assert m.acc == pytest.approx((1.0, 0.0))
    assert m.aAcc == pytest.approx(0.5)


# --- Boundary IoU -----------------------------------------------------------------------------------


def test_boundary_width_from_ratio() -> None:
    assert boundary_width(100, 100, 0.02) == 3  # 0.02 * 141.42 = 2.83
    assert boundary_width(512, 512, 0.02) == 14  # 14.48
    assert boundary_width(1024, 2048, 0.02) == 46  # 45.79
    assert boundary_width(10, 10, 0.02) == 1  # 0.28 rounds to 0, clamped to 1
    assert boundary_width(100, 100, 0.05) == 7  # 7.07
    with pytest.raises(ValueError, match="dilation_ratio must be > 0"):
        boundary_width(10, 10, 0.0)


def test_mask_boundary_is_the_inner_band_of_width_d() -> None:
    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True  # a 20x20 square away from the border
    masks[1] = True  # the whole image: the border counts as background
    band = mask_boundary(masks, 3)
    expected0 = masks[0].clone()
    expected0[13:27, 13:27] = False
    assert torch.equal(band[0], expected0)
    assert int(band[0].sum()) == 20 * 20 - 14 * 14
    expected1 = torch.ones(40, 40, dtype=torch.bool)
    expected1[3:37, 3:37] = False
    assert torch.equal(band[1], expected1)


def _reference_band(mask: torch.Tensor, d: int) -> torch.Tensor:
    """The boundary-iou-api procedure re-expressed in torch: one-pixel zero padding, then d erosions
    with a 3x3 kernel (max_pool2d's -inf padding makes the far outside foreground, as cv2's default
    erode border does)."""
    x = F.pad(mask.float()[None, None], (1, 1, 1, 1), value=0.0)
    for _ in range(d):
        x = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return mask & ~x[0, 0, 1:-1, 1:-1].bool()


@pytest.mark.parametrize("d", [1, 2, 5])
def test_mask_boundary_matches_iterated_3x3_erosion(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    blobs = F.interpolate(torch.rand(4, 1, 6, 7, generator=g), size=(37, 45), mode="bilinear") > 0.5
    band = mask_boundary(blobs[:, 0], d)
    for k in range(4):
        assert torch.equal(band[k], _reference_band(blobs[k, 0], d))


def _square_case() -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(10, 10, dtype=torch.long)
    target[3:7, 3:7] = 1
    pred = torch.zeros(10, 10, dtype=torch.long)
    pred[3:7, 4:8] = 1  # shifted right by one pixel
    return pred, target


def test_boundary_iou_exact_square_is_one() -> None:
    _, target = _square_case()
    b = BoundaryIoU(2)
    b.update(target, target)
    assert b.compute().iou == (1.0, 1.0)
    assert b.compute().mIoU == 1.0


def test_boundary_iou_square_shifted_by_one_pixel() -> None:
    # 10x10 image: d = max(1, round(0.02 * 14.1)) = 1.
    # Class 1: both bands are 12-pixel rings (4x4 minus the 2x2 inside); they share 3 pixels on the top
    #   and 3 on the bottom row -> 6 / (12 + 12 - 6) = 1/3.
    # Class 0: each band is the 36-pixel image border plus the 20-pixel ring around its square; the
    #   borders coincide and the rings share 5 pixels on each of 2 rows -> 46 / (56 + 56 - 46) = 23/33.
    pred, target = _square_case()
    b = BoundaryIoU(2)
    b.update(pred, target)
    assert torch.equal(b.state, torch.tensor([[46, 6], [66, 18]]))
    result = b.compute()
    assert result.iou == pytest.approx((23 / 33, 1 / 3))
    assert result.mIoU == pytest.approx(17 / 33)


def test_boundary_iou_ignores_void_pixels_in_both_masks() -> None:
    pred, target = _square_case()
    target[0:2, :] = X  # a void strip
    pred_right = target.clone()
    pred_right[0:2, :] = 1  # garbage under the void, including a class seen nowhere else there
    b = BoundaryIoU(3)
    b.update(pred_right, target)
    result = b.compute()
    assert result.iou[:2] == (1.0, 1.0)
    assert math.isnan(result.iou[2])  # class 2 absent everywhere: skipped
    assert result.mIoU == 1.0
    # Only scored pixels are ever counted.
    assert int(b.state[1].sum()) <= int((target != X).sum()) * 2


def test_boundary_iou_chunking_batches_and_merge_agree() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 6, (4, 3, 4), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    target[:, :5, :5] = X
    pred = torch.roll(target.clamp(max=5), shifts=(2, -3), dims=(1, 2))
    whole = BoundaryIoU(6)
    whole.update(pred, target)
    one_class_per_chunk = BoundaryIoU(6, chunk_elements=1)
    half_a, half_b = BoundaryIoU(6), BoundaryIoU(6)
    for i in range(4):
        one_class_per_chunk.update(pred[i], target[i])
        (half_a if i % 2 else half_b).update(pred[i], target[i])
    assert torch.equal(one_class_per_chunk.state, whole.state)
    assert torch.equal(half_a.state + half_b.state, whole.state)
    assert 0 < whole.compute().mIoU < 1


def test_boundary_iou_dilation_ratio_changes_the_band() -> None:
    pred, target = _square_case()
    big = torch.zeros(100, 100, dtype=torch.long)
    big[30:70, 30:70] = 1
    shifted = torch.roll(big, 1, dims=1)
    narrow, wide = BoundaryIoU(2, dilation_ratio=0.0071), BoundaryIoU(2, dilation_ratio=0.05)
    narrow.update(shifted, big)  # d = 1
    wide.update(shifted, big)  # d = 7
    # Class 1, d = 1: rings of 156 pixels; overlap = 2 rows x 39 + 0 -> 78 / (312 - 78).
    assert narrow.compute().iou[1] == pytest.approx(78 / 234)
    assert wide.compute().iou[1] > narrow.compute().iou[1]


def test_state_created_under_inference_mode_stays_usable() -> None:
    cm, b = ConfusionMatrix(3), BoundaryIoU(3)
    with torch.inference_mode():
        cm.update(PRED, TARGET)
        b.update(PRED, TARGET)
    cm.update(PRED, TARGET)  # in-place outside inference mode
    b.update(PRED, TARGET)
    cm.all_reduce()  # no process group: a no-op
    b.all_reduce()
    assert torch.equal(cm.matrix, 2 * EXPECTED_CM)
    assert b.compute().mIoU > 0


# --- per-image counts (engine.intervals resamples them) ---------------------------------------------------


def _random_maps(seed: int, count: int, num_classes: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Blocky label maps with ignored pixels, and predictions that agree with them on most pixels."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for _ in range(count):
        target = F.interpolate(torch.randint(0, num_classes, (1, 1, 4, 5), generator=g).float(), size=(16, 20))
        target = target[0, 0].long()
        target[torch.rand(16, 20, generator=g) < 0.05] = X
        pred = torch.where(torch.rand(16, 20, generator=g) < 0.8, target.clamp(max=num_classes - 1),
                           torch.randint(0, num_classes, (16, 20), generator=g))
        maps.append((pred, target))
    return maps


def test_class_counts_of_the_hand_example() -> None:
    counts = class_counts(EXPECTED_CM)
    assert counts.tolist() == [[3, 4, 4], [4, 5, 5], [4, 5, 5]]  # intersection, prediction, ground truth
    assert COUNT_KINDS == ("intersection", "prediction", "ground_truth")
    cm = ConfusionMatrix(3)
    assert torch.equal(cm.update(PRED, TARGET), EXPECTED_CM)  # update returns what it added
    assert mean_iou_from_counts(counts) == metrics_from_confusion(EXPECTED_CM).mIoU


def test_summed_per_image_counts_reproduce_the_dataset_metrics_exactly() -> None:
    confusion, boundary = ConfusionMatrix(4), BoundaryIoU(4, dilation_ratio=0.1)
    full, band = [], []
    for pred, target in _random_maps(0, 7):
        full.append(class_counts(confusion.update(pred, target)))
        band.append(boundary.update(pred, target))
    assert band[0].shape == (1, 3, 4) and band[0].dtype == torch.int64
    full_sum, band_sum = torch.stack(full).sum(0), torch.cat(band).sum(0)
    # Exact: both sides are the same float64 arithmetic on the same integer totals.
    assert mean_iou_from_counts(full_sum) == confusion.compute().mIoU
    assert mean_iou_from_counts(band_sum) == boundary.compute().mIoU
    inter, pred_band, gt_band = band_sum
    assert torch.equal(boundary.state[0], inter) and torch.equal(boundary.state[1], pred_band + gt_band - inter)
    # A perfect prediction: the bands coincide, so intersection = predicted band = ground-truth band.
    target = _random_maps(1, 1)[0][1]
    perfect = BoundaryIoU(4).update(target.clamp(0, 3), target)[0]
    assert torch.equal(perfect[0], perfect[1]) and torch.equal(perfect[1], perfect[2]) and perfect.sum() > 0


def test_mean_iou_from_counts_skips_classes_without_union() -> None:
    counts = torch.tensor([[2, 0, 0], [4, 0, 1], [2, 0, 0]])  # class 1 nowhere; class 2 predicted, never right
    assert mean_iou_from_counts(counts) == pytest.approx((2 / 4 + 0.0) / 2)
    assert math.isnan(mean_iou_from_counts(torch.zeros(3, 2, dtype=torch.int64)))
