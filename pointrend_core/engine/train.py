"""The training recipe of a table row (`docs/reference-recipe.md` §6 and §7): SGD with poly decay and warm-up,
single-process or distributed, resumable bit for bit. Read `train` top to bottom; `train_step` is one step.

- Optimiser: SGD (momentum 0.9, weight decay on every parameter: one parameter group), lr from
  `schedule.poly_lr`, set before every step. `max_iters = epochs * iters_per_epoch` unless overridden.
- Processes (`engine.distributed`): under `torchrun` one process per device, DDP, synchronised BatchNorm; the
  total batch `schedule.batch_size` is split evenly. A single process keeps plain BatchNorm.
- Data order and augmentation seeds: `data.loading` (neither the worker count nor a resume changes them).
- Checkpoints: `checkpoint_last.pth` (an `engine.state.TrainState`) every `checkpoint_every` steps and at the
  end, then a copy as `checkpoint_final.pth`; atomic, loadable with `torch.load(weights_only=True)`.
  `resume=True` continues from `checkpoint_last.pth` exactly. SIGTERM finishes the current step, writes
  `checkpoint_last.pth` and raises `TrainingInterrupted`; a non-finite loss raises `NonFiniteLossError`
  before the update, leaving the last good checkpoint untouched.
- Logs: a tqdm bar (rank 0); `progress.json` after every step (`engine.progress`); `metrics.jsonl`, one JSON
  object per log step (iteration, fractional epoch, lr, mean losses of the window, cumulative seconds) and,
  with `evaluate`, one per evaluation (iteration, epoch, mIoU, coarse_mIoU, boundary_mIoU in %);
  `train.json` (an `engine.records.TrainRecord`) at the end.
- Evaluation (`evaluate=True`, off by default): `evaluate_run` every `schedule.eval_every_epochs` epochs into
  out_dir/eval/epoch_NNN/run.json and at the end into out_dir/run.json (which then includes train.json).

Conventions: "iteration" counts completed optimiser steps (the step taken at iteration i uses `poly_lr(i)`,
i from 0); images (B, 3, H, W) float32 normalised, targets (B, H, W) int64 with IGNORE_INDEX; B is the
per-process batch. Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pointrend_core.checkpoints import load_checkpoint, load_for_finetuning
from pointrend_core.config import RowConfig
from pointrend_core.data.loading import (
    EpochSampler,
    process_seed,
    seeded_host_rngs,
    stop_workers,
    training_loader,
    worker_error_message,
)
from pointrend_core.data.transforms import train_transforms
from pointrend_core.engine.distributed import (
    Processes,
    convert_sync_batchnorm,
    start_processes,
    stop_processes,
    sum_over_processes,
    unwrap,
)
from pointrend_core.engine.evaluate import evaluate_run
from pointrend_core.engine.precision import Amp, autocast, inference_precision
from pointrend_core.engine.progress import PROGRESS_FILE, TrainProgress
from pointrend_core.engine.records import RUN_FILE, TRAIN_FILE, TrainRecord, config_json, environment
from pointrend_core.engine.run_folder import run_folder_lock
from pointrend_core.engine.schedule import iters_per_epoch, poly_lr
from pointrend_core.engine.state import (
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    Position,
    TrainState,
    gather_rng_states,
    restore_rng_states,
)
from pointrend_core.engine.train_options import TrainOptions
from pointrend_core.engine.train_log import METRICS_FILE, append_line, keep_lines_up_to, window_record
from pointrend_core.files import atomic_write, atomic_write_text
from pointrend_core.model import build_model

class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the message names the iteration and the last good checkpoint."""

    def __init__(self, message: str, losses: Mapping[str, float] | None = None) -> None:
        super().__init__(message)
        self.losses = dict(losses or {})


class TrainingInterrupted(RuntimeError):
    """SIGTERM stopped the run after writing checkpoint_last.pth; `resume=True` continues it."""


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
        # Rank 0 holds the folder for the whole run; the other processes are its own.
        with run_folder_lock(out_dir) if processes.is_main else nullcontext():
            return _train(row, row.data.resolve_root(data_root), Path(out_dir), options, processes, model)
    finally:
        stop_processes(processes)


@dataclass
class _Run:
    """What the loop needs besides the model: fixed settings of this run and its mutable position."""

    row: RowConfig
    options: TrainOptions
    processes: Processes
    data_root: Path
    out_dir: Path
    seed: int
    per_process_batch: int
    steps_per_epoch: int
    max_iters: int
    position: Position = dataclasses.field(default_factory=Position)
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

    @property
    def checkpoint_every(self) -> int:
        return self.options.checkpoint_every or self.steps_per_epoch


def _train(
    row: RowConfig, root: Path, out_dir: Path, options: TrainOptions, processes: Processes, model: nn.Module | None
) -> Path:
    if options.amp == "fp16" and processes.device.type != "cuda":
        raise ValueError("amp 'fp16' needs CUDA (it uses a GradScaler); on CPU use 'bf16' or 'none'")
    per_process_batch = _per_process_batch(row, processes)
    resumed = _state_to_resume(out_dir, row, options, processes, per_process_batch)
    if resumed is None and not options.overwrite:
        # --resume with nothing to resume from may restart a run cut short before its first checkpoint (only
        # its log exists), never replace a finished one.
        _refuse_earlier_run(out_dir, keep_log=options.resume)
    seed = resumed.sampler_seed if resumed is not None else options.seed  # the data order depends on it

    # Data
    dataset = row.data.dataset(root, row.data.train_split, transforms=train_transforms(row.data))
    steps_per_epoch = iters_per_epoch(len(dataset), processes.world_size, per_process_batch)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{root} split {row.data.train_split!r} has {len(dataset)} images: fewer than one batch of "
            f"{per_process_batch} per process over {processes.world_size} processes"
        )
    run = _Run(row, options, processes, root, out_dir, seed, per_process_batch, steps_per_epoch,
               max_iters=options.max_iters or row.schedule.epochs * steps_per_epoch)

    # Model and optimiser
    torch.manual_seed(seed)  # identical initial weights in every process
    model, run.synced_layers = _prepare_model(model, row, options, processes, resumed)
    schedule = row.schedule
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if options.amp == "fp16" else None

    # Resume, or start afresh
    if processes.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out_dir)
    if resumed is not None:
        _restore(run, resumed, optimizer, scaler)
    else:
        torch.manual_seed(process_seed(seed, processes.rank))  # each process its own point-sampling stream
        _start_fresh(run)
    workers = schedule.workers_per_process if options.workers is None else options.workers
    loader, sampler = training_loader(dataset, world_size=processes.world_size, rank=processes.rank, seed=seed,
                                      batch_size=per_process_batch, workers=workers,
                                      pin_memory=processes.device.type == "cuda")
    _log(processes, f"train {row.name}: {run.max_iters} iterations ({run.max_iters / steps_per_epoch:.2f} epochs "
                    f"of {steps_per_epoch}), batch {schedule.batch_size} = {processes.world_size} x "
                    f"{per_process_batch}, device {processes.device}, amp {options.amp}"
                    + (f", {run.synced_layers} synchronised BatchNorm layers" if run.synced_layers else ""))

    # Steps
    start_iteration, session_start = run.position.iteration, time.perf_counter()
    try:
        _loop(run, model, optimizer, scaler, loader, sampler, session_start)
    except Exception as error:
        message = worker_error_message(error)
        if message is None:
            raise
        raise type(error)(message) from None  # what the worker said, as with workers=0
    finally:
        stop_workers(loader)

    # The final checkpoint, the summary, the evaluation
    if processes.is_main:
        _copy_file(run.last_path, run.final_path)
        _summary(run, time.perf_counter() - session_start, start_iteration).write(out_dir / TRAIN_FILE)
    if processes.world_size > 1:
        dist.barrier()  # the final checkpoint exists for every process before anyone evaluates it
    if options.evaluate:
        _evaluate(run, out_dir, run.final_path, model)
    return run.final_path


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    images: Tensor,
    targets: Tensor,
    lr: float,
    *,
    amp: Amp = "none",
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


def _loop(
    run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
    loader: DataLoader, sampler: EpochSampler, session_start: float,
) -> None:
    """Steps until `run.max_iters`; logs, checkpoints, evaluates, stops on SIGTERM or a non-finite loss."""
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
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                if options.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                try:
                    values, stop_requested = train_step(model, optimizer, scaler, images, targets, lr, amp=options.amp,
                                                        processes=processes, stop_requested=stop.requested)
                except NonFiniteLossError as error:
                    raise NonFiniteLossError(_nonfinite_message(run, lr, error.losses), error.losses) from None
                position.advance(run.steps_per_epoch)
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
                    run.last_record = window_record(position, run.steps_per_epoch, lr, window, seconds)
                    window = {}
                    _append_metrics(run, run.last_record)
                if position.iteration % run.checkpoint_every == 0 or done or stop_requested:
                    _save_last(run, model, optimizer, scaler, session_start)
                if stop_requested and not done:
                    raise TrainingInterrupted(
                        f"SIGTERM: stopped at iteration {position.iteration} of {run.max_iters}; {run.last_path} "
                        "written, continue with --resume"
                    )
                if (options.evaluate and position.batch_in_epoch == 0 and not done
                        and position.epoch % run.row.schedule.eval_every_epochs == 0):
                    _evaluate(run, run.out_dir / "eval" / f"epoch_{position.epoch:03d}", None, model)
                if done:
                    return


# --------------------------------------------------------------------------------------------------
# Setting up


def _per_process_batch(row: RowConfig, processes: Processes) -> int:
    if row.schedule.batch_size % processes.world_size:
        raise ValueError(
            f"total batch size {row.schedule.batch_size} of row {row.name!r} is not divisible by the "
            f"{processes.world_size} processes; choose a batch size that is a multiple of the process count"
        )
    return row.schedule.batch_size // processes.world_size


def _state_to_resume(
    out_dir: Path, row: RowConfig, options: TrainOptions, processes: Processes, per_process_batch: int
) -> TrainState | None:
    """The content of out_dir/checkpoint_last.pth when resuming (None for a fresh start)."""
    path = out_dir / LAST_CHECKPOINT
    if not options.resume:
        return None
    if not path.exists():
        # Only worth saying when an earlier attempt left something behind (its log, cut short before the
        # first checkpoint): in a new folder, starting anew is what resuming means, and the workbook (which
        # always asks to resume) would otherwise print this into every first report.
        if _earlier_run_files(out_dir):
            _log(processes, f"resume: no {path}, starting a new run")
        return None
    state = TrainState.read(path)
    state.check_resumable(path, row.name, processes.world_size, per_process_batch)
    if int(state.sampler_seed) != options.seed:
        _log(processes, f"resume: using the checkpoint's seed {state.sampler_seed} (options say {options.seed})")
    return state


def _earlier_run_files(out_dir: Path) -> list[Path]:
    names = (LAST_CHECKPOINT, FINAL_CHECKPOINT, TRAIN_FILE, RUN_FILE, METRICS_FILE)
    found = [out_dir / name for name in names if (out_dir / name).is_file()]
    return [p for p in found if p.name != METRICS_FILE or p.stat().st_size > 0]


def _refuse_earlier_run(out_dir: Path, keep_log: bool = False) -> None:
    found = [p for p in _earlier_run_files(out_dir) if not (keep_log and p.name == METRICS_FILE)]
    if found:
        raise ValueError(f"{out_dir} holds an earlier run ({', '.join(p.name for p in found)}); pass --resume to "
                         "continue it, --overwrite to replace it, or another --out")


def _prepare_model(
    model: nn.Module | None, row: RowConfig, options: TrainOptions, processes: Processes, resumed: TrainState | None
) -> tuple[nn.Module, int]:
    """The model with its starting weights, on the device, in training mode; synchronised BatchNorm and DDP
    when there are several processes. Returns (model, number of synchronised BatchNorm layers)."""
    if model is None:
        model = build_model(row)
    if resumed is not None:
        model.load_state_dict(resumed.model)
    else:
        for path in (options.pretrained_backbone, options.init_checkpoint):
            if path is not None:
                load_checkpoint(model, path)
        if options.finetune_checkpoint is not None:
            fresh = load_for_finetuning(model, options.finetune_checkpoint)
            _log(processes, f"init: {options.finetune_checkpoint}: every entry loaded except {len(fresh)} re-initialised"
                            + "".join(f"\n  {key}: {reason}" for key, reason in fresh))
        started = (options.pretrained_backbone, options.init_checkpoint, options.finetune_checkpoint)
        if all(path is None for path in started) and row.pretrained_backbone:
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


def _restore(run: _Run, state: TrainState, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Optimizer, scaler, position, RNG states and the metrics log as they were at the checkpoint."""
    optimizer.load_state_dict(state.optimizer)
    if scaler is not None and state.scaler is not None:
        scaler.load_state_dict(state.scaler)
    run.position = state.position
    run.wall_before = float(state.wall_seconds)
    run.last_record = state.last_record
    if int(state.max_iters) != run.max_iters:
        _log(run.processes, f"resume: max_iters {run.max_iters} differs from the checkpoint's "
                            f"{state.max_iters}; the lr schedule changes from here on")
    restore_rng_states(state, run.processes)
    if run.processes.is_main:
        keep_lines_up_to(run.metrics_path, run.position.iteration)
    _log(run.processes, f"resume: {run.last_path} at iteration {run.position.iteration} (epoch "
                        f"{run.position.epoch}, batch {run.position.batch_in_epoch} of {run.steps_per_epoch})")


def _start_fresh(run: _Run) -> None:
    if not run.processes.is_main:
        return
    earlier = _earlier_run_files(run.out_dir)
    if earlier:  # only with overwrite (or resume without a checkpoint): _train refused otherwise
        _log(run.processes, f"overwrite: {run.out_dir}: deleting the earlier run's {', '.join(p.name for p in earlier)}")
    for path in earlier:
        path.unlink()
    for folder in ("eval", "evaluations"):  # its evaluations during training, and of its checkpoints
        shutil.rmtree(run.out_dir / folder, ignore_errors=True)
    atomic_write_text(run.metrics_path, "")


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete half-written files a killed run left behind (atomic writes name them `.<name>.*.tmp`)."""
    for name in (LAST_CHECKPOINT, FINAL_CHECKPOINT, METRICS_FILE, TRAIN_FILE, PROGRESS_FILE):
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# During the steps


def _lr(run: _Run) -> float:
    s = run.row.schedule
    return poly_lr(run.position.iteration, run.max_iters, s.lr, power=s.poly_power, min_lr=s.min_lr,
                   warmup_iters=s.warmup_iters, warmup_ratio=s.warmup_ratio)


class _StopOnSigterm:
    """Turns SIGTERM into a flag the loop checks once per step (main thread only; restored on exit)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_StopOnSigterm":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _nonfinite_message(run: _Run, lr: float, values: Mapping[str, float]) -> str:
    kept = f"the last good checkpoint is {run.last_path}" if run.last_path.exists() else "no checkpoint was written yet"
    return (
        f"non-finite loss at iteration {run.position.iteration} (epoch {run.position.epoch}, lr {lr:.3g}): "
        + ", ".join(f"{k}={v}" for k, v in values.items())
        + f"; training stopped, {kept}. Lower the learning rate or check the data."
    )


def _append_metrics(run: _Run, record: Mapping[str, Any]) -> None:
    if run.processes.is_main:
        append_line(run.metrics_path, record)


def _save_last(
    run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
    session_start: float,
) -> None:
    """Write checkpoint_last.pth (rank 0). Collective: every process must call it (RNG states are gathered)."""
    rng_cpu, rng_cuda = gather_rng_states(run.processes)
    if not run.processes.is_main:
        return
    TrainState(
        model=unwrap(model).state_dict(),
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict() if scaler is not None else None,
        iteration=run.position.iteration,
        epoch=run.position.epoch,
        batch_in_epoch=run.position.batch_in_epoch,
        max_iters=run.max_iters,
        rng_cpu=rng_cpu,
        rng_cuda=rng_cuda,
        sampler_seed=run.seed,
        world_size=run.processes.world_size,
        per_process_batch=run.per_process_batch,
        row=run.row.name,
        options=run.options.to_dict(),
        wall_seconds=run.wall_before + (time.perf_counter() - session_start),
        last_record=run.last_record,
    ).save(run.last_path)


def _evaluate(run: _Run, out_dir: Path, checkpoint: Path | None, model: nn.Module) -> None:
    """evaluate_run on the model being trained (every process takes part; run.json in `out_dir`), leaving the
    random streams as they were so that evaluating does not change the training that follows. The scores
    are also appended to metrics.jsonl (mIoU, coarse_mIoU, boundary_mIoU in %)."""
    net, device = unwrap(model), run.processes.device
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    with seeded_host_rngs(0):
        net.eval()
        try:
            # These records belong to this training: a resumed run redoing an evaluation replaces its own.
            record = evaluate_run(run.row, checkpoint, run.data_root, out_dir, device, max_images=run.options.eval_max_images,
                                  model=net, precision=inference_precision(run.options.amp), progress=run.options.progress,
                                  replace=True)
        finally:
            net.train()
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
    refined, coarse = record.metrics.refined, record.metrics.coarse
    _append_metrics(run, {"iteration": run.position.iteration, "epoch": run.position.epochs(run.steps_per_epoch),
                          "mIoU": refined.mIoU, "coarse_mIoU": coarse.mIoU, "boundary_mIoU": refined.boundary_mIoU})


# --------------------------------------------------------------------------------------------------
# Finishing


def _copy_file(source: Path, target: Path) -> None:
    with source.open("rb") as f:
        atomic_write(target, lambda out: shutil.copyfileobj(f, out, length=1 << 24))


def _summary(run: _Run, session: float, start_iteration: int) -> TrainRecord:
    """What train.json holds: what was trained, how long it took, on what, and the final losses."""
    record = run.last_record or {}
    session_iterations = run.position.iteration - start_iteration
    return TrainRecord(
        row=run.row.name,
        config=config_json(run.row),
        iterations=run.position.iteration,
        max_iters=run.max_iters,
        iters_per_epoch=run.steps_per_epoch,
        epochs=run.position.iteration / run.steps_per_epoch,
        batch_size=run.row.schedule.batch_size,
        per_process_batch=run.per_process_batch,
        world_size=run.processes.world_size,
        synchronized_batchnorm_layers=run.synced_layers,
        device=str(run.processes.device),
        amp=run.options.amp,
        channels_last=run.options.channels_last,
        seed=run.seed,
        wall_seconds=round(run.wall_before + session, 3),
        session_seconds=round(session, 3),
        iters_per_second=session_iterations / session if session_iterations and session > 0 else None,
        resumed_from_iteration=start_iteration or None,
        final_losses={k: v for k, v in record.items() if k.startswith("loss")},
        final_lr=record.get("lr"),
        checkpoint=os.path.abspath(run.final_path),  # absolute: records are read from other folders
        options=run.options.to_dict(),
        environment=environment(run.processes.device),
    )


def _log(processes: Processes, message: str) -> None:
    if processes.is_main:
        tqdm.write(message, file=sys.stderr)


__all__ = ["TrainOptions", "train", "train_step", "NonFiniteLossError", "TrainingInterrupted", "METRICS_FILE",
           "LAST_CHECKPOINT", "FINAL_CHECKPOINT", "RUN_FILE", "TRAIN_FILE"]
