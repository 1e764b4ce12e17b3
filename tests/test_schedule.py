"""The poly-with-warm-up schedule against the reference formula (section 7) and the epoch length (5.3)."""

from __future__ import annotations

import pytest

from pointrend_core.config import ROWS
from pointrend_core.engine.schedule import iters_per_epoch, poly_lr

MAX_ITERS = 39_660  # VOC: 60 epochs x 661 iterations on 8 GPUs (recipe §7)


def reference_lr(cur_iter: int) -> float:
    """Reference section 7 written out with its own constants: lr 0.01, min_lr 1e-4, power 0.9, 200 warm-up
    iterations from ratio 0.1."""
    lr_poly = (1.0 - cur_iter / MAX_ITERS) ** 0.9 * (0.01 - 0.0001) + 0.0001
    if cur_iter <= 200:
        return (1.0 - (1.0 - cur_iter / 200) * (1.0 - 0.1)) * lr_poly
    return lr_poly


@pytest.mark.parametrize("iteration", [0, 1, 100, 200, 201, MAX_ITERS // 2, MAX_ITERS - 1, MAX_ITERS])
def test_poly_lr_matches_reference_formula(iteration: int) -> None:
    assert poly_lr(iteration, MAX_ITERS, 0.01) == pytest.approx(reference_lr(iteration), rel=1e-12, abs=0)


def test_poly_lr_key_values() -> None:
    # Hand-computed: iteration 0 is 0.1 x the full poly value of 0.01.
    assert poly_lr(0, MAX_ITERS, 0.01) == pytest.approx(0.001, rel=1e-12)
    # Halfway through the warm-up: factor 0.55.
    assert poly_lr(100, MAX_ITERS, 0.01) == pytest.approx(0.55 * ((1 - 100 / MAX_ITERS) ** 0.9 * 0.0099 + 1e-4))
    # End of the warm-up: the factor is exactly 1 there and poly alone afterwards (no discontinuity).
    assert poly_lr(200, MAX_ITERS, 0.01) == pytest.approx((1 - 200 / MAX_ITERS) ** 0.9 * 0.0099 + 1e-4, rel=1e-12)
    assert poly_lr(201, MAX_ITERS, 0.01) < poly_lr(200, MAX_ITERS, 0.01)
    # The floor: the last step trains just above min_lr, the end of the schedule exactly at it.
    assert 1e-4 < poly_lr(MAX_ITERS - 1, MAX_ITERS, 0.01) < 1.1e-4
    assert poly_lr(MAX_ITERS, MAX_ITERS, 0.01) == pytest.approx(1e-4, rel=1e-12)


def test_poly_lr_is_monotone_after_warmup_and_rising_during_it() -> None:
    warm = [poly_lr(i, MAX_ITERS, 0.01) for i in range(0, 201)]
    decay = [poly_lr(i, MAX_ITERS, 0.01) for i in range(200, MAX_ITERS + 1, 97)]
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_poly_lr_uses_row_settings() -> None:
    schedule = ROWS["demo"].schedule
    lr = poly_lr(
        0,
        100,
        schedule.lr,
        power=schedule.poly_power,
        min_lr=schedule.min_lr,
        warmup_iters=schedule.warmup_iters,
        warmup_ratio=schedule.warmup_ratio,
    )
    assert lr == pytest.approx(schedule.warmup_ratio * schedule.lr)
    assert poly_lr(0, 100, 0.01, warmup_iters=0) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("iteration", "max_iters"), [(-1, 10), (11, 10), (0, 0)]
)
def test_poly_lr_rejects_out_of_range(iteration: int, max_iters: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        poly_lr(iteration, max_iters, 0.01)


@pytest.mark.parametrize(
    ("num_samples", "world", "batch", "expected"),
    [
        (10_582, 8, 2, 661),  # VOC trainaug, recipe §7
        (20_210, 8, 2, 1_263),  # ADE20k
        (2_975, 8, 1, 372),  # Cityscapes
        (10, 1, 4, 2),
        (11, 2, 2, 3),  # ceil(11 / 2) = 6 per process
        (3, 1, 4, 0),
    ],
)
def test_iters_per_epoch(num_samples: int, world: int, batch: int, expected: int) -> None:
    assert iters_per_epoch(num_samples, world, batch) == expected


def test_iters_per_epoch_rejects_nonpositive() -> None:
    with pytest.raises(ValueError, match="positive"):
        iters_per_epoch(10, 0, 2)
