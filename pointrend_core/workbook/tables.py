"""The tables the notebooks and reports show, as pandas DataFrames, from run records and configs only.

Every evaluated run leaves `runs/<name>/run.json` (an `engine.records.RunRecord`). From those:

- `collect_runs(runs_dir)`: one line per run.json, numeric columns, mIoU-style scores in percent;
- `results_table(runs_dir)`: the model-zoo table, one line per `ROWS` entry, where a row without a run says
  "not run" in every measured cell (published numbers are never copied into the reproduced columns);
- one run: `run_overview`, `per_class_table`, `interval_table` and `verdict_text`; a recipe: `recipe_table`,
  `point_settings_table`; a sweep: `sweep_table`; the runs of a folder for reading: `runs_display`.

Scores are percentages (the model zoo publishes mIoU in %); the difference is reproduced minus published,
in percentage points. Intervals are 95 % bootstrap intervals over the validation images (`engine.intervals`,
explained for readers in docs/intervals.md); a run evaluated before per-image counts were recorded shows its
numbers with "no interval: re-run evaluate".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pointrend_core.config import DATASETS, ROWS, RowConfig
from pointrend_core.engine.image_counts import ImageCounts
from pointrend_core.engine.intervals import (
    NO_INTERVAL,
    Interval,
    RunIntervals,
    bootstrap_intervals,
    gain_text,
    is_significant,
    verdict,
)
from pointrend_core.engine.records import RunRecord, TrainRecord
from pointrend_core.engine.run_folder import RunFolder

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


def _score(value: Any) -> float:
    """run.json holds percentages, null for what could not be scored."""
    return float("nan") if value is None else float(value)


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
        "published_miou": _score(run.published_mIoU),
        "miou_refined": _score(refined.mIoU),
        "miou_coarse": _score(coarse.mIoU),
        "boundary_iou_refined": _score(refined.boundary_mIoU),
        "boundary_iou_coarse": _score(coarse.boundary_mIoU),
        "train_seconds": _score(training.wall_seconds),
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


def run_intervals(run: RunRecord, run_dir: str | os.PathLike | None = None) -> RunIntervals | None:
    """The run's bootstrap intervals: those in its record, else computed from the counts file in `run_dir`
    (a record written before intervals were) when it counts as many images as the record, else None
    (evaluated before per-image counts were kept)."""
    if run.intervals is not None:
        return run.intervals
    if run_dir is None or not RunFolder(run_dir).image_counts.is_file():
        return None
    counts = ImageCounts.load(RunFolder(run_dir).image_counts)
    if run.data.num_images is not None and counts.num_images != run.data.num_images:
        return None  # a file left by another evaluation: never judge a record by it
    return bootstrap_intervals(counts)


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


def _record(run: RunRecord | Mapping[str, Any]) -> RunRecord:
    return run if isinstance(run, RunRecord) else RunRecord.from_json(run)


def run_overview(run: RunRecord | Mapping[str, Any]) -> pd.DataFrame:
    """Refined vs coarse summary of one run: index [refined, coarse], columns mIoU, aAcc, mAcc, boundary mIoU
    (percent), and the refined-minus-coarse gain."""
    metrics = _record(run).metrics
    outputs = {"refined": metrics.refined, "coarse": metrics.coarse}
    table = pd.DataFrame(
        {
            name: {key: _score(getattr(output, key)) for key in ("mIoU", "aAcc", "mAcc", "boundary_mIoU")}
            for name, output in outputs.items()
        }
    ).T
    table.loc["gain (refined - coarse)"] = table.loc["refined"] - table.loc["coarse"]
    return table.rename(columns={"boundary_mIoU": "boundary mIoU"}).round(2)


def per_class_table(run: RunRecord | Mapping[str, Any]) -> pd.DataFrame:
    """Per-class IoU and boundary IoU (percent) of the refined and the coarse output, index = class name,
    with a final 'mean' line (the run's mIoU / boundary mIoU, i.e. NaN classes skipped)."""
    metrics = _record(run).metrics
    refined, coarse = metrics.refined, metrics.coarse
    columns = {
        "IoU refined": refined.IoU,
        "IoU coarse": coarse.IoU,
        "boundary IoU refined": refined.boundary_IoU,
        "boundary IoU coarse": coarse.boundary_IoU,
    }
    table = pd.DataFrame({name: pd.Series(values, dtype=float) for name, values in columns.items()})
    table.loc["mean"] = [_score(v) for v in (refined.mIoU, coarse.mIoU, refined.boundary_mIoU, coarse.boundary_mIoU)]
    table.index.name = "class"
    return table.round(2)


_INTERVAL_LINES = {
    "refined mIoU": ("refined_mIoU", "mIoU"),
    "coarse mIoU": ("coarse_mIoU", None),
    "boundary mIoU refined": ("refined_boundary_mIoU", None),
    "boundary mIoU coarse": ("coarse_boundary_mIoU", None),
    "gain refined − coarse (mIoU)": ("gain_mIoU", "gain"),
    "gain refined − coarse (boundary mIoU)": ("gain_boundary_mIoU", "gain"),
}


def _recorded_values(run: RunRecord) -> list[float]:
    """The recorded scores in `_INTERVAL_LINES` order (percent; gains refined minus coarse)."""
    refined, coarse = run.metrics.refined, run.metrics.coarse
    values = [_score(v) for v in (refined.mIoU, coarse.mIoU, refined.boundary_mIoU, coarse.boundary_mIoU)]
    return values + [values[0] - values[1], values[2] - values[3]]


def interval_table(run: RunRecord | Mapping[str, Any], run_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """One run's scores with their 95 % bootstrap intervals (docs/intervals.md): index = refined, coarse and
    boundary mIoUs and the two refined-minus-coarse gains; columns "value" (recorded, percent), "95 % interval",
    "method" (BCa or percentile), "published" and "verdict" (refined mIoU only), "significant" (gains only).

    A run without intervals keeps its values, with "no interval: re-run evaluate" in their place.
    """
    run = _record(run)
    intervals = run_intervals(run, run_dir)
    lines = {}
    for (label, (field, role)), value in zip(_INTERVAL_LINES.items(), _recorded_values(run)):
        interval = getattr(intervals, field) if intervals is not None else None
        line = {"value": round(value, 2), "95 % interval": _interval_cell(interval, signed=role == "gain"),
                "method": interval.method if interval is not None else "—", "published": "—", "verdict": "—",
                "significant": "—"}
        if role == "mIoU" and run.published_mIoU is not None:
            line["published"] = run.published_mIoU
            line["verdict"] = verdict(interval, run.published_mIoU).text
        if role == "gain" and interval is not None and interval.defined:
            line["significant"] = "yes" if is_significant(interval) else "no"
        lines[label] = line
    return pd.DataFrame.from_dict(lines, orient="index")


def _interval_cell(interval: Interval | None, signed: bool = False) -> str:
    """'[67.01, 69.20]' ('[-0.20, +0.81]' signed); NO_INTERVAL without intervals; 'no interval: one image'
    where the interval is undefined."""
    if interval is None:
        return NO_INTERVAL
    if not interval.defined:
        return "no interval: " + (interval.method or "none").removeprefix("none (").removesuffix(")")
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"[{fmt.format(interval.low)}, {fmt.format(interval.high)}]"


def verdict_text(run: RunRecord | Mapping[str, Any], run_dir: str | os.PathLike | None = None) -> str:
    """The verdict of one run in a few Markdown sentences for its report: reproduced / below / above the
    published mIoU, whether the refinement's gain is significant, how the intervals were made, and where
    they are explained (docs/intervals.md, named in words: reports are read away from the project folder)."""
    run = _record(run)
    intervals = run_intervals(run, run_dir)
    if intervals is None:
        gain = _score(run.metrics.refined.mIoU) - _score(run.metrics.coarse.mIoU)
        published = "" if run.published_mIoU is None else f" (published {run.published_mIoU:.2f})"
        return (f"**{NO_INTERVAL}.** Recorded refined mIoU {_score(run.metrics.refined.mIoU):.2f}{published}, "
                f"gain refined − coarse {gain:+.2f}; this evaluation kept no per-image counts, so no interval "
                "and no verdict can be given.")
    judged = verdict(intervals.refined_mIoU, run.published_mIoU)
    images = f"{intervals.num_images} validation image{'' if intervals.num_images == 1 else 's'}"
    if intervals.refined_mIoU.defined:
        how = (f"Intervals: {intervals.confidence:.0%} bootstrap over the {images} ({intervals.resamples:,} "
               f"resamples, seed {intervals.seed}, {intervals.refined_mIoU.method}).")
    else:
        how = f"No intervals: {_interval_cell(intervals.refined_mIoU).removeprefix('no interval: ')} ({images})."
    return " ".join([
        f"**{judged.sentence}**",
        f"Refinement's gain in mIoU (refined − coarse, paired): {gain_text(intervals.gain_mIoU)}; "
        f"in boundary mIoU: {gain_text(intervals.gain_boundary_mIoU)}.",
        how,
        "Intervals cover the choice of validation images, not training randomness (run the row with several "
        "seeds for that); see docs/intervals.md in the project.",
    ])


def recipe_table(row: RowConfig, checkpoint: str | os.PathLike | None = None) -> pd.DataFrame:
    """The row's recipe in one column ("setting"), for the top of a report: network, data, schedule, points."""
    model, data, schedule = row.model, row.data, row.schedule
    settings = {
        "row": row.name,
        "network": f"ResNet-{model.depth} v1c, output stride {model.output_stride}, FPN {model.fpn_channels} ch",
        "dataset": f"{data.dataset.__name__} (train {data.train_split}, evaluate {data.val_split})",
        "training crop": f"{data.crop_size[0]} × {data.crop_size[1]}",
        "test-time resize": f"to fit {data.base_size[0]} × {data.base_size[1]} (long × short side)",
        "schedule": f"{schedule.epochs} epochs, batch {schedule.batch_size}, SGD lr {schedule.lr:g} poly",
        "training points": f"N = {model.train_num_points} (k = {model.oversample_ratio:g}, "
                           f"β = {model.importance_sample_ratio:g})",
        "subdivision": f"{model.subdivision_steps} steps × {model.subdivision_num_points} points",
        "weights": Path(checkpoint).name if checkpoint else "trained here",
    }
    return pd.Series(settings).to_frame("setting")


def point_settings_table(row: RowConfig, sample: Any) -> pd.DataFrame:
    """The point-selection settings of `row` and the image (`analysis.EvalSample`) the figures show."""
    model = row.model
    _, _, height, width = sample.input.shape
    n = model.train_num_points
    settings = {
        "image": sample.title,
        "network input": f"{height} × {width}",
        "label": f"{sample.gt.shape[0]} × {sample.gt.shape[1]}",
        "training candidates (k·N)": int(model.oversample_ratio * n),
        "training points, uncertain (β·N)": int(model.importance_sample_ratio * n),
        "training points, random ((1-β)·N)": n - int(model.importance_sample_ratio * n),
        "subdivision": f"{model.subdivision_steps} steps × {model.subdivision_num_points} points",
    }
    return pd.Series(settings).to_frame("setting")


def sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """`analysis.subdivision_sweep`'s table for reading: scores to 2 decimals, time in ms, the row's setting
    marked."""
    table = pd.DataFrame(
        {
            "steps": sweep["steps"],
            "points per step": [("—" if s == 0 else int(p)) for s, p in zip(sweep["steps"], sweep["points"])],
            "mIoU": sweep["mIoU"].round(2),
            "boundary mIoU": sweep["boundary_mIoU"].round(2),
            "ms / image": (1000 * sweep["seconds_per_image"]).round(0).astype(int),
            "row's setting": ["✓" if flag else "" for flag in sweep.get("row_setting", [False] * len(sweep))],
        }
    )
    return table.set_index("steps")


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


def to_the_minute(timestamp: str | None) -> str:
    """'2026-12-02T03:42:22+00:00' -> '2026-12-02 03:42' (times are recorded in UTC); '' for None."""
    return str(timestamp)[:16].replace("T", " ") if timestamp else ""


def format_duration(seconds: float) -> str:
    """12.3 -> '12 s', 754 -> '12 min 34 s', 7530 -> '2 h 05 min'."""
    if seconds is None or not np.isfinite(seconds):
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


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
    return [_interval_cell(refined), judged, gain]


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
