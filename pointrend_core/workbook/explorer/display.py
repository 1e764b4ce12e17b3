"""What the explorer shows, as matplotlib `Figure` objects (nothing is shown here), PNG bytes and HTML text;
`snapshot_html` is the whole state as static HTML for a notebook executed by papermill."""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from pointrend_core.labels import IGNORE_INDEX
from pointrend_core.model.points import TrainingPoints
from pointrend_core.workbook import figures
from pointrend_core.workbook.analysis import EvalSample

from pointrend_core.workbook.explorer.state import Explorer
from pointrend_core.workbook.explorer.views import ExplorerView, ImageFeatures, Pixel, PixelReadout, Scores

# --------------------------------------------------------------------------------------------------------
# Figures (matplotlib Figure objects; nothing is shown here) and text


def _draw(ax: Any, picture: np.ndarray, title: str, **kwargs: Any) -> None:
    ax.imshow(picture, extent=figures.UNIT_EXTENT, interpolation="nearest",
              aspect=picture.shape[0] / picture.shape[1], **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_axis_off()


def _mark(ax: Any, pixel: Pixel, label_size: tuple[int, int]) -> None:
    """The chosen pixel as a ring with a white outline, on the unit square."""
    x, y = (pixel[1] + 0.5) / label_size[1], (pixel[0] + 0.5) / label_size[0]
    ax.scatter([x], [y], s=150, facecolors="none", edgecolors="white", linewidths=3.0, zorder=5)
    ax.scatter([x], [y], s=150, facecolors="none", edgecolors="black", linewidths=1.2, zorder=6)


_TABLE_STYLE = (
    "<style>.pr-scores, .pr-probabilities { border-collapse: collapse; margin: 0.3em 0; }"
    " .pr-scores td, .pr-scores th, .pr-probabilities td, .pr-probabilities th"
    " { padding: 0.1em 0.8em; text-align: right; border-bottom: 1px solid #e4e4e4; }"
    " .pr-scores td:first-child, .pr-probabilities td:first-child { text-align: left; }</style>"
)
"""Spacing of the score and probability tables (the HTML widget and the snapshot alike)."""


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}"


def _scores_text(scores: Scores) -> str:
    return f"mIoU {_percent(scores.mIoU)} · boundary {_percent(scores.boundary_mIoU)}"


def _grid_text(grid: tuple[int, int]) -> str:
    return f"{grid[0]}×{grid[1]}"


def _panels(fig: Figure, rows: int, columns: int, right: float = 0.0, top: float = 0.5) -> np.ndarray:
    """(rows, columns) axes on a fixed grid (no layout engine: it would cost more than the drawing itself),
    leaving `right` and `top` inches free for a legend and titles."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.01, right=1 - (right + 0.1) / width, bottom=0.02, top=1 - top / height,
                        wspace=0.05, hspace=0.55 * rows / max(height, 1))
    return np.asarray(fig.subplots(rows, columns, squeeze=False))


def overview_figure(sample: EvalSample, view: ExplorerView, pixel: Pixel, palette: np.ndarray,
                    classes: Sequence[str] | None = None) -> Figure:
    """Image | coarse prediction (its own h0 x w0 grid) | refined prediction (scored, at the label size) |
    ground truth, with the chosen pixel marked and each output's per-image scores in its title."""
    label_size = tuple(sample.gt.shape)
    coarse = view.coarse_logits[0].argmax(0)
    fig = Figure(figsize=(13, 3.6))
    axes = _panels(fig, 1, 4, right=1.5, top=0.55)[0]
    image = sample.image.permute(1, 2, 0).numpy()
    _draw(axes[0], image, f"{sample.title}: input {image.shape[0]}×{image.shape[1]}")
    steps = f"{view.steps} step{'s' if view.steps != 1 else ''} × {view.num_points} points"
    _draw(axes[1], figures.colorize(coarse, palette), f"coarse {_grid_text(view.grid(0))}\n{_scores_text(view.coarse)}")
    _draw(axes[2], figures.colorize(view.refined_pred, palette), f"refined ({steps})\n{_scores_text(view.refined)}")
    _draw(axes[3], figures.colorize(sample.gt, palette), f"ground truth {_grid_text(label_size)}")
    for ax in axes:
        _mark(ax, pixel, label_size)
    _class_legend(fig, [coarse, view.refined_pred, sample.gt], palette, classes)
    return fig


def _class_legend(fig: Figure, maps: Sequence[Tensor], palette: np.ndarray, classes: Sequence[str] | None) -> None:
    """`figures.class_legend`'s entries, placed at the figure's right edge without a layout engine."""
    figures.class_legend(fig, maps, palette, classes, beside=True)
    for legend in fig.legends:
        legend.set_loc("upper right")


def steps_figure(sample: EvalSample, view: ExplorerView, pixel: Pixel, palette: np.ndarray) -> Figure:
    """One column per subdivision step: the 2x-upsampled prediction with the chosen points (red), and the
    uncertainty it was chosen from (top-2 logit margin; brighter = less certain) with the same points."""
    label_size = tuple(sample.gt.shape)
    if not view.subdivision:
        fig = Figure(figsize=(6, 0.8))
        fig.text(0.5, 0.5, "0 subdivision steps: the refined output is the coarse prediction.", ha="center",
                 va="center", fontsize=10)
        return fig
    columns = len(view.subdivision)
    fig = Figure(figsize=(max(3.25 * columns, 4.0) + 1.2, 7.0))
    axes = _panels(fig, 2, columns, right=1.2, top=0.75)
    for i, step in enumerate(view.subdivision):
        grid = view.grid(i + 1)
        xs, ys = step.point_coords[0, :, 0].numpy(), step.point_coords[0, :, 1].numpy()
        took = f" · {1000 * view.step_seconds[i]:.0f} ms" if view.step_seconds else ""
        _draw(axes[0, i], figures.colorize(step.logits[0].argmax(0), palette),
              f"step {i + 1}: upsampled to {_grid_text(grid)}{took}")
        _draw(axes[1, i], step.uncertainty[0, 0].numpy(),
              f"step {i + 1}: {len(xs)} of {grid[0] * grid[1]} cells chosen", cmap="viridis")
        for ax in axes[:, i]:
            ax.scatter(xs, ys, s=1.0, c="red", marker=".", linewidths=0)
            _mark(ax, pixel, label_size)
    bar = fig.add_axes((1 - 0.9 / fig.get_size_inches()[0], 0.08, 0.12 / fig.get_size_inches()[0], 0.35))
    fig.colorbar(axes[1, 0].get_images()[0], cax=bar, label="uncertainty (2nd - 1st logit)")
    fig.suptitle("Adaptive subdivision (red: the cells the point head re-predicts; ring: the chosen pixel)",
                 fontsize=10)
    return fig


def candidates_figure(sample: EvalSample, features: ImageFeatures, points: TrainingPoints, palette: np.ndarray,
                      classes: Sequence[str] | None = None) -> Figure:
    """The training-time selection over the coarse prediction (`figures.show_training_points`)."""
    coarse = features.coarse_logits[0].argmax(0).cpu()
    return figures.show_training_points(sample.image, coarse, points, palette=palette, classes=classes)


def figure_png(fig: Figure, dpi: int = 72) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def summary_html(view: ExplorerView, features: ImageFeatures) -> str:
    """The per-image scores of both outputs and the setting, as an HTML table (percent)."""
    steps = f"{view.steps} step{'s' if view.steps != 1 else ''} × {view.num_points} points"
    sample = features.sample
    rows = [("coarse", view.coarse), ("refined", view.refined)]
    body = "".join(
        f"<tr><td>{name}</td><td class='pr-{name}-miou'>{_percent(s.mIoU)}</td>"
        f"<td>{_percent(s.boundary_mIoU)}</td></tr>"
        for name, s in rows
    )
    gain = (f"<tr><td>refined − coarse</td><td>{_signed(view.refined.mIoU - view.coarse.mIoU)}</td>"
            f"<td>{_signed(view.refined.boundary_mIoU - view.coarse.boundary_mIoU)}</td></tr>")
    return (
        f"{_TABLE_STYLE}<div><b>{html.escape(sample.title)}</b>: input {_grid_text(tuple(sample.input.shape[-2:]))}, "
        f"label {_grid_text(tuple(sample.gt.shape))} · <b class='pr-setting'>{steps}</b>"
        f"<table class='pr-scores'><tr><th>output</th><th>mIoU %</th><th>boundary mIoU %</th></tr>"
        f"{body}{gain}</table></div>"
    )


def _signed(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:+.1f}"


def timing_text(view: ExplorerView, features: ImageFeatures, cached: bool, drawing_seconds: float | None = None) -> str:
    """One line of wall times: features (once per image), each step, the whole refine, scores, drawing."""
    parts = [f"features {features.seconds:.2f} s{' (cached)' if cached else ''}"]
    parts += [f"step {i + 1} {1000 * t:.0f} ms" for i, t in enumerate(view.step_seconds)]
    parts += [f"refine {1000 * view.refine_seconds:.0f} ms", f"scores {1000 * view.score_seconds:.0f} ms"]
    if drawing_seconds is not None:
        parts.append(f"drawing {1000 * drawing_seconds:.0f} ms")
    return "time: " + " · ".join(parts)


def readout_html(readout: PixelReadout, classes: Sequence[str]) -> str:
    """The pixel's class probabilities (percent; the largest of each column in bold) from the coarse head, the
    point head at each step's cell, and the refined output, with whether each step re-predicted the pixel."""
    columns = [("coarse", readout.coarse_probs)]
    notes = []
    for s in readout.steps:
        chosen = f"refined (point #{s.rank})" if s.refined else "not refined"
        columns.append((f"step {s.step} point head", s.point_probs))
        notes.append(f"step {s.step}: cell {s.cell} of its grid, uncertainty {s.uncertainty:.3f}, "
                     f"<b class='pr-refined-{s.step}'>{chosen}</b>")
    columns.append(("refined", readout.refined_probs))
    best = [int(p.argmax()) for _, p in columns]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    lines = []
    for c, name in enumerate(classes):
        cells = "".join(
            f"<td>{'<b>' if best[j] == c else ''}{100 * float(p[c]):.1f}{'</b>' if best[j] == c else ''}</td>"
            for j, (_, p) in enumerate(columns)
        )
        marker = " ◀ ground truth" if readout.gt == c else ""
        lines.append(f"<tr><td>{html.escape(str(name))}{marker}</td>{cells}</tr>")
    gt = "ignored / none" if readout.gt == IGNORE_INDEX or readout.gt >= len(classes) else classes[readout.gt]
    row, col = readout.pixel
    return (
        f"{_TABLE_STYLE}<div><b>pixel (row {row}, col {col})</b> of {_grid_text(readout.label_size)}: ground truth "
        f"{html.escape(str(gt))}; coarse says {html.escape(str(classes[readout.coarse_label]))}, refined says "
        f"{html.escape(str(classes[readout.refined_label]))}; coarse cell {readout.coarse_cell}"
        f"<br>{'<br>'.join(notes) if notes else 'no subdivision step'}"
        f"<table class='pr-probabilities'><tr><th>class (%)</th>{head}</tr>{''.join(lines)}</table></div>"
    )


def _png_tag(png: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width: 100%"/>'


def snapshot_html(explorer: Explorer, dpi: int = 85) -> str:
    """The explorer's current state as static HTML (scores, timings, the pixel readout, the three figures as
    embedded PNGs): what an HTML report of the executed notebook shows in place of the live widget."""
    features, view = explorer.features(), explorer.view()
    sample, pixel = features.sample, explorer.pixel()
    parts = [
        summary_html(view, features),
        f"<p>{timing_text(view, features, cached=False)}</p>",
        _png_tag(figure_png(overview_figure(sample, view, pixel, explorer.palette, explorer.classes), dpi)),
        _png_tag(figure_png(steps_figure(sample, view, pixel, explorer.palette), dpi)),
        readout_html(explorer.readout(), explorer.classes),
        _png_tag(figure_png(candidates_figure(sample, features, explorer.candidates(), explorer.palette,
                                              explorer.classes), dpi)),
    ]
    return "\n".join(parts)
