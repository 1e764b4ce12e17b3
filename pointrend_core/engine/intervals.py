"""Bootstrap confidence intervals over validation images, and the verdict beside a published number.

What is resampled: the N evaluated images. A resample draws N images with replacement; its scores are the
whole metrics recomputed on it (per class, summed intersections over summed unions, then the mean over the
classes whose summed union is nonzero), never a mean of per-image scores. Inputs are the per-image counts
of `engine.image_counts` ((N, 4, 3, C): refined, coarse and their boundary bands; intersection, prediction,
ground truth). docs/intervals.md explains the method for readers of a report.

Method: `scipy.stats.bootstrap` on the image indices 0 .. N-1 with a vectorised statistic. One resample is a
vector of N draws; `np.bincount` turns it into how often each image was drawn (weights w, length N), and
the resample's summed counts are w @ counts, so B resamples cost one (B, N) x (N, 8C) matrix product. All six
statistics (`STATISTICS`: four mIoUs and the two refined-minus-coarse gains) come from the same resamples,
which makes the gains' intervals paired. The interval is BCa (bias-corrected and accelerated; Efron 1987,
with the jackknife over images) where it is defined; where scipy's BCa is undefined (a degenerate bootstrap
distribution, e.g. every resample scoring the same) it is the percentile interval of the same resamples,
and `Interval.method` says which. Resampling is seeded (`SEED`, recorded with the intervals), so a report's
intervals are reproducible. Units: fractions inside, percent in every `Interval`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import scipy.stats

from pointrend_core.engine.distributed import rank_and_world_size
from pointrend_core.engine.image_counts import OUTPUTS, ImageCounts

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0
"""Default level, number of resamples and seed of `bootstrap_intervals` (the seed is recorded with them)."""

STATISTICS = ("refined_mIoU", "coarse_mIoU", "refined_boundary_mIoU", "coarse_boundary_mIoU", "gain_mIoU",
              "gain_boundary_mIoU")
"""The statistics of one resample, in `RunIntervals` field order; gains are refined minus coarse."""

NO_INTERVAL = "no interval: re-run evaluate"
"""What a table shows for a run evaluated before per-image counts were recorded."""

_BATCH_ELEMENTS = 8_000_000
"""Resamples per batch x images: bounds the (batch, N) weight matrix at 64 MB of float64."""


@dataclass(frozen=True)
class Interval:
    """A statistic in percent and its interval [low, high]; low/high None where there is no interval
    (`method` then says why). `method`: "BCa" or "percentile" (scipy.stats.bootstrap's methods)."""

    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    method: str | None = None

    @property
    def defined(self) -> bool:
        return self.low is not None and self.high is not None

    def text(self, signed: bool = False) -> str:
        """'69.51 [68.90, 70.12]' ('+1.62 [+0.80, +2.41]' when signed); '—' without an estimate."""
        if self.estimate is None:
            return "—"
        fmt = "{:+.2f}" if signed else "{:.2f}"
        if not self.defined:
            return fmt.format(self.estimate)
        return f"{fmt.format(self.estimate)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"

    def shifted(self, offset: float) -> Interval:
        """The interval of estimate - offset (a constant, e.g. the published value)."""
        return Interval(*(None if v is None else v - offset for v in (self.estimate, self.low, self.high)),
                        method=self.method)


@dataclass(frozen=True)
class RunIntervals:
    """run.json's "intervals": 95 % bootstrap intervals over the evaluated images (percent / points).

    `gain_*` are refined minus coarse on the same resamples (paired). `seed`, `resamples`, `confidence` and
    `num_images` say how they were computed; they are recomputable from the counts file beside run.json.
    """

    refined_mIoU: Interval = Interval()
    coarse_mIoU: Interval = Interval()
    refined_boundary_mIoU: Interval = Interval()
    coarse_boundary_mIoU: Interval = Interval()
    gain_mIoU: Interval = Interval()
    gain_boundary_mIoU: Interval = Interval()
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = SEED
    num_images: int = 0
    resampled: str = "validation images (with replacement); training not repeated"


# --------------------------------------------------------------------------------------------------
# The statistic of many resamples at once


def resample_statistics(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The six `STATISTICS` (fractions) of weighted resamples: (6, B) from counts (N, 4, 3, C) and weights
    (B, N) (how often each image is drawn; all ones = the evaluated set itself).

    Per output: I = w @ intersections, U = w @ (prediction + ground truth - intersection); IoU_c = I_c / U_c
    over the classes with U_c > 0, averaged; NaN where no class has a union.
    """
    inter = counts[:, :, 0]
    union = counts[:, :, 1] + counts[:, :, 2] - inter
    n, outputs, classes = inter.shape
    table = np.concatenate([inter, union], axis=1).reshape(n, -1).astype(np.float64)
    sums = (np.asarray(weights, dtype=np.float64) @ table).reshape(-1, 2, outputs, classes)
    inter_sum, union_sum = sums[:, 0], sums[:, 1]
    present = union_sum > 0
    iou = np.divide(inter_sum, union_sum, out=np.zeros_like(inter_sum), where=present)
    num_present = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        miou = np.where(num_present > 0, iou.sum(axis=-1) / num_present, np.nan)  # (B, 4)
    refined, coarse, refined_b, coarse_b = (miou[:, OUTPUTS.index(name)] for name in OUTPUTS)
    return np.stack([refined, coarse, refined_b, coarse_b, refined - coarse, refined_b - coarse_b])


def draw_weights(draws: np.ndarray, num_images: int) -> np.ndarray:
    """(R, N) counts of each image in R resamples given as index arrays (R, M) (M draws each, M may be
    N - 1 for the jackknife): a row-offset bincount, no Python loop."""
    rows, m = draws.shape
    flat = (draws + num_images * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * num_images).reshape(rows, num_images)


def _statistic(counts: np.ndarray) -> Callable[..., np.ndarray]:
    """scipy.stats.bootstrap's vectorised statistic over index arrays (..., M) -> (6, ...)."""
    n = counts.shape[0]

    def statistic(draws: np.ndarray, axis: int = -1) -> np.ndarray:
        draws = np.moveaxis(np.asarray(draws), axis, -1)
        lead = draws.shape[:-1]
        flat = draws.reshape(-1, draws.shape[-1])
        return resample_statistics(counts, draw_weights(flat, n)).reshape((len(STATISTICS), *lead))

    return statistic


# --------------------------------------------------------------------------------------------------
# Intervals


def bootstrap_intervals(
    counts: ImageCounts, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> RunIntervals:
    """Bootstrap intervals of the six `STATISTICS` in percent (module docstring: BCa, else percentile).

    Estimates are the evaluated set's own scores (exactly the recorded mIoUs). With fewer than two images
    there is nothing to resample: every interval is undefined and its method says so.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    estimates = _estimates(counts)
    n = counts.num_images
    if n < 2:
        why = "none (one image)" if n == 1 else "none (no images)"
        intervals = [Interval(e, None, None, why) for e in estimates]
    else:
        low, high, methods = _bootstrap(counts.counts, confidence, resamples, seed)
        intervals = [
            Interval(e, _percent(lo), _percent(hi), m) if np.isfinite(lo) and np.isfinite(hi) and e is not None
            else Interval(e, None, None, "none (no class to score)")
            for e, lo, hi, m in zip(estimates, low, high, methods)
        ]
    return RunIntervals(*intervals, confidence=confidence, resamples=resamples, seed=seed, num_images=n)


def _percent(value: float) -> float | None:
    return None if not np.isfinite(value) else 100.0 * float(value)


def _estimates(counts: ImageCounts) -> list[float | None]:
    """The six statistics of the evaluated set in percent, with the arithmetic of the recorded values."""
    scores = {name: _percent(counts.mean_iou(name)) for name in OUTPUTS}
    refined, coarse, refined_b, coarse_b = (scores[name] for name in OUTPUTS)

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return [refined, coarse, refined_b, coarse_b, minus(refined, coarse), minus(refined_b, coarse_b)]


def _bootstrap(counts: np.ndarray, confidence: float, resamples: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Low and high ends (fractions, NaN where undefined) and the method of each statistic."""
    n = counts.shape[0]
    common = dict(vectorized=True, axis=-1, confidence_level=confidence, batch=max(1, _BATCH_ELEMENTS // n))
    with warnings.catch_warnings():
        # Degenerate distributions (BCa undefined) are handled below, statistic by statistic.
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        bca = scipy.stats.bootstrap((np.arange(n),), _statistic(counts), n_resamples=resamples, method="BCa",
                                    rng=np.random.default_rng(seed), **common)
        low, high = np.array(bca.confidence_interval.low), np.array(bca.confidence_interval.high)
        methods = ["BCa"] * len(STATISTICS)
        undefined = ~(np.isfinite(low) & np.isfinite(high))
        if undefined.any():  # the percentile interval of the very same resamples
            percentile = scipy.stats.bootstrap((np.arange(n),), _statistic(counts), n_resamples=0,
                                               bootstrap_result=bca, method="percentile", **common)
            low[undefined] = np.asarray(percentile.confidence_interval.low)[undefined]
            high[undefined] = np.asarray(percentile.confidence_interval.high)[undefined]
            methods = ["percentile" if u else "BCa" for u in undefined]
    return low, high, methods


def write_counts_and_intervals(path: str | os.PathLike, counts: ImageCounts | None,
                               classes: Sequence[str] = ()) -> RunIntervals | None:
    """The evaluation's side of run.json: on the main process, `counts` (with `classes`) saved at `path` (the
    run folder's `RunFolder.image_counts`) and their `bootstrap_intervals` returned; None on other processes or
    without counts."""
    if counts is None or rank_and_world_size()[0] != 0:
        return None
    counts = ImageCounts(counts.counts, counts.image_index, tuple(classes) or counts.classes)
    counts.save(Path(path))
    return bootstrap_intervals(counts)


# --------------------------------------------------------------------------------------------------
# Verdicts


VerdictKind = Literal["reproduced", "below", "above", "no interval", "not published"]


@dataclass(frozen=True)
class Verdict:
    """`kind`; `difference` = reproduced minus published with its interval (points) where there is one;
    `text` for a table cell, `sentence` for a report."""

    kind: VerdictKind
    text: str
    sentence: str
    difference: Interval | None = None


def verdict(reproduced: Interval | None, published: float | None) -> Verdict:
    """reproduced: `published` lies inside [low, high] (ends included); below / above: the whole interval is
    under / over it. Without a published value or without an interval there is no verdict (said so)."""
    if published is None:
        return Verdict("not published", "—", "Nothing is published for this row: no verdict.")
    if reproduced is None or reproduced.estimate is None:
        return Verdict("no interval", NO_INTERVAL, f"No interval: re-run evaluate to record per-image counts "
                                                   f"(published {published:.2f}).")
    if not reproduced.defined:
        why = (reproduced.method or "none").removeprefix("none (").removesuffix(")")
        return Verdict("no interval", f"no interval: {why}",
                       f"No interval ({why}): reproduced {reproduced.estimate:.2f} against the published "
                       f"{published:.2f}, not judged.", reproduced.shifted(published))
    difference = reproduced.shifted(published)
    if reproduced.low <= published <= reproduced.high:
        return Verdict("reproduced", "reproduced",
                       f"Reproduced: the published {published:.2f} lies inside the 95 % interval of the "
                       f"reproduced mIoU, {reproduced.text()}.", difference)
    kind: VerdictKind = "below" if reproduced.high < published else "above"
    return Verdict(kind, f"{kind}: {difference.text(signed=True)}",
                   f"{kind.capitalize()} the published {published:.2f}: reproduced {reproduced.text()}, a "
                   f"difference of {difference.text(signed=True)} points.", difference)


def is_significant(gain: Interval | None) -> bool:
    """Whether a gain's interval excludes zero (False without an interval)."""
    return gain is not None and gain.defined and (gain.low > 0 or gain.high < 0)


def gain_text(gain: Interval | None) -> str:
    """'+1.62 [+0.80, +2.41], significant' -- significant only when the interval excludes zero."""
    if gain is None or gain.estimate is None:
        return NO_INTERVAL
    if not gain.defined:
        return f"{gain.text(signed=True)}, no interval"
    return f"{gain.text(signed=True)}, {'significant' if is_significant(gain) else 'not significant'}"


__all__ = [
    "CONFIDENCE", "RESAMPLES", "SEED", "STATISTICS", "NO_INTERVAL", "Interval", "RunIntervals", "Verdict",
    "bootstrap_intervals", "resample_statistics", "draw_weights", "verdict", "gain_text", "is_significant",
    "write_counts_and_intervals",
]
