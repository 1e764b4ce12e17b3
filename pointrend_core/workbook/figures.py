"""Figures for the notebooks and reports: point selection, subdivision steps, predictions, training curves.

Every function takes plain tensors (or arrays) and returns a matplotlib `Figure`; nothing is shown or saved
here, so the notebooks decide where figures go and the tests can inspect them.

Shapes: images are uint8 (3, H, W) RGB (use `data.transforms.denormalize` on network inputs); label maps are
integer (H, W) with `IGNORE_INDEX` for ignored pixels; point coordinates are (x, y) in [0, 1] with
align_corners=False, the convention of `model/points.py`. Images and label maps are drawn on the unit square
(`extent=(0, 1, 1, 0)`), so maps of different resolutions (coarse stride-4 logits, refined logits, the
original-size ground truth) line up with each other and with the points without any rescaling.

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot: they are never shown by
accident, never pile up in pyplot's figure registry, and do not depend on the active backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pointrend_core.engine.train_log import read_train_log
from pointrend_core.labels import IGNORE_INDEX

if TYPE_CHECKING:
    from pointrend_core.model.pointrend import PointRendOutput
    from pointrend_core.model.points import TrainingPoints

IGNORE_COLOR = (200, 200, 200)
"""Neutral light grey for ignored pixels: distinct from every dataset palette's saturated class colours and
from VOC's black background."""

OUTPUT_COLORS = {"published": "#8c8c8c", "refined": "#1f77b4", "coarse": "#ff7f0e", "total": "#333333"}
"""One colour per output in every chart: the published number grey, the refined output (and the point head
that makes it) blue, the coarse output (and its auxiliary loss) orange."""

MAX_LEGEND_CLASSES = 24
"""Class legends list at most this many classes (those covering most pixels of the figure), so that an
ADE20k figure with 150 classes stays readable."""

UNIT_EXTENT = (0.0, 1.0, 1.0, 0.0)
"""imshow extent (left, right, bottom, top) mapping any image onto [0, 1]^2 with y pointing down."""

# Marker styles for the three kinds of training points; distinct in shape and colour so they read in print.
_CANDIDATE_STYLE = dict(marker=".", s=5, c="orange", alpha=0.8, linewidths=0)
_UNCERTAIN_STYLE = dict(marker="x", s=14, c="red", linewidths=0.8)
_RANDOM_STYLE = dict(marker="o", s=12, facecolors="none", edgecolors="cyan", linewidths=0.8)


@dataclass(frozen=True)
class PredictionSample:
    """One row of `show_predictions`: image uint8 (3, H', W') and label maps (H, W); sizes may differ as long
    as the aspect ratio is the same (every panel is drawn on the unit square)."""

    image: torch.Tensor
    gt: torch.Tensor
    coarse: torch.Tensor
    refined: torch.Tensor
    title: str = ""


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def default_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours from matplotlib's qualitative maps, for callers without a dataset palette."""
    cmap = matplotlib.colormaps["tab20"]
    colors = [cmap(i % 20)[:3] for i in range(num_classes)]
    return (np.asarray(colors) * 255).round().astype(np.uint8).reshape(num_classes, 3)


def colorize(mask: torch.Tensor | np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Label map (H, W) int -> RGB (H, W, 3) uint8 through `palette` (K, 3); IGNORE_INDEX becomes IGNORE_COLOR.

    Raises ValueError naming the offending label when a value is neither in [0, K) nor IGNORE_INDEX.
    """
    labels = _numpy(mask)
    if labels.ndim != 2:
        raise ValueError(f"colorize expects a label map of shape (H, W), got shape {tuple(labels.shape)}")
    colors = np.asarray(palette, dtype=np.uint8)
    if colors.ndim != 2 or colors.shape[1] != 3:
        raise ValueError(f"colorize expects a palette of shape (K, 3), got shape {tuple(colors.shape)}")
    labels = labels.astype(np.int64)
    ignored = labels == IGNORE_INDEX
    invalid = ~ignored & ((labels < 0) | (labels >= len(colors)))
    if invalid.any():
        bad = int(labels[invalid][0])
        raise ValueError(
            f"label {bad} is outside the palette's {len(colors)} classes and is not the ignore label {IGNORE_INDEX}"
        )
    lookup = np.vstack([colors, np.asarray(IGNORE_COLOR, dtype=np.uint8)])
    return lookup[np.where(ignored, len(colors), labels)]


def _image_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 (3, H, W) -> (H, W, 3) for imshow; other dtypes are refused because their range is ambiguous."""
    array = _numpy(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(
            f"expected an image as uint8 (3, H, W), got {array.dtype} {tuple(array.shape)}; "
            "use pointrend_core.data.transforms.denormalize on normalised network inputs"
        )
    return array.transpose(1, 2, 0)


def _palette_or_default(palette: Sequence[Sequence[int]] | np.ndarray | None, num_classes: int) -> np.ndarray:
    return np.asarray(palette, dtype=np.uint8) if palette is not None else default_palette(num_classes)


def class_legend(
    fig: Figure,
    label_maps: Sequence[torch.Tensor | np.ndarray],
    palette: Sequence[Sequence[int]] | np.ndarray,
    classes: Sequence[str] | None = None,
    *,
    beside: bool = False,
) -> None:
    """A legend of the class colours that appear in `label_maps` (each (H, W) int), below the figure (or
    `beside` it, on the right, for figures that already have a legend below).

    Classes are named by `classes` (else "class i") and listed in class order; when more than
    `MAX_LEGEND_CLASSES` appear, those covering the most pixels of all maps together are kept. Ignored
    pixels get their own entry when present.
    """
    colors = np.asarray(palette, dtype=np.uint8)
    counts = np.zeros(len(colors) + 1, dtype=np.int64)  # the last slot counts ignored pixels
    for labels in label_maps:
        values = _numpy(labels).astype(np.int64).ravel()
        values = np.where(values == IGNORE_INDEX, len(colors), values)
        counts += np.bincount(values[(values >= 0) & (values <= len(colors))], minlength=len(colors) + 1)
    present = [int(i) for i in np.argsort(-counts[:-1], kind="stable") if counts[i] > 0][:MAX_LEGEND_CLASSES]
    handles = [
        Patch(facecolor=colors[i] / 255.0, edgecolor="#555", linewidth=0.5,
              label=classes[i] if classes is not None and i < len(classes) else f"class {i}")
        for i in sorted(present)
    ]
    if counts[-1] > 0:
        handles.append(Patch(facecolor=np.asarray(IGNORE_COLOR) / 255.0, edgecolor="#555", linewidth=0.5,
                             label="ignored"))
    if handles:
        fig.legend(handles=handles, loc="outside right upper" if beside else "outside lower center",
                   ncols=1 if beside else min(len(handles), 8), fontsize=9, frameon=False, title="classes",
                   title_fontsize=9)


def _show(ax: Axes, picture: np.ndarray, title: str, **kwargs) -> None:
    ax.imshow(picture, extent=UNIT_EXTENT, interpolation="nearest", aspect=_aspect(picture), **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_axis_off()


def _aspect(picture: np.ndarray) -> float:
    """The unit square would draw every map square; keep the picture's own height/width ratio instead."""
    return picture.shape[0] / picture.shape[1]


def _overlay(ax: Axes, image: np.ndarray, labels_rgb: np.ndarray, title: str) -> None:
    """The label colours blended over the image, so the points can be related to the picture and the mask."""
    _show(ax, image, title)
    ax.imshow(labels_rgb, extent=UNIT_EXTENT, interpolation="nearest", alpha=0.55, aspect=_aspect(image))


def _xy(points: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    array = _numpy(points).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def _argmax(logits: torch.Tensor, index: int) -> np.ndarray:
    """logits (B, C, h, w) -> labels (h, w) of batch element `index`."""
    return _numpy(logits[index].argmax(0))


def show_training_points(
    image: torch.Tensor,
    coarse_pred: torch.Tensor,
    points: TrainingPoints,
    *,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    index: int = 0,
) -> Figure:
    """The training-time point selection of one image, drawn over its coarse prediction.

    image: uint8 (3, H, W). coarse_pred: (h, w) int labels (argmax of the stride-4 coarse logits) for the
    same image. points: `model.points.TrainingPoints` with candidates (B, k*N, 2), points (B, N, 2) (the first
    `num_uncertain` = beta*N are the most uncertain candidates, the rest uniform random) for a batch
    containing the image at `index`.

    Panels: the image; the k*N uniform candidates; the beta*N chosen uncertain points and the (1-beta)*N
    random ones with distinct markers; the point markers and the class colours are explained below.
    """
    picture = _image_hwc(image)
    labels = _numpy(coarse_pred)
    # Without a dataset palette, colour as many classes as the prediction shows (C is not known here).
    colors = _palette_or_default(palette, int(labels[labels != IGNORE_INDEX].max(initial=0)) + 1)
    labels_rgb = colorize(labels, colors)
    candidates = _numpy(points.candidates[index])
    chosen = _numpy(points.points[index])
    k = int(points.num_uncertain)
    uncertain, rest = chosen[:k], chosen[k:]

    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax_image, ax_candidates, ax_chosen = fig.subplots(1, 3)
    _show(ax_image, picture, "image")
    _overlay(ax_candidates, picture, labels_rgb, f"{len(candidates)} uniform candidates (k·N)")
    ax_candidates.scatter(*_xy(candidates), **_CANDIDATE_STYLE)
    _overlay(ax_chosen, picture, labels_rgb, f"N = {len(chosen)} training points")
    ax_chosen.scatter(*_xy(uncertain), **_UNCERTAIN_STYLE)
    ax_chosen.scatter(*_xy(rest), **_RANDOM_STYLE)
    fig.legend(
        handles=[
            Line2D([], [], linestyle="none", marker=".", color="orange", label=f"candidates ({len(candidates)})"),
            Line2D(
                [], [], linestyle="none", marker="x", color="red", label=f"most uncertain, β·N ({len(uncertain)})"
            ),
            Line2D(
                [], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="cyan",
                label=f"uniform random, (1-β)·N ({len(rest)})",
            ),
        ],
        loc="outside lower center",
        ncols=3,
        fontsize=9,
    )
    class_legend(fig, [labels], colors, classes, beside=True)
    fig.suptitle("Training-time point selection over the coarse prediction", fontsize=11)
    return fig


def show_subdivision_steps(
    image: torch.Tensor,
    output: PointRendOutput,
    gt: torch.Tensor,
    *,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    index: int = 0,
) -> Figure:
    """Inference-time adaptive subdivision of one image, step by step.

    image: uint8 (3, H, W). output: `PointRendOutput` of a batch containing the image at `index`, with
    `coarse_logits` (B, C, h0, w0), `logits` (B, C, h, w) refined, and `steps[i]` holding `logits`
    (B, C, h_i, w_i) upsampled before refinement, `uncertainty` (B, 1, h_i, w_i) and `point_coords` (B, n_i, 2).
    gt: (H, W) labels at the original resolution.

    First row: image | coarse | refined | ground truth. Then one row per step: the upsampled prediction, the
    uncertainty map, the chosen points over the uncertainty map and over the image.
    """
    picture = _image_hwc(image)
    target = _numpy(gt)
    coarse = _argmax(output.coarse_logits, index)
    refined = _argmax(output.logits, index)
    step_preds = [_argmax(step.logits, index) for step in output.steps]
    colors = _palette_or_default(palette, output.logits.shape[1])

    rows = 1 + len(output.steps)
    fig = Figure(figsize=(13, 3.3 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, 4))
    _show(axes[0, 0], picture, f"image {picture.shape[0]}×{picture.shape[1]}")
    _show(axes[0, 1], colorize(coarse, colors), f"coarse {coarse.shape[0]}×{coarse.shape[1]}")
    _show(axes[0, 2], colorize(refined, colors), f"refined {refined.shape[0]}×{refined.shape[1]}")
    _show(axes[0, 3], colorize(target, colors), "ground truth")
    for i, (step, pred) in enumerate(zip(output.steps, step_preds), start=1):
        uncertainty = _numpy(step.uncertainty[index, 0])
        xs, ys = _xy(step.point_coords[index])
        h, w = pred.shape
        _show(axes[i, 0], colorize(pred, colors), f"step {i}: upsampled to {h}×{w}")
        _show(axes[i, 1], uncertainty, f"step {i}: uncertainty (top-2 margin)", cmap="viridis")
        _show(axes[i, 2], uncertainty, f"step {i}: {len(xs)} of {h * w} points chosen", cmap="viridis")
        axes[i, 2].scatter(xs, ys, s=1.5, c="red", marker=".", linewidths=0)
        _overlay(axes[i, 3], picture, colorize(pred, colors), f"step {i}: chosen points over the image")
        axes[i, 3].scatter(xs, ys, s=1.5, c="red", marker=".", linewidths=0)
    if output.steps:
        scale_image = axes[1, 1].get_images()[0]
        fig.colorbar(scale_image, ax=axes[1:, 1].tolist(), shrink=0.6, label="uncertainty (2nd - 1st logit)")
    class_legend(fig, [coarse, refined, target], colors, classes)
    fig.suptitle("Adaptive subdivision at inference (red dots: the cells re-predicted by the point head)", fontsize=11)
    return fig


def show_predictions(
    samples: Sequence[PredictionSample],
    palette: Sequence[Sequence[int]] | np.ndarray,
    classes: Sequence[str] | None = None,
) -> Figure:
    """Grid with one row per sample: image | ground truth | coarse | refined (labels colourised by `palette`,
    with a legend naming the classes shown, by `classes` when given)."""
    if not samples:
        raise ValueError("show_predictions needs at least one sample")
    fig = Figure(figsize=(12, 3.0 * len(samples)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(samples), 4))
    for row, sample in zip(axes, samples):
        prefix = f"{sample.title}: " if sample.title else ""
        _show(row[0], _image_hwc(sample.image), f"{prefix}image")
        _show(row[1], colorize(sample.gt, palette), "ground truth")
        _show(row[2], colorize(sample.coarse, palette), "coarse")
        _show(row[3], colorize(sample.refined, palette), "refined")
    class_legend(fig, [m for sample in samples for m in (sample.gt, sample.coarse, sample.refined)], palette, classes)
    return fig


def plot_training_curves(metrics_jsonl_path: str | os.PathLike) -> Figure:
    """Losses and learning rate against the iteration, from the trainer's metrics JSONL.

    Each line is a JSON object as `engine.train` writes it: `iteration`, the mean losses of the logging window
    (`loss`, `loss_aux`, `loss_point`: every name starting with `loss`), `lr`; records with `mIoU`- or
    `acc`-like columns are drawn as scores. Columns absent from the log are skipped.
    """
    df = read_train_log(metrics_jsonl_path)
    x = next((c for c in ("iteration", "iter", "step") if c in df.columns), None)
    if x is None:
        raise ValueError(
            f"{os.fspath(metrics_jsonl_path)} has no iteration column (expected one of iteration, iter, step); "
            f"columns: {', '.join(map(str, df.columns))}"
        )
    losses = [c for c in df.columns if str(c).startswith("loss")]
    scores = [c for c in df.columns if "miou" in str(c).lower() or "acc" in str(c).lower()]
    panels = [("loss", losses), ("learning rate", ["lr"] if "lr" in df.columns else []), ("score", scores)]
    panels = [(title, cols) for title, cols in panels if cols]
    if not panels:
        raise ValueError(f"{os.fspath(metrics_jsonl_path)} has no loss, lr or score column to plot")

    ylabels = {"loss": "cross-entropy (weighted)", "learning rate": "learning rate", "score": "score (%)"}
    fig = Figure(figsize=(4.5 * len(panels), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, cols) in zip(axes, panels):
        for col in cols:
            series = df[[x, col]].dropna()
            label, color, style = _CURVE_STYLES.get(str(col), (str(col), None, "-"))
            ax.plot(series[x], series[col], style, marker="." if len(series) < 30 else None, label=label, color=color)
        ax.set_xlabel(x)
        ax.set_ylabel(ylabels[title])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


_CURVE_STYLES = {
    "loss": ("total", OUTPUT_COLORS["total"], "-"),
    "loss_aux": ("coarse head (aux)", OUTPUT_COLORS["coarse"], "-"),
    "loss_point": ("point head", OUTPUT_COLORS["refined"], "-"),
    "lr": ("lr", OUTPUT_COLORS["total"], "-"),
    "mIoU": ("mIoU refined", OUTPUT_COLORS["refined"], "-"),
    "coarse_mIoU": ("mIoU coarse", OUTPUT_COLORS["coarse"], "-"),
    "boundary_mIoU": ("boundary mIoU refined", OUTPUT_COLORS["refined"], "--"),
}
"""Training-curve columns of metrics.jsonl: (legend label, colour, line style); others get matplotlib's."""


def plot_sweep(sweep: pd.DataFrame) -> Figure:
    """mIoU, boundary mIoU and seconds per image against points per step, one line per number of steps.

    `sweep` is `analysis.subdivision_sweep`'s table (columns steps, points, mIoU, boundary_mIoU,
    seconds_per_image); steps = 0 (the coarse prediction, no points) is drawn as a dashed horizontal line.
    """
    missing = {"steps", "points", "mIoU", "boundary_mIoU", "seconds_per_image"} - set(sweep.columns)
    if missing:
        raise ValueError(f"sweep table lacks column(s) {', '.join(sorted(missing))}")
    panels = [("mIoU", "mIoU (%)"), ("boundary_mIoU", "boundary IoU (%)"), ("seconds_per_image", "seconds / image")]
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels))
    refined_steps = sorted(s for s in sweep["steps"].unique() if s > 0)
    # Refined settings in shades of the refined colour (darker = more steps); coarse in its own colour.
    shades = {s: matplotlib.colors.to_rgb(OUTPUT_COLORS["refined"]) for s in refined_steps}
    for i, s in enumerate(refined_steps):
        fade = 0.55 * (len(refined_steps) - 1 - i) / max(len(refined_steps) - 1, 1)
        shades[s] = tuple(c + (1 - c) * fade for c in shades[s])
    for ax, (column, label) in zip(axes, panels):
        for steps, group in sweep.groupby("steps"):
            if steps == 0:
                ax.axhline(group[column].iloc[0], linestyle="--", color=OUTPUT_COLORS["coarse"], label="coarse (0 steps)")
            else:
                group = group.sort_values("points")
                ax.plot(group["points"], group[column], marker="o", color=shades[steps],
                        label=f"{steps} step{'s' if steps > 1 else ''}")
        if "row_setting" in sweep.columns and sweep["row_setting"].any():
            ours = sweep[sweep["row_setting"]].iloc[0]
            ax.plot([ours["points"]], [ours[column]], marker="*", markersize=13, color="black", linestyle="none",
                    label="the row's setting")
        values = sweep[column].astype(float)
        span = max(values.max() - values.min(), 1e-9)
        ax.set_ylim(values.min() - 0.08 * span, values.max() + 0.08 * span)  # the coarse line included
        ax.set_xlabel("points per step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Adaptive subdivision: steps and points per step", fontsize=11)
    return fig


def plot_results(runs: pd.DataFrame) -> Figure:
    """Per evaluated row: published vs reproduced (refined) vs coarse mIoU, and boundary IoU refined vs coarse.

    `runs` is `workbook.runs_table.collect_runs`'s table (one line per run; scores in percent). Rows without a
    published number (demo) simply have no published bar.
    """
    if runs.empty:
        raise ValueError("no evaluated run to plot")
    labels = [f"{row}\n({Path(run_dir).name})" if Path(run_dir).name != row else row
              for row, run_dir in zip(runs["row"], runs["run_dir"])]
    x = np.arange(len(runs))
    fig = Figure(figsize=(max(7.0, 1.8 * len(runs)) * 2, 4.2), layout="constrained")
    ax_miou, ax_boundary = fig.subplots(1, 2)
    mious = [("published", "published_miou"), ("refined", "miou_refined"), ("coarse", "miou_coarse")]
    boundaries = [("refined", "boundary_iou_refined"), ("coarse", "boundary_iou_coarse")]
    bars = [(ax_miou, mious, "mIoU (%)"), (ax_boundary, boundaries, "boundary IoU (%)")]
    for ax, series, title in bars:
        width = 0.8 / len(series)
        for i, (name, column) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, runs[column].astype(float), width, label=name,
                   color=OUTPUT_COLORS[name])
        ax.set_xticks(x, labels, fontsize=8, rotation=20, ha="right")
        ax.set_ylabel(title)
        ax.set_xlabel("run")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return fig
