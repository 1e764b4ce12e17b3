"""The training recipe of a table row (`docs/reference-recipe.md` §6 and §7): SGD with poly decay and warm-up,
single-process or distributed, resumable bit for bit. Read `train` top to bottom; `train_step` is one step.

- Optimiser: SGD (momentum 0.9, weight decay on every parameter: one parameter group), lr from
  `schedule.poly_lr`, set before every step. `max_iters = epochs * iters_per_epoch` unless overridden.
- Processes (`engine.distributed`): under `torchrun` one process per device, DDP, synchronised BatchNorm; the
  total batch `schedule.batch_size` is split evenly. A single process keeps plain BatchNorm.
- Data order and augmentation seeds: `data.loading` (neither the worker count nor a resume changes them).
- Checkpoints: `checkpoint_last.pth` (an `engine.state.TrainState`) every `checkpoint_every` steps and at the
  end, then a copy as `checkpoint_final.pth`; atomic, loadable with `torch.load(weights_only=True)`.
  `resume=True` continues from `checkpoint_last.pth` exactly. A stop signal (Ctrl-C, SIGTERM, SIGHUP;
  `interrupts`) finishes the current step, writes `checkpoint_last.pth` and raises `TrainingInterrupted`; a
  second one stops at once (the previous checkpoint stays valid); a non-finite loss raises `NonFiniteLossError`
  before the update, leaving the last good checkpoint untouched.
- Files (`engine.run_folder.RunFolder` names them): a tqdm bar (rank 0); `progress.json` after every step;
  `metrics.jsonl` (`engine.train_log.LogLine`); `train.json` (`engine.records.TrainRecord`) at the end.
- Evaluation (`evaluate=True`, off by default): `evaluate_run` every `schedule.eval_every_epochs` epochs into
  eval/epoch_NNN/run.json and at the end into run.json (which then includes train.json).

Conventions: "iteration" counts completed optimiser steps (the step taken at iteration i uses `poly_lr(i)`,
i from 0); images (B, 3, H, W) float32 normalised, targets (B, H, W) int64 with IGNORE_INDEX; B is the
per-process batch. Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pointrend_core.checkpoints import load_backbone, load_checkpoint, load_for_finetuning
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
from pointrend_core.data.validate import check_before_training, resolution_note
from pointrend_core.engine.distributed import Processes, place_for_training, start_processes, stop_processes, unwrap
from pointrend_core.engine.evaluate import evaluate_run
from pointrend_core.engine.memory_format import channels_last_by_default
from pointrend_core.engine.precision import inference_precision
from pointrend_core.engine.progress import TrainProgress
from pointrend_core.engine.records import TrainRecord, config_json, environment
from pointrend_core.engine.run_folder import RunFolder, hold_on_main
from pointrend_core.engine.schedule import iters_per_epoch, poly_lr
from pointrend_core.engine.state import Position, TrainState, gather_rng_states, restore_rng_states
from pointrend_core.engine.tensorboard_log import TrainingBoard
from pointrend_core.engine.train_options import TrainOptions
from pointrend_core.engine.train_step import NonFiniteLossError, recipe_optimizer, train_step
from pointrend_core.engine.train_log import LogLine, append_line, keep_lines_up_to, window_line
from pointrend_core.files import atomic_copy, atomic_write_text
from pointrend_core.interrupts import StopFlag, signal_name
from pointrend_core.model import build_model

class TrainingInterrupted(RuntimeError):
    """A stop signal stopped the run after writing checkpoint_last.pth; `resume=True` continues it. `signum`
    is the signal (the shell's exit code is 128 + signum)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


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
    diverges and `TrainingInterrupted` after a stop signal (both leave a valid checkpoint_last.pth if one was
    written). Under torchrun, call it in every process.
    """
    processes = start_processes(options.device)
    try:
        # Rank 0 holds the folder for the whole run; the other processes are its own.
        with hold_on_main(RunFolder(out_dir), processes) as folder:
            return _train(row, row.data.resolve_root(data_root), folder, options, processes, model)
    finally:
        stop_processes(processes)


@dataclass
class _Run:
    """What the loop needs besides the model: fixed settings of this run and its mutable position."""

    row: RowConfig
    options: TrainOptions
    processes: Processes
    data_root: Path
    folder: RunFolder
    seed: int
    per_process_batch: int
    steps_per_epoch: int
    max_iters: int
    position: Position = dataclasses.field(default_factory=Position)
    wall_before: float = 0.0
    """Wall seconds of earlier sessions (before a resume)."""
    board: TrainingBoard | None = None
    """TensorBoard events (rank 0 writes; the other ranks' board is disabled)."""
    last_line: LogLine | None = None
    """The latest training window logged (carried in the checkpoint, so train.json has it after a resume)."""
    synced_layers: int = 0

    @property
    def checkpoint_every(self) -> int:
        return self.options.checkpoint_every or self.steps_per_epoch

    @functools.cached_property
    def channels_last(self) -> bool:
        """The memory format the model and batches are in: the option, or this machine's default (fixed for
        the session; a run resumed on another machine may continue in the other layout)."""
        if self.options.channels_last is not None:
            return self.options.channels_last
        return channels_last_by_default(self.processes.device, self.options.amp)


def _train(
    row: RowConfig, root: Path, folder: RunFolder, options: TrainOptions, processes: Processes, model: nn.Module | None
) -> Path:
    if options.amp == "fp16" and processes.device.type != "cuda":
        raise ValueError("amp 'fp16' needs CUDA (it uses a GradScaler); on CPU use 'bf16' or 'fp32'")
    per_process_batch = processes.share_of(row.schedule.batch_size, f"total batch size of row {row.name!r}")
    resumed = _state_to_resume(folder, row, options, processes, per_process_batch)
    if resumed is None and not options.overwrite:
        # --resume with nothing to resume from may restart a run cut short before its first checkpoint (only
        # its log exists), never replace a finished one.
        folder.refuse_earlier_run(keep_log=options.resume)
    if resumed is None:
        folder.check_clearable()  # every process, before anything is built: a fresh start will clear the folder
    seed = resumed.sampler_seed if resumed is not None else options.seed  # the data order depends on it

    # Data
    dataset, steps_per_epoch = _training_data(row, root, processes, per_process_batch)
    run = _Run(row, options, processes, root, folder, seed, per_process_batch, steps_per_epoch,
               max_iters=options.max_iters or row.schedule.epochs * steps_per_epoch)

    # Model and optimiser
    torch.manual_seed(seed)  # identical initial weights in every process
    model, run.synced_layers = _prepare_model(model, row, options, processes, resumed, run.channels_last)
    schedule = row.schedule
    optimizer = recipe_optimizer(model, schedule)
    scaler = torch.amp.GradScaler("cuda") if options.amp == "fp16" else None

    # Resume, or start afresh
    if processes.is_main:
        folder.remove_stale_temporaries()
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
                    f"{per_process_batch}, device {processes.device}, amp {options.amp}, "
                    f"{'channels-last' if run.channels_last else 'NCHW'}"
                    + (f", {run.synced_layers} synchronised BatchNorm layers" if run.synced_layers else ""))

    # Steps
    start_iteration, session_start = run.position.iteration, time.perf_counter()
    with TrainingBoard(folder, start_iteration, enabled=processes.is_main) as run.board:
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
            atomic_copy(run.folder.last_checkpoint, run.folder.final_checkpoint)
            run.folder.previous_checkpoint.unlink(missing_ok=True)  # the run is complete: no fallback needed
            _summary(run, time.perf_counter() - session_start, start_iteration).write(folder.train_record)
        if processes.world_size > 1:
            dist.barrier()  # the final checkpoint exists for every process before anyone evaluates it
        if options.evaluate:
            _evaluate(run, folder, run.folder.final_checkpoint, model)
    return run.folder.final_checkpoint


def _loop(
    run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
    loader: DataLoader, sampler: EpochSampler, session_start: float,
) -> None:
    """Steps until `run.max_iters`; logs, checkpoints, evaluates, stops on a stop signal or a non-finite loss."""
    options, processes, position, device = run.options, run.processes, run.position, run.processes.device
    window: dict[str, list[float]] = {}
    session_iteration = position.iteration
    window_start = step_end = time.perf_counter()
    data_wait = 0.0
    bar = tqdm(total=run.max_iters, initial=position.iteration, desc=run.row.name, dynamic_ncols=True,
               disable=not (processes.is_main and options.progress), file=sys.stderr)
    with StopFlag() as stop, bar:
        while position.iteration < run.max_iters:
            sampler.set_epoch(position.epoch, skip=position.batch_in_epoch * run.per_process_batch)
            for images, targets in loader:
                data_wait += time.perf_counter() - step_end
                lr = _lr(run)
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                if run.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                try:
                    values, stop_requested = train_step(model, optimizer, scaler, images, targets, lr, amp=options.amp,
                                                        processes=processes, stop_requested=stop.requested)
                except NonFiniteLossError as error:
                    raise error.during(position.iteration, position.epoch, lr, run.folder.last_checkpoint) from None
                position.advance(run.steps_per_epoch)
                for name, value in values.items():
                    window.setdefault(name, []).append(value)
                bar.set_postfix(loss=f"{sum(values.values()):.4f}", lr=f"{lr:.2e}", epoch=position.epoch, refresh=False)
                bar.update(1)
                if processes.is_main:
                    TrainProgress(position.iteration, run.max_iters, sum(values.values()), lr,
                                  time.perf_counter() - session_start, session_iteration, time.time()).write(run.folder.progress_file)

                done = position.iteration >= run.max_iters
                if position.iteration % options.log_every == 0 or done:
                    now, steps = time.perf_counter(), len(next(iter(window.values())))
                    run.last_line = window_line(position, run.steps_per_epoch, lr, window,
                                                run.wall_before + now - session_start,
                                                steps * run.row.schedule.batch_size / (now - window_start),
                                                data_wait / steps)
                    window, window_start, data_wait = {}, now, 0.0
                    _append_metrics(run, run.last_line)
                    run.board.window(run.last_line)
                if position.iteration % run.checkpoint_every == 0 or done or stop_requested:
                    _save_last(run, model, optimizer, scaler, session_start)
                if stop_requested and not done:
                    signum = stop.signum or signal.SIGTERM  # None: another process of the run got it
                    raise TrainingInterrupted(
                        f"{signal_name(signum)}: stopped at iteration {position.iteration} of {run.max_iters}; "
                        f"{run.folder.last_checkpoint} written, continue with --resume", signum)
                if (options.evaluate and position.batch_in_epoch == 0 and not done
                        and position.epoch % run.row.schedule.eval_every_epochs == 0):
                    _evaluate(run, run.folder.epoch_evaluation(position.epoch), None, model)
                if done:
                    return
                step_end = time.perf_counter()


# --------------------------------------------------------------------------------------------------
# Setting up


def _training_data(row: RowConfig, root: Path, processes: Processes, per_process_batch: int) -> tuple[Any, int]:
    """(the training split with the recipe's transforms, steps per epoch), after the checks and notes that need
    no decoding; ValueError when the split holds less than one batch per process."""
    dataset = row.data.dataset(root, row.data.train_split, transforms=train_transforms(row.data))
    for warning in check_before_training(dataset, row.data.dataset, row.data.val_split):
        _log(processes, f"warning: {warning}")
    note = resolution_note(dataset, row.data.base_size)
    if note is not None:
        _log(processes, note)
    steps_per_epoch = iters_per_epoch(len(dataset), processes.world_size, per_process_batch)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{root} split {row.data.train_split!r} has {len(dataset)} images: fewer than one batch of "
            f"{per_process_batch} per process over {processes.world_size} processes"
        )
    return dataset, steps_per_epoch


def _state_to_resume(
    folder: RunFolder, row: RowConfig, options: TrainOptions, processes: Processes, per_process_batch: int
) -> TrainState | None:
    """The content of the folder's checkpoint_last.pth when resuming, or of checkpoint_previous.pth when the
    last one is damaged or missing (None for a fresh start)."""
    if not options.resume:
        return None
    state, path, damaged = TrainState.read_newest(folder.checkpoints_to_resume())
    if state is None:
        if damaged:
            raise ValueError(f"no checkpoint of {folder.path} can be resumed from ({'; '.join(damaged)}); "
                             "start afresh with --overwrite")
        # Only worth saying when an earlier attempt left something behind (its log, cut short before the
        # first checkpoint): in a new folder, starting anew is what resuming means, and the workbook (which
        # always asks to resume) would otherwise print this into every first report.
        if folder.earlier_run():
            _log(processes, f"resume: no {folder.last_checkpoint}, starting a new run")
        return None
    if damaged:
        aside = folder.set_aside_damaged_last() if processes.is_main else folder.path / folder.DAMAGED_CHECKPOINT
        _log(processes, f"resume: {damaged[0]} (kept as {aside.name}); continuing from {path} "
                        f"(iteration {int(state.iteration)})")
    state.check_resumable(path, row.name, processes.world_size, per_process_batch, config_json(row), options.max_iters)
    if int(state.sampler_seed) != options.seed:
        _log(processes, f"resume: using the checkpoint's seed {state.sampler_seed} (options say {options.seed})")
    return state


def _prepare_model(
    model: nn.Module | None, row: RowConfig, options: TrainOptions, processes: Processes, resumed: TrainState | None,
    channels_last: bool,
) -> tuple[nn.Module, int]:
    """The model with its starting weights, on the device, in training mode; synchronised BatchNorm and DDP
    when there are several processes. Returns (model, number of synchronised BatchNorm layers)."""
    if model is None:
        model = build_model(row)
    if resumed is not None:
        model.load_state_dict(resumed.model)
    else:
        if options.pretrained_backbone is not None:
            load_backbone(model, options.pretrained_backbone)
        if options.checkpoint is not None:
            load_checkpoint(model, options.checkpoint)
        if options.init_checkpoint is not None:
            fresh = load_for_finetuning(model, options.init_checkpoint)
            _log(processes, f"init: {options.init_checkpoint}: every entry loaded except {len(fresh)} re-initialised"
                            + "".join(f"\n  {key}: {reason}" for key, reason in fresh))
        started = (options.pretrained_backbone, options.checkpoint, options.init_checkpoint)
        if all(path is None for path in started) and row.pretrained_backbone:
            _log(processes, f"note: the recipe starts from ImageNet weights ({row.pretrained_backbone}); "
                            "training from random initialisation (pass --pretrained-backbone FILE)")
    return place_for_training(model, processes, channels_last)


def _restore(run: _Run, state: TrainState, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Optimizer, scaler, position, RNG states and the metrics log as they were at the checkpoint."""
    optimizer.load_state_dict(state.optimizer)
    if scaler is not None and state.scaler is not None:
        scaler.load_state_dict(state.scaler)
    run.position = state.position
    run.wall_before = float(state.wall_seconds)
    run.last_line = LogLine.from_json(state.last_record) if state.last_record else None
    if int(state.max_iters) != run.max_iters:
        _log(run.processes, f"resume: max_iters {run.max_iters} differs from the checkpoint's "
                            f"{state.max_iters}; the lr schedule changes from here on")
    restore_rng_states(state, run.processes)
    if run.processes.is_main:
        keep_lines_up_to(run.folder.metrics_log, run.position.iteration)
    _log(run.processes, f"resume: {run.folder.path} at iteration {run.position.iteration} (epoch "
                        f"{run.position.epoch}, batch {run.position.batch_in_epoch} of {run.steps_per_epoch})")


def _start_fresh(run: _Run) -> None:
    """Only with --overwrite (or --resume without a checkpoint) is there anything here: _train refused
    otherwise. RunFolder says what it deletes, and keeps what no run wrote."""
    if not run.processes.is_main:
        return
    run.folder.clear_earlier_run(lambda message: _log(run.processes, message))
    atomic_write_text(run.folder.metrics_log, "")


# --------------------------------------------------------------------------------------------------
# During the steps


def _lr(run: _Run) -> float:
    s = run.row.schedule
    return poly_lr(run.position.iteration, run.max_iters, s.lr, power=s.poly_power, min_lr=s.min_lr,
                   warmup_iters=s.warmup_iters, warmup_ratio=s.warmup_ratio)


def _append_metrics(run: _Run, line: LogLine) -> None:
    if run.processes.is_main:
        append_line(run.folder.metrics_log, line)


def _save_last(
    run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
    session_start: float,
) -> None:
    """Write checkpoint_last.pth (rank 0). Collective: every process must call it (RNG states are gathered)."""
    rng_cpu, rng_cuda = gather_rng_states(run.processes)
    if not run.processes.is_main:
        return
    run.folder.keep_previous_checkpoint()
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
        last_record=run.last_line.to_json() if run.last_line is not None else None,
        recipe=config_json(run.row),
    ).save(run.folder.last_checkpoint)


def _evaluate(run: _Run, folder: RunFolder, checkpoint: Path | None, model: nn.Module) -> None:
    """evaluate_run on the model being trained (every process takes part; run.json in `folder`), leaving the
    random streams as they were so that evaluating does not change the training that follows. The scores
    are also appended to metrics.jsonl (mIoU, coarse_mIoU, boundary_mIoU in %)."""
    net, device = unwrap(model), run.processes.device
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    with seeded_host_rngs(0):
        net.eval()
        try:
            # These records belong to this training: a resumed run redoing an evaluation replaces its own.
            record = evaluate_run(run.row, checkpoint, run.data_root, folder.path, device, max_images=run.options.eval_max_images,
                                  model=net, precision=inference_precision(run.options.amp), progress=run.options.progress,
                                  replace=True)
            run.board.evaluation(run.position.iteration, record, net, run.row, run.data_root)
        finally:
            net.train()
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
    refined, coarse = record.metrics.refined, record.metrics.coarse
    _append_metrics(run, LogLine(run.position.iteration, run.position.epochs(run.steps_per_epoch),
                                 mIoU=refined.mIoU, coarse_mIoU=coarse.mIoU, boundary_mIoU=refined.boundary_mIoU))


# --------------------------------------------------------------------------------------------------
# Finishing


def _summary(run: _Run, session: float, start_iteration: int) -> TrainRecord:
    """What train.json holds: what was trained, how long it took, on what, and the final losses."""
    line = run.last_line
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
        channels_last=run.channels_last,
        seed=run.seed,
        wall_seconds=round(run.wall_before + session, 3),
        session_seconds=round(session, 3),
        iters_per_second=session_iterations / session if session_iterations and session > 0 else None,
        resumed_from_iteration=start_iteration or None,
        final_losses={"loss": line.loss, **line.losses} if line is not None else {},
        final_lr=line.lr if line is not None else None,
        checkpoint=os.path.abspath(run.folder.final_checkpoint),  # absolute: records are read from other folders
        options=run.options.to_dict(),
        environment=environment(run.processes.device),
    )


def _log(processes: Processes, message: str) -> None:
    if processes.is_main:
        tqdm.write(message, file=sys.stderr)


__all__ = ["TrainOptions", "train", "train_step", "NonFiniteLossError", "TrainingInterrupted"]
