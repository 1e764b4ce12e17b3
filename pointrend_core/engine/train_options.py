"""`TrainOptions`: how to run a row's recipe (the recipe itself is the row): length, checkpoints, resume,
device and precision, loader workers, starting weights, logging and evaluation during training."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from pointrend_core.checks import check_counts, positive_int
from pointrend_core.engine.precision import Amp, precision_name


@dataclass(frozen=True)
class TrainOptions:
    """How to run a row's recipe (the recipe itself is the row). Paths may be str or Path."""

    max_iters: int | None = None
    """Stop after this many steps instead of `epochs * iters_per_epoch`; the poly schedule decays over it."""
    checkpoint_every: int | None = None
    """Write checkpoint_last.pth every N steps; None = once per epoch, as the reference."""
    resume: bool = False
    """Continue from out_dir/checkpoint_last.pth when it exists (a fresh start otherwise)."""
    overwrite: bool = False
    """Start afresh in a folder that holds an earlier run, deleting it; without it (or `resume`) that is refused."""
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; under torchrun CUDA means cuda:LOCAL_RANK."""
    amp: Amp = "fp32"
    """Autocast dtype: bf16 on CPU or CUDA; fp16 (with a GradScaler) on CUDA only."""
    channels_last: bool | None = None
    """Train in the channels-last memory format; None = where it is faster on this machine
    (`engine.memory_format.channels_last_by_default`). CLI: --channels-last / --no-channels-last."""
    workers: int | None = None
    """Loader workers per process; None = the row's `schedule.workers_per_process`."""
    checkpoint: str | os.PathLike | None = None
    """Initial weights for the whole model, loaded strictly (any file `load_checkpoint` accepts); ignored when
    resuming. CLI: --checkpoint."""
    init_checkpoint: str | os.PathLike | None = None
    """Initial weights from a model trained on other classes (`load_for_finetuning`: the class-dependent layers
    start afresh); ignored when resuming. CLI: --init-checkpoint."""
    pretrained_backbone: str | os.PathLike | None = None
    """ImageNet ResNet-v1c weights for the backbone (the recipe's start); ignored when resuming."""
    log_every: int = 20
    """Steps between metrics.jsonl records (each holds the mean losses of its window)."""
    evaluate: bool = False
    """Evaluate every `schedule.eval_every_epochs` epochs (into out_dir/eval/epoch_NNN) and at the end (run.json)."""
    eval_max_images: int | None = None
    progress: bool = True
    """Show the tqdm bar (rank 0)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "amp", precision_name(self.amp))  # one spelling ("none" -> "fp32")
        # The same sentences as every other entry point (checks.COUNTS knows each name's range).
        check_counts({name: getattr(self, name) for name in ("max_iters", "checkpoint_every", "log_every", "workers",
                                                             "seed")})
        positive_int("eval_max_images", self.eval_max_images, optional=True)
        if self.checkpoint is not None and self.init_checkpoint is not None:
            raise ValueError(
                "--checkpoint (every weight, strictly) and --init-checkpoint (fine-tuning: class layers start afresh) "
                "both give the starting weights; drop one of them")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in the folder and --overwrite deletes it; drop one of them")

    def to_dict(self) -> dict[str, Any]:
        """Primitive values only (paths as str), as stored in checkpoints and train.json."""
        return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in dataclasses.asdict(self).items()}
