"""`RunFolder`: the one owner of a run folder -- its file names, its lock, the earlier-run policy, which
training record belongs to which checkpoint, and which evaluation record is which (`EvaluationKey`).

A run folder holds (every name is spelled here and nowhere else):

    checkpoint_last.pth    TrainState, rewritten every checkpoint_every steps (engine.state)
    checkpoint_previous.pth the one before it, kept until the run finishes: --resume falls back to it
    checkpoint_final.pth   a copy of the last state, once the run finished
    metrics.jsonl          the training log (engine.train_log.LogLine)
    progress.json          the latest step, for progress bars (engine.progress)
    train.json             TrainRecord, at the end of training (engine.records)
    run.json               RunRecord, one evaluation (engine.records)
    image_counts.npz       per-image pixel counts of that evaluation (statistics recomputed without the model)
    status.json            the workbook runner's outcome of the row (workbook.status)
    tensorboard/           TensorBoard event files
    eval/epoch_NNN/        evaluations during training: each a run folder of its own (run.json)
    evaluations/<name>/    further evaluations of this folder's checkpoints (see `EvaluationKey.folder_name`)
    .lock                  held while a process works in the folder

The lock is a POSIX record lock (`fcntl.lockf`) on `.lock`: the kernel drops it when its process ends, however
it ends, and -- unlike `flock` -- a forked child (a DataLoader worker) does not inherit it, so a killed run's
lingering workers never keep `--resume` waiting. Child processes of the holder (the workbook's notebook
kernel, torchrun's workers) work under the holder's lock through `POINTREND_HELD_RUN_FOLDERS`. A run that
refuses to start leaves nothing behind: the lock file goes when it is released, and a folder the run created
goes too when nothing was written into it.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import shutil
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from pointrend_core.config import overrides_tag
from pointrend_core.engine.distributed import Processes, sum_over_processes
from pointrend_core.engine.records import RunRecord, TrainRecord

HELD_ENV = "POINTREND_HELD_RUN_FOLDERS"

_HELD_HERE: dict[str, int] = {}
"""Folders this process holds, with how many nested `hold()` blocks use them (a POSIX lock is per process:
re-locking or closing a second handle in the same process would silently drop the first one's lock)."""


class RunFolderBusy(ValueError):
    """Another process holds the run folder; the message names the folder and that process."""


@dataclass(frozen=True)
class EvaluationKey:
    """What makes two evaluations the same one: the weights, the data and the inference precision.

    Paths are absolute (records are read from other folders). Re-running the same evaluation refreshes its
    record; any other evaluation keeps a record of its own.
    """

    checkpoint: str | None
    dataset: str | None
    root: str | None
    split: str | None
    max_images: int | None = None
    precision: str = "fp32"
    overrides: tuple[str, ...] = ()
    """The row's `--set` overrides (another test size or flip is another evaluation)."""

    @classmethod
    def create(cls, checkpoint: str | os.PathLike | None, dataset: str | None, root: str | os.PathLike | None,
               split: str | None, max_images: int | None = None, precision: str = "fp32",
               overrides: Sequence[str] = ()) -> EvaluationKey:
        absolute = (lambda p: str(Path(p).resolve()) if p is not None else None)
        return cls(absolute(checkpoint), dataset, absolute(root), split, max_images, precision,
                   tuple(sorted(overrides)))

    @classmethod
    def of_record(cls, record: RunRecord) -> EvaluationKey:
        return cls.create(record.checkpoint, record.data.dataset, record.data.root, record.data.split,
                          record.data.max_images, record.timing.precision or "fp32",
                          (record.config or {}).get("overrides") or ())

    def folder_name(self, row: str) -> str:
        """`<checkpoint stem>_<row>_<split>[_first<N>][_<precision>][+<overrides hash>]`: the sub-folder under
        `evaluations/`."""
        stem = Path(self.checkpoint).stem if self.checkpoint else "weights"
        name = f"{stem}_{row}_{self.split}"
        if self.max_images is not None:
            name += f"_first{self.max_images}"
        if self.precision != "fp32":
            name += f"_{self.precision}"
        if self.overrides:
            name += "+" + overrides_tag(self.overrides)
        return name


class RunFolder:
    """One run's folder. Constructing one touches nothing on disk."""

    LOCK = ".lock"
    LAST_CHECKPOINT = "checkpoint_last.pth"
    FINAL_CHECKPOINT = "checkpoint_final.pth"
    PREVIOUS_CHECKPOINT = "checkpoint_previous.pth"
    DAMAGED_CHECKPOINT = "checkpoint_last.damaged.pth"
    METRICS = "metrics.jsonl"
    PROGRESS = "progress.json"
    TRAIN = "train.json"
    RUN = "run.json"
    IMAGE_COUNTS = "image_counts.npz"
    STATUS = "status.json"
    TENSORBOARD = "tensorboard"
    EPOCH_EVALUATIONS = "eval"
    EVALUATIONS = "evaluations"

    RECORDS = (LAST_CHECKPOINT, FINAL_CHECKPOINT, TRAIN, RUN, METRICS, IMAGE_COUNTS, PREVIOUS_CHECKPOINT,
               DAMAGED_CHECKPOINT)
    """Files that make a folder hold an earlier run (a fresh run refuses it without --overwrite)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    # ----------------------------------------------------------------------------------------------
    # Files

    @property
    def last_checkpoint(self) -> Path:
        return self.path / self.LAST_CHECKPOINT

    @property
    def final_checkpoint(self) -> Path:
        return self.path / self.FINAL_CHECKPOINT

    @property
    def previous_checkpoint(self) -> Path:
        return self.path / self.PREVIOUS_CHECKPOINT

    def keep_previous_checkpoint(self) -> None:
        """Before a new checkpoint_last.pth is written: the current one becomes checkpoint_previous.pth, so
        that a damaged last checkpoint never costs the whole run."""
        if self.last_checkpoint.is_file():
            os.replace(self.last_checkpoint, self.previous_checkpoint)

    def set_aside_damaged_last(self) -> Path:
        """Rename an unreadable checkpoint_last.pth out of the way (resuming from the previous one), so that the
        next checkpoint does not push the good previous one out for it. Returns where it went."""
        target = self.path / self.DAMAGED_CHECKPOINT
        if self.last_checkpoint.is_file():
            os.replace(self.last_checkpoint, target)
        return target

    def checkpoints_to_resume(self) -> list[Path]:
        """The checkpoints `--resume` may continue from, newest first."""
        return [p for p in (self.last_checkpoint, self.previous_checkpoint) if p.is_file()]

    @property
    def metrics_log(self) -> Path:
        return self.path / self.METRICS

    @property
    def progress_file(self) -> Path:
        return self.path / self.PROGRESS

    @property
    def train_record(self) -> Path:
        return self.path / self.TRAIN

    @property
    def run_record(self) -> Path:
        return self.path / self.RUN

    @property
    def image_counts(self) -> Path:
        return self.path / self.IMAGE_COUNTS

    @property
    def status_file(self) -> Path:
        return self.path / self.STATUS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    def epoch_evaluation(self, epoch: int) -> RunFolder:
        """The folder of the evaluation after `epoch` epochs of training."""
        return RunFolder(self.path / self.EPOCH_EVALUATIONS / f"epoch_{epoch:03d}")

    def evaluation(self, key: EvaluationKey, row: str) -> RunFolder:
        """The folder under `evaluations/` that keeps the record of evaluation `key` of `row`."""
        return RunFolder(self.path / self.EVALUATIONS / key.folder_name(row))

    def read_run(self) -> RunRecord | None:
        """run.json, or None when the folder has none (a train-only run); ValueError when it is unreadable."""
        return RunRecord.read(self.run_record) if self.run_record.is_file() else None

    def read_training(self) -> TrainRecord | None:
        """train.json, or None when there is none; ValueError naming the file when it is unreadable."""
        if not self.train_record.is_file():
            return None
        try:
            return TrainRecord.read(self.train_record)
        except ValueError as err:
            raise ValueError(f"{self.train_record}: not a valid JSON training summary ({err}); fix or remove it") from None

    def remove_stale_temporaries(self) -> None:
        """Delete half-written files a killed run left behind (atomic writes name them `.<name>.*.tmp`)."""
        if self.path.is_dir():
            for stale in self.path.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------------
    # The lock

    @contextmanager
    def hold(self) -> Iterator[RunFolder]:
        """Hold the folder (created if needed) for the block; `RunFolderBusy` at once if another process holds
        it. Nested blocks in one process, and child processes of the holder, work under the same lock."""
        key = str(self.path.resolve()) if self.path.exists() else str(self.path.absolute())
        if key in _HELD_HERE:
            _HELD_HERE[key] += 1
            try:
                yield self
            finally:
                _HELD_HERE[key] -= 1
            return
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"run folder {self.path} is a file; expected a folder or a new path")
        created = _make_folder(self.path)
        try:
            handle = self._take_lock()
        except BaseException:
            _remove_if_empty(self.path, created)
            raise
        if handle is None:  # our parent process holds it for this same run: work under its lock
            yield self
            return
        key = str(self.path.resolve())
        _HELD_HERE[key] = 1
        previous = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = os.pathsep.join([*_held_by_parents(), key])
        try:
            yield self
        finally:
            if previous is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous
            del _HELD_HERE[key]
            self._release(handle, created)

    def _take_lock(self) -> Any:
        """The open, locked `.lock` handle; None when a parent process holds it for us. Retries when the
        file it locked was removed meanwhile by the holder releasing it (then it guards nothing)."""
        path = self.path / self.LOCK
        for _ in range(100):
            handle = open(path, "a+", encoding="utf-8")
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    handle.close()
                    raise
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                if str(self.path.resolve()) in _held_by_parents():
                    return None
                raise RunFolderBusy(f"run folder {self.path} is in use by {holder}; wait for it to finish, stop it, "
                                    "or choose another folder") from None
            try:
                same_file = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                handle.seek(0)
                handle.truncate()
                handle.write(f"process {os.getpid()} ({' '.join(sys.argv)[:200]})\n")
                handle.flush()
                return handle
            handle.close()
        raise RunFolderBusy(f"run folder {self.path}: could not take its lock (its .lock file keeps changing)")

    def _release(self, handle: Any, created: Path | None) -> None:
        """Tidy what a run that wrote nothing leaves (an empty log, a progress snapshot or curves without any
        checkpoint), still holding the lock; then remove the lock file while holding it (so nobody locks a file
        about to vanish), unlock, and remove the folder if this hold created it and it is empty."""
        try:
            if not any((self.path / name).exists() for name in self.RECORDS if name != self.METRICS):
                if self.metrics_log.is_file() and self.metrics_log.stat().st_size == 0:
                    self.metrics_log.unlink()
                if not self.metrics_log.exists():
                    self.progress_file.unlink(missing_ok=True)
                    shutil.rmtree(self.tensorboard_dir, ignore_errors=True)
            (self.path / self.LOCK).unlink(missing_ok=True)
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
            handle.close()
        _remove_if_empty(self.path, created)

    # ----------------------------------------------------------------------------------------------
    # The earlier-run policy: fresh, --resume or --overwrite

    def earlier_run(self, keep_log: bool = False) -> list[Path]:
        """What an earlier run left here: its records and checkpoints, its TensorBoard events, and anything
        under `eval/` and `evaluations/` (whoever wrote it). `keep_log`: its logs alone (metrics.jsonl,
        tensorboard/) do not count (a run cut short before its first checkpoint, which `--resume` may restart)."""
        found = [self.path / name for name in self.RECORDS if (self.path / name).is_file()]
        found = [p for p in found if p.name != self.METRICS or (p.stat().st_size > 0 and not keep_log)]
        if not keep_log and self.tensorboard_dir.is_dir() and any(self.tensorboard_dir.iterdir()):
            found.append(self.tensorboard_dir)
        for folder in (self.EPOCH_EVALUATIONS, self.EVALUATIONS):
            if (self.path / folder).is_dir() and any((self.path / folder).iterdir()):
                found.append(self.path / folder)
        return found

    def refuse_earlier_run(self, keep_log: bool = False) -> None:
        """ValueError naming what is there when the folder holds an earlier run (or things in its evaluation
        folders) that a fresh run would have to delete."""
        found = self.earlier_run(keep_log)
        if found:
            names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found)
            raise ValueError(f"{self.path} holds an earlier run ({names}); pass --resume to continue it, "
                             "--overwrite to replace it (deleting those), or another --out")

    def clear_earlier_run(self, log: Callable[[str], None]) -> None:
        """Delete an earlier run's files (with --overwrite), saying what goes. Under `eval/` and `evaluations/`
        only evaluation folders of ours are deleted; anything else there is refused, named, and kept."""
        self.check_clearable()
        doomed_folders = [self.path / name for name in (self.EPOCH_EVALUATIONS, self.EVALUATIONS)
                          if (self.path / name).is_dir()]
        doomed = [p for p in self.earlier_run() if p.is_file()] + [self.progress_file] * self.progress_file.exists()
        if self.tensorboard_dir.is_dir():  # the earlier run's curves: the new run starts its own
            doomed_folders.append(self.tensorboard_dir)
        if doomed or doomed_folders:
            names = [p.name for p in doomed] + [f"{p.name}/ ({sum(1 for _ in p.rglob('*') if _.is_file())} files)"
                                                 for p in doomed_folders]
            log(f"overwrite: {self.path}: deleting the earlier run's {', '.join(names)}")
        for path in doomed:
            path.unlink(missing_ok=True)
        for folder in doomed_folders:
            shutil.rmtree(folder)

    # ----------------------------------------------------------------------------------------------
    # Which training a checkpoint belongs to; which evaluation a record is

    def training_of(self, checkpoint: str | os.PathLike, content: Mapping[str, Any]) -> TrainRecord | None:
        """The train.json of this folder when it describes the training that produced `checkpoint` (a file of
        this folder, whose loaded `content` is given), else None: a record never claims another checkpoint's
        training. That is the final checkpoint, or the last one when it holds the same iteration (a run resumed
        for longer and stopped has a newer last checkpoint)."""
        name = Path(checkpoint).name
        if Path(checkpoint).parent.resolve() != self.path.resolve() or name not in (self.FINAL_CHECKPOINT,
                                                                                    self.LAST_CHECKPOINT):
            return None
        training = self.read_training()
        if training is None:
            return None
        if name == self.LAST_CHECKPOINT and content.get("iteration") != training.iterations:
            return None
        return training

    def check_clearable(self) -> None:
        """ValueError naming them when `eval/` or `evaluations/` hold files that no run wrote (which
        `clear_earlier_run` would refuse to delete). Read-only: every process of a run can ask."""
        for folder in (self.EPOCH_EVALUATIONS, self.EVALUATIONS):
            parent = self.path / folder
            foreign = _not_written_by_us(parent) if parent.is_dir() else []
            if foreign:
                raise ValueError(
                    f"{parent} holds files that no run wrote ({', '.join(str(p) for p in foreign[:5])}"
                    f"{', ...' if len(foreign) > 5 else ''}); move them away or choose another --out "
                    "(--overwrite deletes only what runs wrote)")

    def check_may_record(self, key: EvaluationKey) -> None:
        """Each evaluation keeps its own record: an existing run.json of another evaluation is never replaced
        (ValueError), re-running the same evaluation refreshes it. One exception: the folder's final
        checkpoint may replace the record of another checkpoint of the same folder evaluated the same way
        (checkpoint_last.pth evaluated while the run was interrupted), which the finished run makes out of
        date. An unreadable run.json is not ours: replacing it loses nothing."""
        try:
            old = self.read_run()
        except ValueError:
            return
        if old is None:
            return
        old_key = EvaluationKey.of_record(old)
        if old_key == key:
            return
        new = Path(key.checkpoint) if key.checkpoint else None
        if (new is not None and new.name == self.FINAL_CHECKPOINT and old_key.checkpoint is not None
                and Path(old_key.checkpoint).parent == new.parent
                and dataclasses.replace(old_key, checkpoint=None) == dataclasses.replace(key, checkpoint=None)):
            return
        raise ValueError(
            f"{self.run_record} already records another evaluation (checkpoint {old.checkpoint}, "
            f"{old.data.dataset} {old.data.split} at {old.data.root}, {old_key.precision}); pass another --out "
            "(each evaluation keeps its own folder)"
        )

    @classmethod
    def for_evaluation(cls, checkpoint: str | os.PathLike, key: EvaluationKey, row: str) -> RunFolder:
        """Where an evaluation of `checkpoint` goes when given no folder: the checkpoint's own folder, unless
        its run.json records another evaluation; then `evaluations/<key.folder_name(row)>` there."""
        home = cls(Path(checkpoint).parent)
        try:
            home.check_may_record(key)
            return home
        except ValueError:
            return home.evaluation(key, row)


@contextmanager
def hold_on_main(folder: RunFolder, processes: Processes) -> Iterator[RunFolder]:
    """`folder.hold()` by the main process of a run, agreed by all: when the main process cannot take the folder,
    every process raises (the main one its own error), instead of the others waiting for it in a collective."""
    if processes.world_size == 1:
        with folder.hold():
            yield folder
        return
    with ExitStack() as stack:
        error = None
        if processes.is_main:
            try:
                stack.enter_context(folder.hold())
            except (ValueError, OSError) as refused:
                error = refused
        if sum_over_processes(torch.tensor([float(error is not None)])).item() > 0:
            if error is not None:
                raise error
            raise RunFolderBusy(f"the main process could not take run folder {folder.path}; its message says why")
        yield folder


def _held_by_parents() -> list[str]:
    return [p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p]


def _make_folder(path: Path) -> Path | None:
    """Create `path` with its missing parents; returns the topmost folder this call created (None: none)."""
    path = path.absolute()
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for ancestor in path.parents:
        if ancestor.exists() and not ancestor.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{ancestor} is a file; the run folder {path} cannot be made there")
        if ancestor.exists():
            break
    path.mkdir(parents=True, exist_ok=True)
    return missing[-1] if missing else None


def _remove_if_empty(path: Path, created: Path | None) -> None:
    """Remove `path` and its parents up to `created` (the topmost folder made for it) while they are empty."""
    if created is None:
        return
    for folder in (path.absolute(), *path.absolute().parents):
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == created:
            return


def _not_written_by_us(parent: Path) -> list[Path]:
    """Files under `parent` (an `eval/` or `evaluations/` folder) that are not part of a run folder of ours:
    every sub-folder must hold only run-folder file names."""
    ours = set(RunFolder.RECORDS) | {RunFolder.PROGRESS, RunFolder.STATUS, RunFolder.LOCK}
    foreign = []
    for entry in sorted(parent.iterdir()):
        if not entry.is_dir():
            foreign.append(entry)
            continue
        for path in sorted(entry.rglob("*")):
            if path.is_file() and path.name not in ours and not path.name.endswith(".tmp"):
                foreign.append(path)
    return foreign


__all__ = ["RunFolder", "RunFolderBusy", "EvaluationKey", "HELD_ENV", "hold_on_main"]
