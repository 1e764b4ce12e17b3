"""The training recipe of a table row (`docs/reference-recipe.md` §6 and §7): SGD with poly decay and warm-up,
single-process or distributed, resumable bit for bit.

Owns: `TrainOptions`, `train(row, data_root, out_dir, options) -> final checkpoint path`, and what makes a run
reproducible and restartable.

- Optimiser: SGD (momentum 0.9, weight decay on every parameter: one parameter group), lr from
  `schedule.poly_lr`, set before every step. `max_iters = epochs * iters_per_epoch` unless overridden.
- Processes: under `torchrun` (WORLD_SIZE > 1) one process per device, DDP, NCCL on CUDA and gloo on CPU,
  SyncBatchNorm (CUDA) or `CPUSyncBatchNorm` (CPU, where torch's SyncBatchNorm refuses to run); the total
  batch `schedule.batch_size` is split evenly. A single process keeps plain BatchNorm.
- Data order: `EpochSampler` = DistributedSampler(shuffle, seed, set_epoch) permutation, able to start in the
  middle of an epoch. Augmentation randomness is seeded per sample from (seed, epoch, index)
  (`SeededSamples`), so neither the number of loader workers nor a resume changes the data stream.
- Checkpoints (`checkpoint_last.pth` every `checkpoint_every` steps and at the end, then a copy as
  `checkpoint_final.pth`), atomic, loadable with `torch.load(weights_only=True)`: model, optimizer, GradScaler,
  iteration, epoch, batch position in the epoch, every process's torch RNG states, sampler seed, row name,
  options. `resume=True` continues from `checkpoint_last.pth` exactly (no schedule state is needed: the lr is a
  function of the iteration). SIGTERM finishes the current step, writes `checkpoint_last.pth` and raises
  `TrainingInterrupted`; a non-finite loss raises `NonFiniteLossError` before the step, leaving the last good
  checkpoint untouched.
- Logs: a tqdm bar (rank 0); `progress.json` after every step (`engine.progress`); `metrics.jsonl`, one JSON
  object per log step (iteration, fractional epoch, lr, mean losses of the window, cumulative seconds) and,
  with `evaluate`, one per evaluation (iteration, epoch, mIoU, coarse_mIoU, boundary_mIoU in %); `train.json`
  at the end (what ran, where, how fast, final losses).
- Evaluation (`evaluate=True`, off by default): `evaluate_run` every `schedule.eval_every_epochs` epochs into
  out_dir/eval/epoch_NNN/run.json and at the end into out_dir/run.json (which then includes train.json).

Conventions: "iteration" counts completed optimiser steps (the step taken at iteration i uses `poly_lr(i)`,
i from 0); images (B, 3, H, W) float32 normalised, targets (B, H, W) int64 with IGNORE_INDEX; B is the
per-process batch. Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from pointrend_core.config import RowConfig
from pointrend_core.engine.progress import PROGRESS_FILE, TrainProgress
from pointrend_core.engine.schedule import iters_per_epoch, poly_lr
from pointrend_core.files import atomic_torch_save, atomic_write, atomic_write_json, atomic_write_text

LAST_CHECKPOINT = "checkpoint_last.pth"
FINAL_CHECKPOINT = "checkpoint_final.pth"
METRICS_FILE = "metrics.jsonl"
TRAIN_FILE = "train.json"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainOptions:
    """How to run a row's recipe (the recipe itself is the row). Paths may be str or Path."""

    max_iters: int | None = None
    """Stop after this many steps instead of `epochs * iters_per_epoch`; the poly schedule decays over it."""
    checkpoint_every: int | None = None
    """Write checkpoint_last.pth every N steps; None = once per epoch, as the reference."""
    resume: bool = False
    """Continue from out_dir/checkpoint_last.pth when it exists (a fresh start otherwise)."""
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; under torchrun CUDA means cuda:LOCAL_RANK."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    """Autocast dtype: bf16 on CPU or CUDA; fp16 (with a GradScaler) on CUDA only."""
    channels_last: bool = False
    workers: int | None = None
    """Loader workers per process; None = the row's `schedule.workers_per_process`."""
    init_checkpoint: str | os.PathLike | None = None
    """Initial weights for the whole model (any file `load_checkpoint` accepts); ignored when resuming."""
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
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        for name in ("max_iters", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """Primitive values only (paths as str), as stored in checkpoints and train.json."""
        return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in dataclasses.asdict(self).items()}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the message names the iteration and the last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM stopped the run after writing checkpoint_last.pth; `resume=True` continues it."""


# --------------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: rank, world size and device. world_size 1 = no process group."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda if available else cpu; a bare "cuda" becomes cuda:local_rank (one device per process)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:  # torch lists every device type it knows; say which ones are meant here
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return device


def start_processes(device_name: str) -> Processes:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return Processes(rank, world_size, device)


def _sum_over_processes(values: Tensor, processes: Processes) -> Tensor:
    """Element-wise sum of a 1-D float tensor over processes (identity in a single process)."""
    if processes.world_size > 1:
        values = values.to(processes.device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(values)
    return values.cpu()


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is the all_reduce(SUM) of the incoming gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with statistics over the batch of all processes, for CPU tensors (gloo).

    torch.nn.SyncBatchNorm refuses CPU inputs; this computes the same thing with two differentiable
    all-reduces per layer (sum and count, then the centred sum of squares: two passes for the variance,
    avoiding E[x^2] - E[x]^2 cancellation). Like SyncBatchNorm the backward sums gradients of the statistics
    over processes, which with DDP's gradient averaging gives the gradient of the mean loss. Inputs
    (B, C, *) of any rank >= 2; math in float32 (under autocast too). Outside training, or with a single
    process, it is plain BatchNorm. Same parameters and buffers as BatchNorm, so state dicts are identical.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        local_count = x.new_tensor([x.numel() / x.shape[1]])
        sums = _SumOverProcesses.apply(torch.cat([x.sum(dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _SumOverProcesses.apply((centred * centred).sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach().to(self.running_var.dtype), alpha=momentum)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """Every BatchNorm*d of `module` replaced by a synchronised one (SyncBatchNorm on CUDA, CPUSyncBatchNorm on
    CPU), weights and buffers kept. Returns (module, number of layers converted)."""
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return module, sum(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
    return _convert_cpu(module), sum(isinstance(m, CPUSyncBatchNorm) for m in module.modules())


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        synced = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module._modules[name] = _convert_cpu(child)
    return module


# --------------------------------------------------------------------------------------------------
# Data: order and augmentation randomness


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for the augmentation of sample `index` in `epoch`, well mixed (numpy SeedSequence)."""
    return _derived_seed(seed, (0, epoch, index))


def process_seed(seed: int, rank: int) -> int:
    """The seed of process `rank`'s training random stream (point sampling), distinct from every sample seed."""
    return _derived_seed(seed, (1, rank))


def _derived_seed(seed: int, key: tuple[int, ...]) -> int:
    high, low = np.random.SeedSequence(seed, spawn_key=key).generate_state(2, np.uint32)
    return (int(high) << 32) | int(low)


@contextmanager
def seeded_host_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, `random` and numpy's global generator for the block, then restore them.

    Only the CPU generator is touched (not CUDA ones), so data loading in the main process (workers=0) leaves
    the model's random stream exactly as it was.
    """
    torch_state, random_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(random_state)
        np.random.set_state(numpy_state)


class SeededSamples(Dataset):
    """`dataset` indexed by (epoch, index) keys: sample `index` augmented with its own seeded randomness.

    Returns plain tensors (image (3, h, w) float32, target (h, w) int64), whatever tv_tensor types the
    transforms produce.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = key
        with seeded_host_rngs(sample_seed(self.seed, epoch, index)):
            image, target = self.dataset[index]
        return torch.as_tensor(image).as_subclass(Tensor), torch.as_tensor(target).as_subclass(Tensor).long()


class EpochSampler(Sampler[tuple[int, int]]):
    """(epoch, index) keys of one process: DistributedSampler's shuffled share of `epoch`, from sample `skip`.

    Same permutation as `DistributedSampler(shuffle=True, seed=seed, drop_last=False)` after `set_epoch`
    (padded to a multiple of the world size); `skip` drops the samples already consumed before a resume.
    """

    def __init__(self, dataset: Dataset, world_size: int, rank: int, seed: int) -> None:
        self._inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self._inner.set_epoch(epoch)

    def __len__(self) -> int:
        return max(0, len(self._inner) - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in list(self._inner)[self.skip :]:
            yield self.epoch, index


# --------------------------------------------------------------------------------------------------
# Checkpoints


def _rng_states(processes: Processes) -> tuple[list[Tensor], list[Tensor] | None]:
    """Every process's torch CPU RNG state (and CUDA state of its device), gathered to all processes."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(processes.device) if processes.device.type == "cuda" else None
    if processes.world_size == 1:
        return [cpu], None if cuda is None else [cuda]
    gathered: list[Any] = [None] * processes.world_size
    dist.all_gather_object(gathered, (cpu, cuda))
    cpus = [state[0] for state in gathered]
    cudas = None if cuda is None else [state[1] for state in gathered]
    return cpus, cudas


def _restore_rng(checkpoint: Mapping[str, Any], processes: Processes) -> None:
    torch.set_rng_state(checkpoint["rng_cpu"][processes.rank])
    if processes.device.type == "cuda" and checkpoint.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(checkpoint["rng_cuda"][processes.rank], processes.device)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------------
# Training


@dataclass
class _Position:
    """Where the run is: steps done, the epoch in progress and the batches of it already consumed."""

    iteration: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class _StopOnSigterm:
    """Turns SIGTERM into a flag the loop checks once per step (main thread only; restored on exit)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_StopOnSigterm":
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _autocast(device: torch.device, amp: str) -> Any:
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _log(processes: Processes, message: str) -> None:
    if processes.is_main:
        tqdm.write(message, file=sys.stderr)


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete half-written files a killed run left behind (atomic writes name them `.<name>.*.tmp`)."""
    for name in (LAST_CHECKPOINT, FINAL_CHECKPOINT, METRICS_FILE, TRAIN_FILE, PROGRESS_FILE):
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def _keep_metrics_up_to(path: Path, iteration: int) -> None:
    """Drop metrics.jsonl records written after the checkpoint being resumed (they will be redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["iteration"] <= iteration:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a kill
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(
    row: RowConfig,
    data_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    options: TrainOptions = TrainOptions(),
    *,
    model: nn.Module | None = None,
) -> Path:
    """Train `row` on its training split under `data_root` (None: `row.data.default_root`) into `out_dir`.

    `model` (optional) replaces `build_model(row)`: any module whose `model(images, targets)` returns a dict
    of scalar losses. Returns the path of `checkpoint_final.pth`. Raises `NonFiniteLossError` when the loss
    diverges and `TrainingInterrupted` after a SIGTERM (both leave a valid checkpoint_last.pth if one was
    written). Under torchrun, call it in every process.
    """
    processes = start_processes(options.device)
    try:
        return _train(row, data_root, Path(out_dir), options, processes, model)
    finally:
        if dist.is_initialized() and processes.world_size > 1:
            dist.destroy_process_group()


@dataclass
class _Run:
    """What the loop needs besides the model: fixed settings of this run and its mutable position."""

    row: RowConfig
    options: TrainOptions
    processes: Processes
    out_dir: Path
    seed: int
    per_process_batch: int
    steps_per_epoch: int
    max_iters: int
    checkpoint_every: int
    position: _Position
    wall_before: float = 0.0
    """Wall seconds of earlier sessions (before a resume)."""
    last_record: dict[str, Any] | None = None
    synced_layers: int = 0

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST_CHECKPOINT

    @property
    def final_path(self) -> Path:
        return self.out_dir / FINAL_CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / METRICS_FILE


def _train(
    row: RowConfig,
    data_root: str | os.PathLike | None,
    out_dir: Path,
    options: TrainOptions,
    processes: Processes,
    model: nn.Module | None,
) -> Path:
    from pointrend_core.data.transforms import train_transforms

    if options.amp == "fp16" and processes.device.type != "cuda":
        raise ValueError("amp 'fp16' needs CUDA (it uses a GradScaler); on CPU use 'bf16' or 'none'")
    per_process_batch = _per_process_batch(row, processes)
    checkpoint = _resume_checkpoint(out_dir, row, options, processes, per_process_batch)
    # A resumed run keeps its seed: data order and augmentations depend on it.
    seed = int(checkpoint["sampler_seed"]) if checkpoint is not None else options.seed

    root = Path(data_root if data_root is not None else row.data.default_root)
    dataset = row.data.dataset(root, row.data.train_split, transforms=train_transforms(row.data))
    steps_per_epoch = iters_per_epoch(len(dataset), processes.world_size, per_process_batch)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{root} split {row.data.train_split!r} has {len(dataset)} images: fewer than one batch of "
            f"{per_process_batch} per process over {processes.world_size} processes"
        )
    run = _Run(
        row, options, processes, out_dir, seed, per_process_batch, steps_per_epoch,
        max_iters=options.max_iters or row.schedule.epochs * steps_per_epoch,
        checkpoint_every=options.checkpoint_every or steps_per_epoch,
        position=_Position(),
    )

    torch.manual_seed(seed)  # identical initial weights in every process
    model, run.synced_layers = _prepare_model(model, row, options, processes, out_dir if checkpoint else None)
    schedule = row.schedule
    optimizer = torch.optim.SGD(
        model.parameters(), lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda") if options.amp == "fp16" else None
    if processes.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out_dir)
    if checkpoint is not None:
        _restore(run, checkpoint, optimizer, scaler)
    else:
        torch.manual_seed(process_seed(seed, processes.rank))  # each process its own point-sampling stream
        _start_fresh(run)
    loader, sampler = _make_loader(dataset, run)
    _log(
        processes,
        f"train {row.name}: {run.max_iters} iterations ({run.max_iters / steps_per_epoch:.2f} epochs of "
        f"{steps_per_epoch}), batch {schedule.batch_size} = {processes.world_size} x {per_process_batch}, "
        f"device {processes.device}, amp {options.amp}"
        + (f", {run.synced_layers} synchronised BatchNorm layers" if run.synced_layers else ""),
    )

    start_iteration, session_start = run.position.iteration, time.perf_counter()
    try:
        _loop(run, model, optimizer, scaler, loader, sampler, root, session_start)
    except Exception as error:
        message = _worker_error_message(error)
        if message is None:
            raise
        raise type(error)(message) from None  # what the worker said, as with workers=0
    finally:
        _stop_workers(loader)

    if processes.is_main:
        _copy_file(run.last_path, run.final_path)
        session = time.perf_counter() - session_start
        atomic_write_json(out_dir / TRAIN_FILE, _summary(run, session, start_iteration))
    if processes.world_size > 1:
        dist.barrier()  # the final checkpoint exists for every process before anyone evaluates it
    if options.evaluate:
        _evaluate(run, root, out_dir, run.final_path, model)
    return run.final_path


def _per_process_batch(row: RowConfig, processes: Processes) -> int:
    if row.schedule.batch_size % processes.world_size:
        raise ValueError(
            f"total batch size {row.schedule.batch_size} of row {row.name!r} is not divisible by the "
            f"{processes.world_size} processes; choose a batch size that is a multiple of the process count"
        )
    return row.schedule.batch_size // processes.world_size


def _resume_checkpoint(
    out_dir: Path, row: RowConfig, options: TrainOptions, processes: Processes, per_process_batch: int
) -> dict[str, Any] | None:
    """The content of out_dir/checkpoint_last.pth when resuming (None for a fresh start)."""
    from pointrend_core.checkpoints import read_checkpoint

    path = out_dir / LAST_CHECKPOINT
    if not options.resume:
        return None
    if not path.exists():
        _log(processes, f"resume: no {path}, starting a new run")
        return None
    checkpoint = read_checkpoint(path)
    _check_resumable(checkpoint, path, row, processes, per_process_batch)
    if int(checkpoint["sampler_seed"]) != options.seed:
        _log(processes, f"resume: using the checkpoint's seed {checkpoint['sampler_seed']} (options say {options.seed})")
    return checkpoint


def _prepare_model(
    model: nn.Module | None, row: RowConfig, options: TrainOptions, processes: Processes, resume_dir: Path | None
) -> tuple[nn.Module, int]:
    """The model with its starting weights, on the device, in training mode; synchronised BatchNorm and DDP
    when there are several processes. Returns (model, number of synchronised BatchNorm layers)."""
    from pointrend_core.checkpoints import load_checkpoint

    if model is None:
        from pointrend_core.model import build_model

        model = build_model(row)
    if resume_dir is not None:
        load_checkpoint(model, resume_dir / LAST_CHECKPOINT)
    else:
        for path in (options.pretrained_backbone, options.init_checkpoint):
            if path is not None:
                load_checkpoint(model, path)
        if options.pretrained_backbone is None and options.init_checkpoint is None and row.pretrained_backbone:
            _log(processes, f"note: the recipe starts from ImageNet weights ({row.pretrained_backbone}); "
                            "training from random initialisation (pass --pretrained-backbone FILE)")
    device = processes.device
    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the reference; fp32 convolutions without TF32
        torch.backends.cudnn.allow_tf32 = False
    model.train()
    if processes.world_size == 1:
        return model, 0
    model, synced = convert_sync_batchnorm(model, device)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return ddp, synced


def _restore(run: _Run, checkpoint: Mapping[str, Any], optimizer: torch.optim.Optimizer, scaler: Any) -> None:
    """Optimizer, scaler, position, RNG states and the metrics log as they were at the checkpoint."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    run.position = _Position(int(checkpoint["iteration"]), int(checkpoint["epoch"]), int(checkpoint["batch_in_epoch"]))
    run.wall_before = float(checkpoint["wall_seconds"])
    run.last_record = checkpoint.get("last_record")
    if int(checkpoint["max_iters"]) != run.max_iters:
        _log(run.processes, f"resume: max_iters {run.max_iters} differs from the checkpoint's "
                            f"{checkpoint['max_iters']}; the lr schedule changes from here on")
    _restore_rng(checkpoint, run.processes)
    if run.processes.is_main:
        _keep_metrics_up_to(run.metrics_path, run.position.iteration)
    _log(run.processes, f"resume: {run.last_path} at iteration {run.position.iteration} (epoch "
                        f"{run.position.epoch}, batch {run.position.batch_in_epoch} of {run.steps_per_epoch})")


def _start_fresh(run: _Run) -> None:
    if not run.processes.is_main:
        return
    if run.last_path.exists() or run.metrics_path.exists():
        _log(run.processes, f"note: {run.out_dir} holds an earlier run; it is overwritten "
                            "(pass --resume to continue it)")
    atomic_write_text(run.metrics_path, "")
    run.final_path.unlink(missing_ok=True)
    (run.out_dir / TRAIN_FILE).unlink(missing_ok=True)


def _ignore_sigterm(worker_id: int) -> None:
    # A SIGTERM sent to the whole process group must not kill loader workers mid-step: the main process
    # finishes the step, checkpoints, and shuts them down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _worker_error_message(error: BaseException) -> str | None:
    """The original message of an exception raised in a loader worker, or None for any other exception.

    torch re-raises a worker's exception in the main process with the worker's whole traceback as its message
    ("Caught ValueError in DataLoader worker process 0. Original Traceback ..."); the last line holds the
    original "ValueError: <message>".
    """
    text = str(error)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return None
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def _stop_workers(loader: DataLoader) -> None:
    """End the loader's worker processes now, whatever state they are in.

    They ignore SIGTERM (`_ignore_sigterm`), and torch's own shutdown ends a straggler with SIGTERM: after an
    error (a bad image in a worker, a NaN) a worker blocked on its full result queue would outlive the run and
    the interpreter would wait for it at exit forever. The workers hold nothing worth keeping, so SIGKILL.
    """
    iterator = getattr(loader, "_iterator", None)  # persistent workers live in the loader's iterator
    if iterator is None:
        return
    iterator._shutdown_workers()  # first, so that torch no longer treats a worker's death as an error
    for worker in iterator._workers:
        if worker.is_alive():
            worker.kill()
            worker.join()


def _make_loader(dataset: Dataset, run: _Run) -> tuple[DataLoader, EpochSampler]:
    workers = run.row.schedule.workers_per_process if run.options.workers is None else run.options.workers
    sampler = EpochSampler(dataset, run.processes.world_size, run.processes.rank, run.seed)
    loader = DataLoader(
        SeededSamples(dataset, run.seed),
        batch_size=run.per_process_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=run.processes.device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_sigterm if workers > 0 else None,
        # Its own generator, so that creating loader iterators never draws from the global stream.
        generator=torch.Generator().manual_seed(run.seed),
    )
    return loader, sampler


def _lr(run: _Run) -> float:
    s = run.row.schedule
    return poly_lr(run.position.iteration, run.max_iters, s.lr, power=s.poly_power, min_lr=s.min_lr,
                   warmup_iters=s.warmup_iters, warmup_ratio=s.warmup_ratio)


def _reduced_losses(losses: Mapping[str, Tensor], stop: bool, processes: Processes) -> tuple[dict[str, float], bool]:
    """(mean of each loss over processes, whether any process asked to stop), from one all-reduce, so that
    every process takes the same NaN and stop decisions."""
    stats = torch.stack([value.detach().float().reshape(()) for value in losses.values()]).cpu()
    stats = _sum_over_processes(torch.cat([stats, torch.tensor([float(stop)])]), processes)
    values = stats[:-1].tolist()
    return {name: v / processes.world_size for name, v in zip(losses, values)}, bool(stats[-1] > 0)


def _loop(
    run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, loader: DataLoader,
    sampler: EpochSampler, root: Path, session_start: float,
) -> None:
    """Steps until `run.max_iters`; logs, checkpoints, stops on SIGTERM or a non-finite loss."""
    options, processes, position, device = run.options, run.processes, run.position, run.processes.device
    window: dict[str, list[float]] = {}
    session_iteration = position.iteration
    bar = tqdm(total=run.max_iters, initial=position.iteration, desc=run.row.name, dynamic_ncols=True,
               disable=not (processes.is_main and options.progress), file=sys.stderr)
    with _StopOnSigterm() as stop, bar:
        while position.iteration < run.max_iters:
            sampler.set_epoch(position.epoch, skip=position.batch_in_epoch * run.per_process_batch)
            for images, targets in loader:
                lr = _lr(run)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = images.to(device, non_blocking=True)
                if options.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with _autocast(device, options.amp):
                    losses = model(images, targets.to(device, non_blocking=True))
                values, stop_requested = _reduced_losses(losses, stop.requested, processes)
                if not all(math.isfinite(v) for v in values.values()):
                    raise NonFiniteLossError(_nonfinite_message(run, lr, values))
                total = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(total).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    total.backward()
                    optimizer.step()

                position.iteration += 1
                position.batch_in_epoch += 1
                if position.batch_in_epoch == run.steps_per_epoch:
                    position.epoch, position.batch_in_epoch = position.epoch + 1, 0
                for name, value in values.items():
                    window.setdefault(name, []).append(value)
                bar.set_postfix(loss=f"{sum(values.values()):.4f}", lr=f"{lr:.2e}", epoch=position.epoch, refresh=False)
                bar.update(1)
                if processes.is_main:
                    TrainProgress(position.iteration, run.max_iters, sum(values.values()), lr,
                                  time.perf_counter() - session_start, session_iteration, time.time()).write(run.out_dir)

                done = position.iteration >= run.max_iters
                if position.iteration % options.log_every == 0 or done:
                    seconds = run.wall_before + time.perf_counter() - session_start
                    run.last_record = _metrics_record(position, run.steps_per_epoch, lr, window, seconds)
                    window = {}
                    if processes.is_main:
                        with run.metrics_path.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(run.last_record) + "\n")
                if position.iteration % run.checkpoint_every == 0 or done or stop_requested:
                    _save_last(run, model, optimizer, scaler, session_start)
                if stop_requested and not done:
                    raise TrainingInterrupted(
                        f"SIGTERM: stopped at iteration {position.iteration} of {run.max_iters}; {run.last_path} "
                        "written, continue with --resume"
                    )
                if (options.evaluate and position.batch_in_epoch == 0 and not done
                        and position.epoch % run.row.schedule.eval_every_epochs == 0):
                    _evaluate(run, root, run.out_dir / "eval" / f"epoch_{position.epoch:03d}", None, model)
                if done:
                    return


def _nonfinite_message(run: _Run, lr: float, values: Mapping[str, float]) -> str:
    kept = f"the last good checkpoint is {run.last_path}" if run.last_path.exists() else "no checkpoint was written yet"
    return (
        f"non-finite loss at iteration {run.position.iteration} (epoch {run.position.epoch}, lr {lr:.3g}): "
        + ", ".join(f"{k}={v}" for k, v in values.items())
        + f"; training stopped, {kept}. Lower the learning rate or check the data."
    )


def _save_last(run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, session_start: float) -> None:
    """Write checkpoint_last.pth (rank 0). Collective: every process must call it (RNG states are gathered)."""
    rng_cpu, rng_cuda = _rng_states(run.processes)
    if not run.processes.is_main:
        return
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": run.position.iteration,
        "epoch": run.position.epoch,
        "batch_in_epoch": run.position.batch_in_epoch,
        "iters_per_epoch": run.steps_per_epoch,
        "max_iters": run.max_iters,
        "rng_cpu": rng_cpu,
        "rng_cuda": rng_cuda,
        "sampler_seed": run.seed,
        "world_size": run.processes.world_size,
        "per_process_batch": run.per_process_batch,
        "row": run.row.name,
        "options": run.options.to_dict(),
        "wall_seconds": run.wall_before + (time.perf_counter() - session_start),
        "last_record": run.last_record,
    }
    atomic_torch_save(state, run.last_path)


def _copy_file(source: Path, target: Path) -> None:
    with source.open("rb") as f:
        atomic_write(target, lambda out: shutil.copyfileobj(f, out, length=1 << 24))


def _check_resumable(
    checkpoint: Mapping[str, Any], path: Path, row: RowConfig, processes: Processes, per_process_batch: int
) -> None:
    """Refuse checkpoints that cannot continue this run exactly (another row, process count or batch)."""
    required = {"iteration", "epoch", "batch_in_epoch", "rng_cpu", "sampler_seed", "optimizer", "row", "world_size",
                "per_process_batch", "max_iters", "wall_seconds"}
    missing = required - set(checkpoint)
    if missing:
        raise ValueError(f"{path} is not a training checkpoint of this trainer (missing {sorted(missing)}); "
                         "use it as --checkpoint (initial weights) instead of resuming")
    if checkpoint["row"] != row.name:
        raise ValueError(f"{path} was written for row {checkpoint['row']!r}, not {row.name!r}")
    if int(checkpoint["world_size"]) != processes.world_size or int(checkpoint["per_process_batch"]) != per_process_batch:
        raise ValueError(
            f"{path} was written by {checkpoint['world_size']} processes x batch {checkpoint['per_process_batch']}; "
            f"this run has {processes.world_size} x {per_process_batch}. Resume with the same process count and "
            "batch size (the data order depends on them)"
        )


def _metrics_record(
    position: _Position, steps_per_epoch: int, lr: float, window: dict[str, list[float]], seconds: float
) -> dict[str, Any]:
    """One metrics.jsonl line after `position.iteration` steps: the lr of the last step, mean losses over the
    steps since the previous line (`window` of them), fractional epochs done and cumulative wall seconds."""
    means = {name: sum(v) / len(v) for name, v in window.items()}
    return {
        "iteration": position.iteration,
        "epoch": position.epoch + position.batch_in_epoch / steps_per_epoch,
        "lr": lr,
        "loss": sum(means.values()),
        **means,
        "window": len(next(iter(window.values()), [])),
        "seconds": round(seconds, 3),
    }


def _summary(run: _Run, session: float, start_iteration: int) -> dict[str, Any]:
    """The content of train.json: what was trained, how long it took, on what, and the final losses."""
    from pointrend_core.engine.evaluate import config_json, environment

    record = run.last_record or {}
    session_iterations = run.position.iteration - start_iteration
    return {
        "row": run.row.name,
        "config": config_json(run.row),
        "iterations": run.position.iteration,
        "max_iters": run.max_iters,
        "iters_per_epoch": run.steps_per_epoch,
        "epochs": run.position.iteration / run.steps_per_epoch,
        "batch_size": run.row.schedule.batch_size,
        "per_process_batch": run.per_process_batch,
        "world_size": run.processes.world_size,
        "synchronized_batchnorm_layers": run.synced_layers,
        "device": str(run.processes.device),
        "amp": run.options.amp,
        "channels_last": run.options.channels_last,
        "seed": run.seed,
        "wall_seconds": round(run.wall_before + session, 3),
        "session_seconds": round(session, 3),
        "iters_per_second": session_iterations / session if session_iterations and session > 0 else None,
        "resumed_from_iteration": start_iteration or None,
        "final_losses": {k: v for k, v in record.items() if k.startswith("loss")},
        "final_lr": record.get("lr"),
        "checkpoint": str(run.final_path),
        "options": run.options.to_dict(),
        "environment": environment(run.processes.device),
    }


def _evaluate(run: _Run, root: Path, out_dir: Path, checkpoint: Path | None, model: nn.Module) -> None:
    """evaluate_run on the model being trained (every process takes part; run.json in `out_dir`), leaving the
    random streams as they were so that evaluating does not change the training that follows. The scores
    are also appended to metrics.jsonl (mIoU, coarse_mIoU, boundary_mIoU in %)."""
    from pointrend_core.engine.evaluate import evaluate_run

    net, device = _unwrap(model), run.processes.device
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[run.options.amp]
    with seeded_host_rngs(0):
        net.eval()
        try:
            record = evaluate_run(run.row, checkpoint, root, out_dir, device, max_images=run.options.eval_max_images,
                                  model=net, amp_dtype=amp_dtype, progress=run.options.progress)
        finally:
            net.train()
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
    if run.processes.is_main:
        refined, coarse = record["metrics"]["refined"], record["metrics"]["coarse"]
        scores = {
            "iteration": run.position.iteration,
            "epoch": run.position.epoch + run.position.batch_in_epoch / run.steps_per_epoch,
            "mIoU": refined["mIoU"],
            "coarse_mIoU": coarse["mIoU"],
            "boundary_mIoU": refined["boundary_mIoU"],
        }
        with run.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(scores) + "\n")


__all__ = [
    "TrainOptions",
    "train",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "CPUSyncBatchNorm",
    "convert_sync_batchnorm",
    "EpochSampler",
    "SeededSamples",
    "sample_seed",
    "process_seed",
    "seeded_host_rngs",
    "start_processes",
    "resolve_device",
    "Processes",
    "LAST_CHECKPOINT",
    "FINAL_CHECKPOINT",
    "METRICS_FILE",
    "TRAIN_FILE",
]
