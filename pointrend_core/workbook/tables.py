"""The tables of one run and of a recipe that the notebooks and reports show, as pandas DataFrames, from run
records and configs only (the tables over a folder of runs are `workbook.runs_table`'s).

- one run: `run_overview`, `per_class_table`, `interval_table` and `verdict_text`; a recipe: `recipe_table`,
  `point_settings_table`; a sweep: `sweep_table`;
- shared with the runs table and the terminal summary: `run_intervals`, `interval_cell`, `nan_if_none`,
  `format_duration`, `to_the_minute`.

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

from pointrend_core.config import RowConfig
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
from pointrend_core.engine.records import RunRecord
from pointrend_core.engine.run_folder import RunFolder


def nan_if_none(value: Any) -> float:
    """run.json holds percentages, null for what could not be scored."""
    return float("nan") if value is None else float(value)


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


def _record(run: RunRecord | Mapping[str, Any]) -> RunRecord:
    return run if isinstance(run, RunRecord) else RunRecord.from_json(run)


def run_overview(run: RunRecord | Mapping[str, Any]) -> pd.DataFrame:
    """Refined vs coarse summary of one run: index [refined, coarse], columns mIoU, aAcc, mAcc, boundary mIoU
    (percent), and the refined-minus-coarse gain."""
    metrics = _record(run).metrics
    outputs = {"refined": metrics.refined, "coarse": metrics.coarse}
    table = pd.DataFrame(
        {
            name: {key: nan_if_none(getattr(output, key)) for key in ("mIoU", "aAcc", "mAcc", "boundary_mIoU")}
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
    table.loc["mean"] = [nan_if_none(v) for v in (refined.mIoU, coarse.mIoU, refined.boundary_mIoU, coarse.boundary_mIoU)]
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
    values = [nan_if_none(v) for v in (refined.mIoU, coarse.mIoU, refined.boundary_mIoU, coarse.boundary_mIoU)]
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
        line = {"value": round(value, 2), "95 % interval": interval_cell(interval, signed=role == "gain"),
                "method": interval.method if interval is not None else "—", "published": "—", "verdict": "—",
                "significant": "—"}
        if role == "mIoU" and run.published_mIoU is not None:
            line["published"] = run.published_mIoU
            line["verdict"] = verdict(interval, run.published_mIoU).text
        if role == "gain" and interval is not None and interval.defined:
            line["significant"] = "yes" if is_significant(interval) else "no"
        lines[label] = line
    return pd.DataFrame.from_dict(lines, orient="index")


def interval_cell(interval: Interval | None, signed: bool = False) -> str:
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
        gain = nan_if_none(run.metrics.refined.mIoU) - nan_if_none(run.metrics.coarse.mIoU)
        published = "" if run.published_mIoU is None else f" (published {run.published_mIoU:.2f})"
        return (f"**{NO_INTERVAL}.** Recorded refined mIoU {nan_if_none(run.metrics.refined.mIoU):.2f}{published}, "
                f"gain refined − coarse {gain:+.2f}; this evaluation kept no per-image counts, so no interval "
                "and no verdict can be given.")
    judged = verdict(intervals.refined_mIoU, run.published_mIoU)
    images = f"{intervals.num_images} validation image{'' if intervals.num_images == 1 else 's'}"
    if intervals.refined_mIoU.defined:
        how = (f"Intervals: {intervals.confidence:.0%} bootstrap over the {images} ({intervals.resamples:,} "
               f"resamples, seed {intervals.seed}, {intervals.refined_mIoU.method}).")
    else:
        how = f"No intervals: {interval_cell(intervals.refined_mIoU).removeprefix('no interval: ')} ({images})."
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
