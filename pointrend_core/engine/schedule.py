"""The learning-rate schedule of the recipe and the length of an epoch (recipe §7, `docs/reference-recipe.md`).

Poly decay with a floor and a linear warm-up, as a pure function of the iteration: the trainer calls it
*before* every optimiser step with `iteration` counting from 0, so iteration 0 trains at
`warmup_ratio * lr_poly(0)` and the last step (`max_iters - 1`) a little above `min_lr`. Being a function of
the iteration alone, the schedule needs no state in a checkpoint: resuming at iteration k recomputes it.
"""

from __future__ import annotations

import math


def poly_lr(
    iteration: int,
    max_iters: int,
    base_lr: float,
    *,
    power: float = 0.9,
    min_lr: float = 1e-4,
    warmup_iters: int = 200,
    warmup_ratio: float = 0.1,
) -> float:
    """Learning rate for the step taken at `iteration` (0-based) of a `max_iters`-step run.

    lr_poly = (1 - iteration / max_iters) ** power * (base_lr - min_lr) + min_lr, and while
    iteration <= warmup_iters it is scaled by 1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio),
    rising linearly from `warmup_ratio` at 0 to 1 at `warmup_iters` (the reference's inclusive bound;
    the factor is exactly 1 at `warmup_iters`). `warmup_iters=0` disables the warm-up.
    """
    if max_iters <= 0:
        raise ValueError(f"max_iters must be positive, got {max_iters}")
    if not 0 <= iteration <= max_iters:
        raise ValueError(f"iteration must be in [0, {max_iters}], got {iteration}")
    lr = (1 - iteration / max_iters) ** power * (base_lr - min_lr) + min_lr
    if warmup_iters > 0 and iteration <= warmup_iters:
        lr *= 1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio)
    return lr


def iters_per_epoch(num_samples: int, world_size: int, per_process_batch: int) -> int:
    """Optimiser steps in one epoch: floor(ceil(N / world_size) / per_process_batch).

    A DistributedSampler (padding, not dropping) gives every process ceil(N / world_size) samples and the
    loader drops the last incomplete batch, as the reference's loader does (drop_last=True).
    """
    if num_samples <= 0 or world_size <= 0 or per_process_batch <= 0:
        raise ValueError(
            f"num_samples, world_size and per_process_batch must be positive, got "
            f"{num_samples}, {world_size}, {per_process_batch}"
        )
    return math.ceil(num_samples / world_size) // per_process_batch


__all__ = ["poly_lr", "iters_per_epoch"]
