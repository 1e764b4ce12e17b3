"""Running one table row from a notebook: optional small-scale overrides, training (in this process, or under
`torch.distributed.run` for several GPUs), then the evaluation that writes run.json.

The notebooks call these functions; the batch runner (`workbook.runner`) only injects their parameters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pointrend_core.config import DATASETS, RowConfig, get_row, on_dataset
from pointrend_core.overrides import apply_overrides, format_value
from pointrend_core.engine.evaluate import evaluate_run
from pointrend_core.engine.records import RunRecord
from pointrend_core.checks import check_counts
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.engine.train import TrainOptions, train
from pointrend_core.model import PointRend, build_model
from pointrend_core.model.inference import Precision, check_precision


def project_dir(start: str | os.PathLike | None = None) -> Path:
    """The source checkout at or above `start` (default: the working directory), i.e. the nearest folder
    holding both pyproject.toml and notebooks/; `start` itself when there is none.

    JupyterLab starts a notebook's kernel in the notebook's own folder; changing to this folder first makes
    the rows' relative defaults (data/..., runs/...) mean the same in JupyterLab, in papermill and on the CLI.
    """
    start = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return start


def configure_row(
    config: str,
    *,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    crop_size: Sequence[int] | None = None,
    base_size: Sequence[int] | None = None,
    batch_size: int | None = None,
    overrides: Sequence[str] = (),
) -> RowConfig:
    """The row `config` on its dataset with `overrides` (`section.field=value`, as `--set` takes them).

    `dataset` runs the row's recipe on another dataset (`config.on_dataset`; a folder needs `data_root`).
    crop_size (h, w), base_size (long, short) and batch_size are spellings of the overrides data.crop_size,
    data.base_size and schedule.batch_size (None keeps the recipe's value), applied before `overrides`. A run
    with overrides is not the recipe: its records carry them and the reports show them.
    """
    spelled = {"data.crop_size": crop_size, "data.base_size": base_size, "schedule.batch_size": batch_size}
    shortcuts = [f"{key}={format_value(tuple(value) if isinstance(value, (list, tuple)) else value)}"
                 for key, value in spelled.items() if value is not None]
    return apply_overrides(on_dataset(get_row(config), dataset, data_root), [*shortcuts, *overrides])


def distributed_command(
    row: RowConfig,
    data_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    gpus: int,
    *,
    max_iters: int | None,
    seed: int,
    device: str,
    workers: int | None = None,
    pretrained_backbone: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """`python -m torch.distributed.run --nproc_per_node=<gpus> -m pointrend_core train ...` for this row: the
    CLI rebuilds it from its recipe's name, its dataset and its overrides (`--set` each)."""
    dataset = next((name for name, cls in DATASETS.items() if cls is row.data.dataset), None)
    rebuilt = apply_overrides(on_dataset(get_row(row.recipe or row.name), dataset if row.recipe else None, data_root),
                              row.overrides)
    if rebuilt != row:
        raise ValueError(f"row {row.name!r} differs from its recipe in a way the training CLI cannot express; "
                         "use --set overrides (config.on_dataset and overrides.apply_overrides) or gpus=1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
        "-m", "pointrend_core", "train", "--config", row.recipe or row.name, "--out-dir", str(out_dir),
        "--seed", str(seed), "--device", device, "--no-progress",
    ]
    optional = {
        "--dataset": dataset if row.recipe is not None else None,
        "--data-root": data_root,
        "--max-iters": max_iters,
        "--workers": workers,
        "--pretrained-backbone": pretrained_backbone,
    }
    for flag, value in optional.items():
        if value is not None:
            command += [flag, str(value)]
    command += (["--resume"] if resume else []) + (["--overwrite"] if overwrite else [])
    for override in row.overrides:
        command += ["--set", override]
    return command


def run_streaming(command: Sequence[str], keep: int = 20) -> None:
    """Run `command`, echoing its output line by line (so that a notebook shows it as it comes, rather than the
    kernel's terminal swallowing it); a non-zero exit raises RuntimeError with the last `keep` lines."""
    tail: deque[str] = deque(maxlen=keep)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line)
    if process.returncode != 0:
        raise RuntimeError(
            f"exit code {process.returncode} from: {' '.join(command)}\nlast output:\n{''.join(tail)}"
        )


def train_row(
    row: RowConfig,
    data_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    max_iters: int | None = None,
    gpus: int = 1,
    seed: int = 0,
    device: str = "cpu",
    workers: int | None = None,
    pretrained_backbone: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Train `row` into `out_dir`; returns the final checkpoint. gpus > 1 launches one process per GPU.
    `resume` continues an earlier run in `out_dir`, `overwrite` replaces it (`TrainOptions`).

    `workers` data-loader processes per training process (None: the row's), `pretrained_backbone` the
    ImageNet ResNet-v1c file the recipe starts from (None: random initialisation, with a note in the log).
    """
    out_dir = Path(out_dir)
    if gpus > 1:
        command = distributed_command(
            row, data_root, out_dir, gpus, max_iters=max_iters, seed=seed, device=device, workers=workers,
            pretrained_backbone=pretrained_backbone, resume=resume, overwrite=overwrite,
        )
        run_streaming(command)
        return RunFolder(out_dir).final_checkpoint
    options = TrainOptions(
        max_iters=max_iters, seed=seed, device=device, workers=workers, pretrained_backbone=pretrained_backbone,
        resume=resume, overwrite=overwrite,
        progress=False,  # a notebook keeps every bar refresh as output; metrics.jsonl has the numbers
    )
    return Path(train(row, data_root, out_dir, options))


@dataclass(frozen=True)
class RowRun:
    """What `train_and_evaluate` leaves: the run.json content, the evaluated checkpoint, and the network with
    those weights (eval mode, on the evaluation device) for the figures that follow."""

    record: RunRecord
    checkpoint: Path
    model: PointRend


def train_and_evaluate(
    row: RowConfig,
    data_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    max_iters: int | None = None,
    gpus: int = 1,
    seed: int = 0,
    device: str = "cpu",
    workers: int | None = None,
    pretrained_backbone: str | os.PathLike | None = None,
    max_eval_images: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    precision: Precision = "fp32",
    compile: bool = False,
) -> RowRun:
    """Train (unless `checkpoint` is given: then that checkpoint is evaluated), evaluate refined and coarse
    outputs on the validation split (the first `max_eval_images` only, when given) and write out_dir/run.json.
    The evaluation runs at `precision`, its features compiled with `compile` (`evaluate_run`); the training
    arguments are `train_row`'s."""
    check_precision(precision, device)  # before a training, not after it
    check_counts({"max_iters": max_iters, "gpus": gpus, "seed": seed, "workers": workers,
                  "max_eval_images": max_eval_images})
    if checkpoint is None:
        checkpoint = train_row(
            row, data_root, out_dir, max_iters=max_iters, gpus=gpus, seed=seed, device=device, workers=workers,
            pretrained_backbone=pretrained_backbone, resume=resume, overwrite=overwrite,
        )
    model = build_model(row)
    record = evaluate_run(
        row, checkpoint, data_root, out_dir, device, max_images=max_eval_images, model=model, progress=False,
        replace=overwrite, precision=precision, compile=compile,
    )
    return RowRun(record, Path(checkpoint), model.eval())
