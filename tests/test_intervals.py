"""Per-image counts and bootstrap intervals: against a direct loop and scipy on small cases, the verdicts on
constructed cases, the counts file, and the tables for runs with and without counts."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointrend_core.config import IGNORE_INDEX, ROWS, EvalConfig
from pointrend_core.engine.evaluate import evaluate
from pointrend_core.engine.image_counts import OUTPUTS, ImageCounts
from pointrend_core.engine.run_folder import RunFolder

COUNTS_FILE = RunFolder.IMAGE_COUNTS
from pointrend_core.engine.intervals import (
    NO_INTERVAL,
    STATISTICS,
    Interval,
    bootstrap_intervals,
    draw_weights,
    gain_text,
    is_significant,
    resample_statistics,
    verdict,
    write_counts_and_intervals,
)
from pointrend_core.engine.metrics import mean_iou_from_counts
from pointrend_core.engine.records import RunRecord
from pointrend_core.workbook.runs_table import results_table
from pointrend_core.workbook.tables import interval_table, verdict_text

# --- synthetic counts -------------------------------------------------------------------------------------


def synthetic_counts(num_images: int, num_classes: int = 5, seed: int = 0, quality: float = 0.7,
                     absent: tuple[int, ...] = ()) -> ImageCounts:
    """(N, 4, 3, C) counts of images holding 1-3 classes each, predictions right on ~`quality` of the pixels;
    the coarse outputs a little worse than the refined ones. Classes in `absent` appear in no image."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((num_images, len(OUTPUTS), 3, num_classes), dtype=np.int64)
    candidates = [c for c in range(num_classes) if c not in absent]
    for i in range(num_images):
        classes = rng.choice(candidates, size=min(len(candidates), rng.integers(1, 4)), replace=False)
        gt = rng.integers(50, 500, size=len(classes))
        for o in range(len(OUTPUTS)):
            q = quality - (0.05 if o % 2 else 0.0)
            inter = (gt * rng.uniform(q - 0.2, min(1.0, q + 0.2), size=len(classes))).astype(np.int64)
            pred = inter + rng.integers(0, 100, size=len(classes))
            counts[i, o, 0, classes], counts[i, o, 1, classes], counts[i, o, 2, classes] = inter, pred, gt
    return ImageCounts(counts, np.arange(num_images))


def direct_statistics(counts: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The six statistics of each resample by the slow road: build the resample image by image, sum, score."""
    out = np.zeros((len(STATISTICS), len(draws)))
    for r, draw in enumerate(draws):
        resample = sum(counts[i] for i in draw)  # (4, 3, C)
        scores = [mean_iou_from_counts(torch.from_numpy(resample[o])) for o in range(len(OUTPUTS))]
        out[:, r] = scores + [scores[0] - scores[1], scores[2] - scores[3]]
    return out


def test_vectorised_statistic_equals_a_direct_loop() -> None:
    counts = synthetic_counts(9, seed=1).counts
    draws = np.random.default_rng(3).integers(0, 9, size=(25, 9))
    fast = resample_statistics(counts, draw_weights(draws, 9))
    np.testing.assert_allclose(fast, direct_statistics(counts, draws), rtol=1e-12, atol=1e-15)
    # Leave-one-out draws (the jackknife BCa needs) have N - 1 entries.
    loo = np.array([[j for j in range(9) if j != i] for i in range(9)])
    np.testing.assert_allclose(resample_statistics(counts, draw_weights(loo, 9)), direct_statistics(counts, loo),
                               rtol=1e-12)


def test_intervals_equal_scipy_bootstrap_of_the_slow_statistic() -> None:
    counts = synthetic_counts(12, seed=2)

    def slow(indices: np.ndarray) -> np.ndarray:
        return direct_statistics(counts.counts, indices.astype(int)[None])[:, 0]

    reference = scipy.stats.bootstrap((np.arange(12),), slow, vectorized=False, n_resamples=300, method="BCa",
                                      rng=np.random.default_rng(7))
    ours = bootstrap_intervals(counts, resamples=300, seed=7)
    for k, name in enumerate(STATISTICS):
        interval = getattr(ours, name)
        assert interval.method == "BCa"
        assert interval.low == pytest.approx(100 * reference.confidence_interval.low[k], rel=1e-9)
        assert interval.high == pytest.approx(100 * reference.confidence_interval.high[k], rel=1e-9)
    assert ours.refined_mIoU.estimate == 100 * counts.mean_iou("refined")  # the recorded value, exactly
    assert ours.gain_mIoU.estimate == pytest.approx(ours.refined_mIoU.estimate - ours.coarse_mIoU.estimate)
    # Seeded: the same seed gives the same intervals, another seed other ones.
    assert bootstrap_intervals(counts, resamples=300, seed=7) == ours
    assert bootstrap_intervals(counts, resamples=300, seed=8).refined_mIoU != ours.refined_mIoU


def test_interval_narrows_as_images_are_added() -> None:
    widths = []
    for n in (20, 80, 320):
        interval = bootstrap_intervals(synthetic_counts(n, seed=5), resamples=1000).refined_mIoU
        assert interval.low < interval.estimate < interval.high
        widths.append(interval.high - interval.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < widths[0] / 2.5  # about 1/sqrt(n): a factor 4 from 20 to 320 images


def test_paired_gain_interval_is_narrower_than_unpaired() -> None:
    # Coarse = refined with a fixed loss on every image: the per-image scores move together, so the paired
    # gain is far more precise than the two separate intervals suggest.
    refined = synthetic_counts(60, seed=4).counts
    counts = refined.copy()
    counts[:, 1] = counts[:, 0]
    counts[:, 1, 0] = (counts[:, 0, 0] * 0.97).astype(np.int64)
    intervals = bootstrap_intervals(ImageCounts(counts, np.arange(60)), resamples=1000)
    gain, single = intervals.gain_mIoU, intervals.refined_mIoU
    assert gain.low > 0 and gain_text(gain).endswith(", significant")
    assert gain.high - gain.low < (single.high - single.low) / 3


# --- verdicts ---------------------------------------------------------------------------------------------


def test_verdict_inside_below_above() -> None:
    reproduced = Interval(68.12, 67.01, 69.20, "BCa")
    inside = verdict(reproduced, 68.5)
    assert inside.kind == "reproduced" and inside.text == "reproduced"
    assert inside.sentence.startswith("Reproduced: the published 68.50 lies inside") and "68.12 [67.01, 69.20]" in \
        inside.sentence
    assert verdict(reproduced, 69.20).kind == "reproduced"  # the ends belong to the interval
    below = verdict(reproduced, 69.84)
    assert below.kind == "below" and below.text == "below: -1.72 [-2.83, -0.64]"
    assert below.difference.low == pytest.approx(67.01 - 69.84) and below.difference.method == "BCa"
    above = verdict(reproduced, 66.0)
    assert above.kind == "above" and above.text == "above: +2.12 [+1.01, +3.20]"
    assert above.sentence.startswith("Above the published 66.00")
    assert verdict(reproduced, None).kind == "not published"
    assert verdict(None, 69.84).text == NO_INTERVAL == "no interval: re-run evaluate"
    # The gain: significant only when its interval excludes zero (either side).
    assert gain_text(Interval(0.30, -0.20, 0.81, "BCa")) == "+0.30 [-0.20, +0.81], not significant"
    assert gain_text(Interval(1.62, 0.80, 2.41, "BCa")) == "+1.62 [+0.80, +2.41], significant"
    assert gain_text(Interval(-0.9, -1.5, -0.1, "BCa")) == "-0.90 [-1.50, -0.10], significant"
    assert not is_significant(Interval(0.5, 0.0, 1.0, "BCa")) and not is_significant(None)


def test_verdict_of_one_image_is_not_judged() -> None:
    intervals = bootstrap_intervals(synthetic_counts(1), resamples=100)
    assert intervals.num_images == 1 and intervals.refined_mIoU.estimate is not None
    assert not intervals.refined_mIoU.defined and intervals.refined_mIoU.method == "none (one image)"
    judged = verdict(intervals.refined_mIoU, 0.0)
    assert judged.kind == "no interval" and judged.text == "no interval: one image"  # never a confident "above"


def test_class_absent_from_every_image_is_left_out_of_every_resample() -> None:
    counts = synthetic_counts(30, num_classes=6, seed=6, absent=(2,))
    assert counts.totals("refined")[:, 2].sum() == 0
    intervals = bootstrap_intervals(counts, resamples=500)
    without = ImageCounts(np.delete(counts.counts, 2, axis=3), counts.image_index)
    assert intervals == bootstrap_intervals(without, resamples=500)  # as if the class did not exist
    assert all(getattr(intervals, name).defined for name in STATISTICS)


def test_degenerate_bootstrap_falls_back_to_percentile() -> None:
    counts = synthetic_counts(10, seed=3).counts.copy()
    counts[:, :, 0] = counts[:, :, 1] = counts[:, :, 2]  # perfect on every image: every resample scores 100
    intervals = bootstrap_intervals(ImageCounts(counts, np.arange(10)), resamples=200)
    assert intervals.refined_mIoU == Interval(100.0, 100.0, 100.0, "percentile")
    assert verdict(intervals.refined_mIoU, 100.0).kind == "reproduced"
    assert gain_text(intervals.gain_mIoU) == "+0.00 [+0.00, +0.00], not significant"


# --- counts from evaluate, and the file ------------------------------------------------------------------


@dataclass
class _Output:
    logits: Tensor
    coarse_logits: Tensor


class _RandomFake(nn.Module):
    """Two random 1x1 convolutions: imperfect refined and coarse outputs at the input resolution."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.refine, self.coarse = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

    def forward(self, x: Tensor) -> _Output:
        return _Output(self.refine(x), F.avg_pool2d(self.coarse(x), 2))


class _BlockDataset(torch.utils.data.Dataset):
    """Noisy images whose colour follows blocky 4-class labels (some pixels ignored), at the label's size."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(i)
        label = F.interpolate(torch.randint(0, 4, (1, 1, 3, 4), generator=g).float(), size=(12, 16))[0, 0].long()
        image = F.one_hot(label, 4).permute(2, 0, 1)[:3].float() + 0.8 * torch.randn(3, 12, 16, generator=g)
        label[torch.rand(12, 16, generator=g) < 0.05] = IGNORE_INDEX
        return image, label


def test_evaluate_counts_reproduce_the_metrics_exactly(tmp_path: Path) -> None:
    result = evaluate(_RandomFake(), _BlockDataset(), EvalConfig(), "cpu", 4, progress=False)
    counts = result.counts
    assert counts.counts.shape == (5, 4, 3, 4) and counts.image_index.tolist() == [0, 1, 2, 3, 4]
    assert counts.mean_iou("refined") == result.refined.mIoU
    assert counts.mean_iou("coarse") == result.coarse.mIoU
    assert counts.mean_iou("refined_boundary") == result.refined_boundary.mIoU
    assert counts.mean_iou("coarse_boundary") == result.coarse_boundary.mIoU
    assert 0 < result.coarse.mIoU < 1 and 0 < result.refined_boundary.mIoU < 1
    # Through the file and into a record: 100 x the recomputed value is the recorded percentage.
    intervals = write_counts_and_intervals(tmp_path / COUNTS_FILE, counts, ["a", "b", "c", "d"])
    loaded = ImageCounts.load(tmp_path / COUNTS_FILE)
    assert np.array_equal(loaded.counts, counts.counts) and loaded.classes == ("a", "b", "c", "d")
    assert intervals.refined_mIoU.estimate == 100 * result.refined.mIoU
    assert intervals.refined_boundary_mIoU.estimate == 100 * result.refined_boundary.mIoU


def test_counts_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        ImageCounts.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.npz is not a per-image counts file"):
        ImageCounts.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match=r"other\.npz lacks counts, format, image_index, outputs"):
        ImageCounts.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=r"shape \(N, 4, 3, C\)"):
        ImageCounts(np.zeros((2, 3, 3, 5)), np.arange(2))


# --- tables: runs with and without counts ----------------------------------------------------------------


def _write_run(run_dir: Path, row: str, refined: float, coarse: float, published: float | None,
               intervals: dict | None = None) -> None:
    metrics = {"mIoU": None, "boundary_mIoU": 40.0}
    record = {
        "row": row, "data": {"num_images": 40, "dataset_size": 40}, "published_mIoU": published,
        "metrics": {"refined": {**metrics, "mIoU": refined}, "coarse": {**metrics, "mIoU": coarse}},
        "environment": {"date": "2025-01-01T00:00:00+00:00"},
    }
    if intervals is not None:
        record["intervals"] = intervals
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(record))


def test_old_run_without_counts_shows_its_numbers_and_no_interval(tmp_path: Path) -> None:
    _write_run(tmp_path / "runs" / "pointrend_r50_voc", "pointrend_r50_voc", 68.123, 66.5, 69.84)
    line = results_table(tmp_path / "runs").loc["pointrend_r50_voc"]
    assert line["reproduced mIoU (refined)"] == 68.12 and line["difference"] == -1.72
    assert line["95 % interval"] == NO_INTERVAL and line["verdict"] == NO_INTERVAL
    assert line["gain refined − coarse"] == f"+1.62 ({NO_INTERVAL})" and line["seeds"] == "1 run"
    run = RunRecord.read(tmp_path / "runs" / "pointrend_r50_voc" / "run.json")
    assert run.intervals is None
    table = interval_table(run, tmp_path / "runs" / "pointrend_r50_voc")
    assert table.loc["refined mIoU", "value"] == 68.12 and table.loc["refined mIoU", "95 % interval"] == NO_INTERVAL
    assert table.loc["refined mIoU", "verdict"] == NO_INTERVAL
    assert verdict_text(run).startswith(f"**{NO_INTERVAL}.** Recorded refined mIoU 68.12 (published 69.84)")
    # A counts file of another evaluation (other images) beside it is not used to judge it.
    synthetic_counts(12).save(tmp_path / "runs" / "pointrend_r50_voc" / COUNTS_FILE)
    assert results_table(tmp_path / "runs").loc["pointrend_r50_voc", "95 % interval"] == NO_INTERVAL


def test_runs_with_counts_show_interval_verdict_gain_and_seeds(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    counts = synthetic_counts(40, seed=9)
    # A record written before intervals were recorded, but with its counts file: computed from the file.
    row_dir = runs / "pointrend_r50_voc"
    refined, coarse = 100 * counts.mean_iou("refined"), 100 * counts.mean_iou("coarse")
    _write_run(row_dir, "pointrend_r50_voc", refined, coarse, published=refined + 50)
    counts.save(row_dir / COUNTS_FILE)
    # Two more seeds of the row, their intervals recorded in run.json.
    for seed, value in ((1, refined + 1.0), (2, refined - 1.0)):
        recorded = bootstrap_intervals(synthetic_counts(40, seed=seed), resamples=200)
        _write_run(runs / f"voc_seed{seed}", "pointrend_r50_voc", value, coarse, refined + 50,
                   intervals=dataclasses.asdict(recorded))
    line = results_table(runs).loc["pointrend_r50_voc"]
    expected = bootstrap_intervals(counts)
    low, high = expected.refined_mIoU.low, expected.refined_mIoU.high
    assert line["95 % interval"] == f"[{low:.2f}, {high:.2f}]"
    published = ROWS["pointrend_r50_voc"].published_miou  # the table judges against the model zoo's number
    assert low < refined < high < published  # the synthetic model is far below it
    assert line["verdict"] == verdict(expected.refined_mIoU, published).text
    assert line["verdict"] == f"below: {refined - published:+.2f} [{low - published:+.2f}, {high - published:+.2f}]"
    assert line["gain refined − coarse"] == gain_text(expected.gain_mIoU)
    assert line["seeds"] == f"3 runs: mean {refined:.2f}, sd 1.00, {refined - 1:.2f}–{refined + 1:.2f}"
    run = RunRecord.read(runs / "voc_seed1" / "run.json")
    assert run.intervals is not None and run.intervals.resamples == 200  # read back as dataclasses
    table = interval_table(run)
    assert list(table.index)[:2] == ["refined mIoU", "coarse mIoU"] and table.loc["refined mIoU", "method"] == "BCa"
    assert table.loc["gain refined − coarse (mIoU)", "significant"] == ("yes" if run.intervals.gain_mIoU.low > 0
                                                                         or run.intervals.gain_mIoU.high < 0 else "no")
    text = verdict_text(run)
    assert text.startswith("**Below the published") and "docs/intervals.md" in text and "seed 0" in text
    assert not math.isnan(table.loc["coarse mIoU", "value"])
