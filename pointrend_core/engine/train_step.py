"""`train_step`: one SGD step of the recipe (forward under autocast, losses averaged over processes, backward,
optimiser step), shared by `engine.train` and `benchmarks/train.py`, so the benchmark times exactly the
trainer's step. Images (B, 3, H, W) float32 normalised, targets (B, H, W) int64 with IGNORE_INDEX, on the
model's device; B is the per-process batch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from pointrend_core.config import ScheduleConfig
from pointrend_core.engine.distributed import Processes, sum_over_processes
from pointrend_core.engine.precision import Amp, autocast


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the message names the iteration and the last good checkpoint."""

    def __init__(self, message: str, losses: Mapping[str, float] | None = None) -> None:
        super().__init__(message)
        self.losses = dict(losses or {})

    def during(self, iteration: int, epoch: int, lr: float, last_checkpoint: Path) -> NonFiniteLossError:
        """The same error, its message saying where in the run it happened and what is kept."""
        kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint.exists()
                else "no checkpoint was written yet")
        return NonFiniteLossError(
            f"non-finite loss at iteration {iteration} (epoch {epoch}, lr {lr:.3g}): "
            + ", ".join(f"{k}={v}" for k, v in self.losses.items())
            + f"; training stopped, {kept}. Lower the learning rate or check the data.", self.losses)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    images: Tensor,
    targets: Tensor,
    lr: float,
    *,
    amp: Amp = "fp32",
    processes: Processes | None = None,
    stop_requested: bool = False,
) -> tuple[dict[str, float], bool]:
    """One SGD step at `lr` on a batch already on the model's device.

    Forward under autocast (`amp`), the losses averaged over processes in one all-reduce that also carries
    every process's stop request (so all take the same NaN and stop decisions), then backward (scaled by
    `scaler` for fp16) and the optimiser step. Returns (mean value of each loss, whether any process asked to
    stop). Raises `NonFiniteLossError` before the update when a loss is NaN or inf: the weights stay as they
    were.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(images.device, amp):
        losses = model(images, targets)
    world_size = processes.world_size if processes is not None else 1
    stats = torch.stack([value.detach().float().reshape(()) for value in losses.values()]).cpu()
    stats = sum_over_processes(torch.cat([stats, torch.tensor([float(stop_requested)])]))
    values = {name: v / world_size for name, v in zip(losses, stats[:-1].tolist())}
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLossError("non-finite loss: " + ", ".join(f"{k}={v}" for k, v in values.items()), values)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
    return values, bool(stats[-1] > 0)


def recipe_optimizer(model: nn.Module, schedule: ScheduleConfig) -> torch.optim.SGD:
    """The recipe's SGD (momentum, weight decay on every parameter, as the reference), at `schedule.lr`; the
    trainer sets each step's lr. Shared with `benchmarks/train.py` so that it times the trainer's optimiser."""
    return torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum,
                           weight_decay=schedule.weight_decay)
