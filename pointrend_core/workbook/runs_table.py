"""The tables over a folder of runs, as pandas DataFrames, from run records only.

Every evaluated run leaves `runs/<name>/run.json` (an `engine.records.RunRecord`). From those:

- `collect_runs(runs_dir)`: one line per run.json, numeric columns, mIoU-style scores in percent;
- `results_table(runs_dir)`: the model-zoo table, one line per `ROWS` entry, where a row without a run says
  "not run" in every measured cell (published numbers are never copied into the reproduced columns);
- `runs_display(runs)`: the lines of `collect_runs` for reading.

Scores and intervals as in `workbook.tables`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from pointrend_core.config import DATASETS, ROWS
from pointrend_core.engine.intervals import NO_INTERVAL, RunIntervals, gain_text, verdict
from pointrend_core.engine.records import RunRecord, TrainRecord
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.workbook.tables import format_duration, interval_cell, nan_if_none, run_intervals, to_the_minute

NOT_RUN = "not run"

RUN_COLUMNS = [
    "row",
    "dataset",
    "run_dir",
    "published_miou",
    "miou_refined",
    "miou_coarse",
    "boundary_iou_refined",
    "boundary_iou_coarse",
    "train_seconds",
    "train_iters",
    "hardware",
    "checkpoint",
    "eval_images",
    "val_images",
    "inference",
    "finished",
    "intervals",
    "overrides",
]
"""Columns of `collect_runs` ("intervals": the run's `RunIntervals`, None when it has none; "overrides": the
`--set` changes of its recipe, a tuple, empty for the recipe itself)."""

TABLE_COLUMNS = [
    "published mIoU",
    "reproduced mIoU (refined)",
    "95 % interval",
    "verdict",
    "difference",
    "coarse mIoU",
    "gain refined − coarse",
    "boundary IoU refined",
    "boundary IoU coarse",
    "seeds",
    "training time",
    "hardware",
    "source",
]
"""Columns of `results_table` (its index is the row name)."""


def hardware(environment: Mapping[str, Any], world_size: int = 1) -> str | None:
    """'8 × NVIDIA A100-SXM4-80GB' or 'CPU, 2 cores (Intel Xeon ...)' from a run's environment record."""
    name = environment.get("device_name")
    if name is None:
        return None
    if str(environment.get("device", "")).startswith("cuda"):
        return f"{world_size} × {name}"
    return f"CPU, {environment.get('cpu_count')} cores ({name})"


def run_summary(run: RunRecord, path: str | os.PathLike) -> dict[str, Any]:
    """The table fields (`RUN_COLUMNS`) of the run.json at `path`; scores in percent."""
    refined, coarse, training = run.metrics.refined, run.metrics.coarse, run.training or TrainRecord()
    return {
        "row": run.row,
        "dataset": dataset_label(run.data.dataset, run.data.root),
        "run_dir": str(Path(path).parent),
        "published_miou": nan_if_none(run.published_mIoU),
        "miou_refined": nan_if_none(refined.mIoU),
        "miou_coarse": nan_if_none(coarse.mIoU),
        "boundary_iou_refined": nan_if_none(refined.boundary_mIoU),
        "boundary_iou_coarse": nan_if_none(coarse.boundary_mIoU),
        "train_seconds": nan_if_none(training.wall_seconds),
        "train_iters": training.iterations,
        "hardware": hardware(training.environment or run.environment, training.world_size),
        "checkpoint": run.checkpoint,
        "eval_images": run.data.num_images,
        "val_images": run.data.dataset_size,
        "inference": inference_label(run),
        "finished": run.environment.get("date"),
        "intervals": run_intervals(run, Path(path).parent),
        "overrides": tuple((run.config or {}).get("overrides") or ()),
    }


def inference_label(run: RunRecord) -> str | None:
    """How the evaluation ran: "fp32", "bf16, compiled", ... (None for records older than the field)."""
    precision = run.timing.precision
    if precision is None:
        return None
    return f"{precision}, compiled" if run.timing.compiled else precision


def dataset_label(class_name: str | None, root: str | None = None) -> str:
    """'voc', 'cityscapes', ... by the `--dataset` name of a dataset class; a folder as 'folder (<its name>)'."""
    names = {cls.__name__: name for name, cls in DATASETS.items()}
    label = names.get(class_name or "", class_name or "—")
    return f"folder ({Path(root).name})" if label == "folder" and root else label


def runs_display(runs: pd.DataFrame) -> pd.DataFrame:
    """`collect_runs`'s table for reading: one line per run folder, plain column names, "—" for what a run
    did not record, times as durations."""
    def score(value: Any) -> Any:
        return "—" if pd.isna(value) else round(float(value), 2)

    lines = []
    for _, run in runs.iterrows():
        evaluated = "—" if pd.isna(run["eval_images"]) else f"{int(run['eval_images'])}"
        if not pd.isna(run["val_images"]) and not pd.isna(run["eval_images"]):
            evaluated += f" of {int(run['val_images'])}"
        lines.append(
            {
                "run folder": Path(run["run_dir"]).name,
                "row": run["row"],
                "mIoU refined": score(run["miou_refined"]),
                "mIoU coarse": score(run["miou_coarse"]),
                "boundary refined": score(run["boundary_iou_refined"]),
                "boundary coarse": score(run["boundary_iou_coarse"]),
                "training": "—" if pd.isna(run["train_iters"]) else
                f"{int(run['train_iters'])} it, {format_duration(run['train_seconds'])}",
                "hardware": run["hardware"] or "—",
                "val images": evaluated,
                "inference": run["inference"] or "—",
                "finished": to_the_minute(run["finished"]) or "—",
            }
        )
    return pd.DataFrame(lines, columns=RUNS_DISPLAY_COLUMNS).set_index("run folder")


RUNS_DISPLAY_COLUMNS = [
    "run folder", "row", "mIoU refined", "mIoU coarse", "boundary refined", "boundary coarse", "training",
    "hardware", "val images", "inference", "finished",
]


def _read_runs(runs_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(`run_summary` of every readable `runs_dir/*/run.json`, (path, reason) of every unreadable one)."""
    root = Path(runs_dir)
    paths = sorted(root.glob(f"*/{RunFolder.RUN}")) if root.is_dir() else []
    readable, unreadable = [], []
    for path in paths:
        try:
            readable.append(run_summary(RunRecord.read(path), path))
        except (ValueError, OSError, TypeError, AttributeError) as error:
            unreadable.append((str(path), str(error).removeprefix(f"{path}: ").removeprefix(f"{path} ")))
    return readable, unreadable


def collect_runs(runs_dir: str | os.PathLike) -> pd.DataFrame:
    """One line per `runs_dir/*/run.json`, columns `RUN_COLUMNS`, scores in percent, sorted by row and folder.

    A run.json that cannot be read is left out of the lines and listed, with the reason, in the table's
    `attrs["unreadable"]` ((path, reason) pairs: `unreadable_runs`); a missing runs_dir gives an empty table.
    """
    readable, unreadable = _read_runs(runs_dir)
    table = pd.DataFrame.from_records(readable, columns=RUN_COLUMNS)
    table.attrs["unreadable"] = unreadable
    return table


def unreadable_runs(runs_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(path, reason) of every run.json under `runs_dir` that cannot be read as a run record."""
    return _read_runs(runs_dir)[1]


def _source(run: pd.Series) -> str:
    """How the evaluated weights came about (trained here and how long, or a given checkpoint), and on how
    much of the validation split, so a smoke-test run is never mistaken for a reproduction."""
    if not pd.isna(run["train_iters"]):
        iterations = int(run["train_iters"])
        source = f"trained here, {iterations} iteration{'' if iterations == 1 else 's'}"
    elif run["checkpoint"]:
        source = f"checkpoint {Path(str(run['checkpoint'])).name}"
    else:
        source = "untrained weights"
    if run["row"] not in ROWS:  # a row's recipe on another dataset: say which
        source += f"; on {run['dataset']}"
    evaluated, available = run["eval_images"], run["val_images"]
    if not pd.isna(evaluated) and not pd.isna(available) and evaluated < available:
        source += f"; {int(evaluated)} of {int(available)} val images"
    return source


def _pick_run(runs: pd.DataFrame, row: str) -> pd.Series | None:
    """The run shown for `row`: the one in the folder named after the row (the batch runner's), else the one
    finished last."""
    matching = runs[runs["row"] == row]
    if matching.empty:
        return None
    own = matching[matching["run_dir"].map(lambda d: Path(d).name == row)]
    chosen = own if not own.empty else matching.sort_values("finished", na_position="first")
    return chosen.iloc[-1]


def _seeds(runs: pd.DataFrame, run: pd.Series) -> str:
    """Mean and spread of the refined mIoU over every run of the row, with the same overrides, on the same
    images (several seeds):
    '3 runs: mean 68.10, sd 0.25, 67.80–68.35'; '1 run' when there is only the one shown."""
    same = runs[(runs["row"] == run["row"]) & (runs["overrides"] == run["overrides"]) & (
        runs["eval_images"].fillna(-1) == (-1 if pd.isna(run["eval_images"]) else run["eval_images"]))]
    values = same["miou_refined"].dropna().to_numpy(dtype=float)
    if len(values) < 2:
        return "1 run"
    return (f"{len(values)} runs: mean {values.mean():.2f}, sd {values.std(ddof=1):.2f}, "
            f"{values.min():.2f}–{values.max():.2f}")


def _interval_cells(run: pd.Series, published: Any) -> list[str]:
    """The "95 % interval", "verdict" and "gain refined − coarse" cells of one run."""
    intervals: RunIntervals | None = run["intervals"]
    refined = intervals.refined_mIoU if intervals is not None else None
    judged = "—" if published == "—" else verdict(refined, published).text
    if intervals is None:
        gain = f"{run['miou_refined'] - run['miou_coarse']:+.2f} ({NO_INTERVAL})"
    else:
        gain = gain_text(intervals.gain_mIoU)
    return [interval_cell(refined), judged, gain]


def results_table(runs_dir: str | os.PathLike) -> pd.DataFrame:
    """The model-zoo table: index = every `ROWS` name in order, then every other row that has a run (a row's
    recipe on another dataset, `config.on_dataset`), columns `TABLE_COLUMNS`.

    Measured cells are floats rounded to 2 decimals (percent), or NOT_RUN when the row has no run.json.
    The difference is reproduced (refined) minus published mIoU; "—" where nothing was published (demo,
    other datasets). "95 % interval" is the refined mIoU's bootstrap interval over the validation images;
    "verdict" says reproduced (the published value lies inside it), or below / above with the difference and
    its interval; "gain refined − coarse" is the paired interval of the refinement's gain, significant only
    when it excludes zero; "seeds" the mean and spread over every run of the row on the same images. Runs
    without recorded counts say "no interval: re-run evaluate" there.
    """
    runs = collect_runs(runs_dir)
    recipe = runs[runs["overrides"].map(len) == 0]  # a run with overrides is never the published row's
    lines = {}
    others = sorted(set(recipe["row"]) - set(ROWS))
    for name in [*ROWS, *others]:
        cfg = ROWS.get(name)
        published = "—" if cfg is None or cfg.published_miou is None else cfg.published_miou
        run = _pick_run(recipe, name)
        if run is None:
            lines[name] = [published] + [NOT_RUN] * (len(TABLE_COLUMNS) - 2) + [_not_evaluated(Path(runs_dir) / name)]
            continue
        lines[name] = _table_line(runs, run, published)
    for _, run in runs[runs["overrides"].map(len) > 0].iterrows():  # beside the row, with what was changed
        label = f"{run['row']} [{'; '.join(run['overrides'])}]"
        lines[label if label not in lines else f"{label} ({Path(run['run_dir']).name})"] = _table_line(runs, run, "—")
    for path, reason in runs.attrs.get("unreadable", []):  # named, with the reason, instead of stopping the table
        lines[f"{Path(path).parent.name} (unreadable)"] = ["—"] * (len(TABLE_COLUMNS) - 1) + [f"{path}: {reason}"]
    table = pd.DataFrame.from_dict(lines, orient="index", columns=TABLE_COLUMNS)
    table.index.name = "row"
    return table


def _not_evaluated(run_dir: Path) -> str:
    """The source cell of a row without run.json: what its folder holds and the command that evaluates it."""
    folder = RunFolder(run_dir)
    try:
        training = folder.read_training()
    except ValueError:
        training = None
    if training is None or not folder.final_checkpoint.is_file():
        return NOT_RUN
    return (f"trained ({training.iterations} iterations), not evaluated: python -m pointrend_core evaluate "
            f"--config {training.row} --checkpoint {folder.final_checkpoint}")


def _table_line(runs: pd.DataFrame, run: pd.Series, published: Any) -> list[Any]:
    """One run's cells of `results_table` (`published`: the row's published mIoU, or "—")."""
    interval, judged, gain = _interval_cells(run, published)
    return [
        published,
        round(run["miou_refined"], 2),
        interval,
        judged,
        "—" if published == "—" else round(run["miou_refined"] - published, 2),
        round(run["miou_coarse"], 2),
        gain,
        round(run["boundary_iou_refined"], 2),
        round(run["boundary_iou_coarse"], 2),
        _seeds(runs, run),
        format_duration(run["train_seconds"]),
        run["hardware"] or "—",
        _source(run),
    ]
