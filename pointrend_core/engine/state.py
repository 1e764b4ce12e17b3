"""`TrainState`: the training checkpoint's schema in one place, with saving, reading and the resumability check.

`checkpoint_last.pth` is `TrainState` stored as a plain dict of its fields (tensors, numbers, strings, lists
and dicts only), so `torch.load(weights_only=True)` reads it and `load_checkpoint` takes its `model` entry as
initial weights. Resuming from it continues the run bit for bit: the model, the optimiser, the GradScaler,
the position in the data stream, every process's torch RNG state and the seed that orders the data. No
schedule state is needed: the lr is a function of the iteration.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from pointrend_core.checkpoints import CheckpointError, read_checkpoint
from pointrend_core.engine.distributed import Processes
from pointrend_core.files import atomic_torch_save



@dataclass
class Position:
    """Where a run is: optimiser steps done, the epoch in progress and the batches of it already consumed."""

    iteration: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def advance(self, steps_per_epoch: int) -> None:
        """One step done; a full epoch starts the next one."""
        self.iteration += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def epochs(self, steps_per_epoch: int) -> float:
        """Fractional epochs done."""
        return self.epoch + self.batch_in_epoch / steps_per_epoch


@dataclass
class TrainState:
    """Everything `checkpoint_last.pth` holds. Field names are the file's keys."""

    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    """GradScaler state (fp16 on CUDA), else None."""
    iteration: int
    epoch: int
    batch_in_epoch: int
    max_iters: int
    rng_cpu: list[Tensor]
    """torch CPU RNG state of every process, by rank."""
    rng_cuda: list[Tensor] | None
    """CUDA RNG state of every process's device, by rank (None on CPU)."""
    sampler_seed: int
    """The run's seed: data order, augmentations and point sampling derive from it."""
    world_size: int
    per_process_batch: int
    row: str
    options: dict[str, Any]
    """`TrainOptions.to_dict()` of the run that wrote it."""
    wall_seconds: float
    """Training wall time of all sessions so far."""
    last_record: dict[str, Any] | None
    """The last metrics.jsonl training record (carried into train.json after a resume)."""
    recipe: dict[str, Any] | None = None
    """The row's model, data and schedule sections as trained (`records.config_json`), overrides included;
    None in checkpoints of earlier versions."""

    @property
    def position(self) -> Position:
        return Position(self.iteration, self.epoch, self.batch_in_epoch)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a plain dict of the fields, no pickled classes)."""
        # Not dataclasses.asdict: it deep-copies every tensor of the state dicts.
        return atomic_torch_save({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> TrainState:
        """Read a checkpoint written by `save`; ValueError when it lacks any field (e.g. a released model file,
        which holds weights only: it is for --checkpoint / --init-checkpoint, not for resuming)."""
        content = read_checkpoint(path)
        names = [f.name for f in dataclasses.fields(cls)]
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = sorted(set(names) - set(content) - optional)
        if missing:
            raise ValueError(f"{path} is not a training checkpoint of this trainer (missing {missing}); "
                             "use it as --checkpoint (initial weights) instead of resuming")
        return cls(**{name: content[name] for name in names if name in content})

    @classmethod
    def read_newest(cls, paths: Sequence[Path]) -> tuple[TrainState | None, Path | None, list[str]]:
        """(state, its path, why each newer one was skipped): the first of `paths` that reads as a state;
        (None, None, reasons) when none does."""
        damaged = []
        for path in paths:
            try:
                return cls.read(path), path, damaged
            except CheckpointError as error:
                damaged.append(f"{path.name}: {str(error).split(';')[0]}")
        return None, None, damaged

    def check_resumable(
        self, path: str | os.PathLike, row: str, world_size: int, per_process_batch: int,
        recipe: dict[str, Any] | None = None, max_iters: int | None = None,
    ) -> None:
        """Refuse a state that cannot continue this run exactly: another row, process count or batch, (given
        `recipe`, the row's config as `records.config_json` writes it) another training recipe, or a
        `max_iters` below the iterations it has done."""
        if max_iters is not None and max_iters < int(self.iteration):
            raise ValueError(f"--max-iters {max_iters} is below the {int(self.iteration)} iterations {path} has done; "
                             f"give --max-iters {int(self.iteration)} or more, or leave it out to continue to the "
                             "recipe's length")
        if self.row != row:
            raise ValueError(f"{path} was written for row {self.row!r}, not {row!r}")
        if int(self.world_size) != world_size or int(self.per_process_batch) != per_process_batch:
            raise ValueError(
                f"{path} was written by {self.world_size} processes x batch {self.per_process_batch}; "
                f"this run has {world_size} x {per_process_batch}. Resume with the same process count and "
                "batch size (the data order depends on them)"
            )
        changed = recipe_changes(self.recipe, recipe) if self.recipe is not None and recipe is not None else []
        if changed:
            raise ValueError(
                f"--resume: {path} was trained with "
                + "; ".join(f"{name}={_text(old)} (not {_text(new)})" for name, old, new in changed)
                + ". Drop the override that changes it (or --set it to the run's value), or start a new run "
                "(--overwrite, or another --out)")


UNCHECKED_ON_RESUME = {("data", "default_root"), ("data", "dataset"), ("data", "val_split"),
                      ("schedule", "eval_every_epochs"), ("schedule", "workers_per_process")}
"""Recipe fields a resumed run may change: where the data lives, and what does not change the training."""


def _text(value: Any) -> str:
    """A recipe value as --set writes it (tuples comma-separated)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(section.field, old value, new value) for every training field of the recipe that differs."""
    changes = []
    for section in ("model", "data", "schedule"):
        before, after = old.get(section) or {}, new.get(section) or {}
        for name in sorted(set(before) | set(after)):
            if (section, name) in UNCHECKED_ON_RESUME:
                continue
            a, b = before.get(name), after.get(name)
            if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
                changes.append((f"{section}.{name}", a, b))
    return changes


def gather_rng_states(processes: Processes) -> tuple[list[Tensor], list[Tensor] | None]:
    """Every process's torch CPU RNG state (and CUDA state of its device), gathered to all processes.
    Collective: every process must call it."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(processes.device) if processes.device.type == "cuda" else None
    if processes.world_size == 1:
        return [cpu], None if cuda is None else [cuda]
    gathered: list[Any] = [None] * processes.world_size
    dist.all_gather_object(gathered, (cpu, cuda))
    cpus = [state[0] for state in gathered]
    cudas = None if cuda is None else [state[1] for state in gathered]
    return cpus, cudas


def restore_rng_states(state: TrainState, processes: Processes) -> None:
    """Set this process's RNG states to those it had when `state` was saved."""
    torch.set_rng_state(state.rng_cpu[processes.rank])
    if processes.device.type == "cuda" and state.rng_cuda is not None:
        torch.cuda.set_rng_state(state.rng_cuda[processes.rank], processes.device)
