"""viz: figures built from synthetic tensors; the assertions read back what was drawn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pointrend_core.labels import IGNORE_INDEX
from pointrend_core.model.pointrend import PointRendOutput, SubdivisionStep
from pointrend_core.model.points import sample_training_points, uncertain_points_on_grid, uncertainty
from pointrend_core.workbook.figures import (
    IGNORE_COLOR,
    OUTPUT_COLORS,
    PredictionSample,
    colorize,
    default_palette,
    plot_results,
    plot_sweep,
    plot_training_curves,
    show_predictions,
    show_subdivision_steps,
    show_training_points,
)

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)


def _image(height: int = 24, width: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _output(coarse: torch.Tensor, num_steps: int, num_points: int) -> PointRendOutput:
    """A PointRendOutput built the way the model records it: upsample, uncertainty, top points (no point head)."""
    steps, refined = [], coarse
    for _ in range(num_steps):
        upsampled = F.interpolate(refined, scale_factor=2, mode="bilinear", align_corners=False)
        u = uncertainty(upsampled)
        indices, coords = uncertain_points_on_grid(u, num_points)
        steps.append(SubdivisionStep(upsampled, u, indices, coords))
        refined = upsampled
    return PointRendOutput(refined, coarse, steps)


def _scatter_offsets(ax) -> list[np.ndarray]:
    return [np.asarray(c.get_offsets()) for c in ax.collections]


def test_colorize_maps_labels_and_ignore() -> None:
    mask = torch.tensor([[0, 1], [2, IGNORE_INDEX]])
    rgb = colorize(mask, PALETTE)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [255, 0, 0]
    assert rgb[1, 0].tolist() == [0, 255, 0]
    assert rgb[1, 1].tolist() == list(IGNORE_COLOR)


def test_colorize_rejects_labels_outside_palette() -> None:
    with pytest.raises(ValueError, match=r"label 3 is outside the palette's 3 classes"):
        colorize(torch.tensor([[0, 3]]), PALETTE)
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        colorize(torch.zeros(1, 2, 2, dtype=torch.long), PALETTE)


def test_default_palette_shape() -> None:
    palette = default_palette(25)
    assert palette.shape == (25, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette[:20]}) == 20  # tab20 colours are distinct


def test_show_training_points_draws_the_three_point_sets() -> None:
    coarse_logits = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(1))
    points = sample_training_points(coarse_logits, 40, 3.0, 0.75, generator=torch.Generator().manual_seed(2))
    fig = show_training_points(_image(), coarse_logits[1].argmax(0), points, palette=PALETTE, index=1)
    ax_image, ax_candidates, ax_chosen = fig.axes
    (candidates,) = _scatter_offsets(ax_candidates)
    uncertain, rest = _scatter_offsets(ax_chosen)
    assert candidates.shape == (120, 2) and uncertain.shape == (30, 2) and rest.shape == (10, 2)
    np.testing.assert_allclose(candidates, points.candidates[1].numpy())
    np.testing.assert_allclose(uncertain, points.points[1, :30].numpy())
    np.testing.assert_allclose(rest, points.points[1, 30:].numpy())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "candidates (120)", "most uncertain, β·N (30)", "uniform random, (1-β)·N (10)"
    ]
    # Drawn on the unit square, whatever the resolution, so points land where they sample.
    assert ax_candidates.get_xlim() == (0.0, 1.0) and ax_candidates.get_ylim() == (1.0, 0.0)


def test_show_training_points_refuses_float_image() -> None:
    coarse_logits = torch.randn(1, 3, 6, 8)
    points = sample_training_points(coarse_logits, 8, 2.0, 0.5)
    with pytest.raises(ValueError, match="uint8 \\(3, H, W\\)"):
        show_training_points(torch.rand(3, 24, 32), coarse_logits[0].argmax(0), points)


def test_show_subdivision_steps_layout_and_points() -> None:
    coarse = torch.randn(1, 3, 6, 8, generator=torch.Generator().manual_seed(3))
    output = _output(coarse, num_steps=2, num_points=20)
    gt = torch.randint(0, 3, (24, 32))
    gt[0] = IGNORE_INDEX
    fig = show_subdivision_steps(_image(), output, gt, palette=PALETTE, classes=("sky", "road", "car"))
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 4 * 3  # header row + one row per step
    (colorbar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert colorbar.get_ylabel() == "uncertainty (2nd - 1st logit)"
    legend_labels = [t.get_text() for t in fig.legends[-1].get_texts()]
    assert legend_labels == ["sky", "road", "car", "ignored"]  # every class appears; row 0 of gt is ignored
    titles = [ax.get_title() for ax in axes]
    assert titles[:4] == ["image 24×32", "coarse 6×8", "refined 24×32", "ground truth"]
    assert titles[4] == "step 1: upsampled to 12×16"
    assert titles[6] == "step 1: 20 of 192 points chosen"
    assert titles[10] == "step 2: 20 of 768 points chosen"
    for step, row in zip(output.steps, (1, 2)):
        (on_uncertainty,) = _scatter_offsets(axes[4 * row + 2])
        np.testing.assert_allclose(on_uncertainty, step.point_coords[0].numpy())
    # The ground-truth panel is the colourised label map, ignore row in the neutral colour.
    gt_rgb = axes[3].images[0].get_array()
    assert gt_rgb[0, 0].tolist() == list(IGNORE_COLOR)
    np.testing.assert_array_equal(gt_rgb, colorize(gt, PALETTE))
    # Without a palette, the C classes get matplotlib's qualitative colours.
    fig = show_subdivision_steps(_image(), output, gt)
    np.testing.assert_array_equal(fig.axes[3].images[0].get_array(), colorize(gt, default_palette(3)))


def test_show_predictions_grid() -> None:
    gt = torch.randint(0, 3, (24, 32))
    samples = [PredictionSample(_image(), gt, gt, gt.flip(0), title=f"img{i}") for i in range(2)]
    fig = show_predictions(samples, PALETTE, classes=("sky", "road", "car"))
    assert len(fig.axes) == 8
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["sky", "road", "car"]
    np.testing.assert_allclose(legend.get_patches()[1].get_facecolor()[:3], np.asarray(PALETTE[1]) / 255)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["img0: image", "ground truth", "coarse", "refined"]
    np.testing.assert_array_equal(fig.axes[3].images[0].get_array(), colorize(gt.flip(0), PALETTE))
    with pytest.raises(ValueError, match="at least one sample"):
        show_predictions([], PALETTE)


def test_plot_training_curves_reads_jsonl(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    # The trainer's line layout (engine.train_log.LogLine), plus an evaluation line.
    records = [
        {"iteration": i, "epoch": i / 5, "lr": 0.01 - 0.001 * i, "loss": 3.0 / (i + 1), "loss_aux": 1.0 / (i + 1),
         "loss_point": 2.0 / (i + 1), "window": 1, "seconds": 0.5 * i}
        for i in range(5)
    ]
    records.append({"iteration": 5, "mIoU": 42.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = plot_training_curves(path)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "learning rate", "score"]
    loss_lines = {line.get_label(): line for line in fig.axes[0].lines}
    assert set(loss_lines) == {"total", "coarse head (aux)", "point head"}
    np.testing.assert_allclose(loss_lines["point head"].get_ydata(), [2.0 / (i + 1) for i in range(5)])
    # The same output keeps its colour in every chart: point head = refined, aux = coarse.
    assert loss_lines["point head"].get_color() == OUTPUT_COLORS["refined"]
    assert loss_lines["coarse head (aux)"].get_color() == OUTPUT_COLORS["coarse"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["cross-entropy (weighted)", "learning rate", "score (%)"]
    np.testing.assert_allclose(fig.axes[2].lines[0].get_xdata(), [5])


def test_plot_training_curves_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no training metrics at"):
        plot_training_curves(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves(empty)
    no_iter = tmp_path / "no_iter.jsonl"
    no_iter.write_text('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match="no iteration column"):
        plot_training_curves(no_iter)


def test_plot_sweep_lines_per_step() -> None:
    sweep = pd.DataFrame(
        [
            {"steps": 0, "points": 0, "mIoU": 50.0, "boundary_mIoU": 20.0, "seconds_per_image": 0.1},
            {"steps": 1, "points": 64, "mIoU": 51.0, "boundary_mIoU": 22.0, "seconds_per_image": 0.2},
            {"steps": 1, "points": 16, "mIoU": 50.5, "boundary_mIoU": 21.0, "seconds_per_image": 0.15},
            {"steps": 2, "points": 16, "mIoU": 50.7, "boundary_mIoU": 21.5, "seconds_per_image": 0.2},
        ]
    )
    fig = plot_sweep(sweep)
    miou_ax = fig.axes[0]
    labels = [line.get_label() for line in miou_ax.lines]
    assert labels == ["coarse (0 steps)", "1 step", "2 steps"]
    np.testing.assert_allclose(miou_ax.lines[1].get_xdata(), [16, 64])  # sorted by points
    np.testing.assert_allclose(miou_ax.lines[1].get_ydata(), [50.5, 51.0])
    with pytest.raises(ValueError, match="lacks column"):
        plot_sweep(sweep.drop(columns="mIoU"))


def test_plot_results_bars() -> None:
    runs = pd.DataFrame(
        {
            "row": ["demo", "pointrend_r50_voc"],
            "run_dir": ["runs/demo", "runs/pointrend_r50_voc"],
            "published_miou": [float("nan"), 69.84],
            "miou_refined": [60.0, 70.0],
            "miou_coarse": [58.0, 68.0],
            "boundary_iou_refined": [40.0, 45.0],
            "boundary_iou_coarse": [35.0, 41.0],
        }
    )
    fig = plot_results(runs)
    miou_ax, boundary_ax = fig.axes
    heights = [patch.get_height() for patch in miou_ax.patches]
    np.testing.assert_allclose(heights, [np.nan, 69.84, 60.0, 70.0, 58.0, 68.0])
    assert [patch.get_height() for patch in boundary_ax.patches] == [40.0, 45.0, 35.0, 41.0]
    with pytest.raises(ValueError, match="no evaluated run"):
        plot_results(runs.iloc[:0])
