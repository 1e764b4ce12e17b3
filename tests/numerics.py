"""Tolerances for comparing float results computed on another machine, and top-k choices with near-ties.

A golden file made on one CPU is compared here with results computed on whatever CPU runs the tests. The two
runs share the weights and inputs bit for bit, but not the kernels: another SIMD width, oneDNN path or thread
count sums the same products in another order, so float32 results differ in the last bits, and a top-k choice
whose k-th and (k+1)-th scores lie closer than that noise may pick the other one. Nothing here depends on
what one machine printed: tolerances follow from the dtype's unit roundoff and the depth of the computation,
and a choice may differ from the reference only where our own scores are within that tolerance of the
top-k threshold.

The model for the rounding error (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 3.1
and the probabilistic estimates of sec. 2.8): a dot product of length n carries a relative error of about
u * sqrt(n) when rounding errors behave randomly (u = eps / 2); a network of L such layers in sequence
accumulates them like a random walk, about u * sqrt(L * n). Two implementations each carry such an error,
and a safety factor covers the tail of the distribution and the gain of the BatchNorm scales. The result is
a *relative* tolerance: multiply by the scale (max |value|) of the compared tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

SAFETY = 8.0
"""Headroom over the random-walk estimate (its tail, BatchNorm gains up to 1.5 per layer, both sides' error)."""

R50_DEPTH = 57
"""Layers in sequence from the image to the coarse logits of R-50 PointRend: the 3-conv stem, 16 bottlenecks of
3 convs, the FPN lateral and output convs, up to 3 scale-head convs and the classifier."""
R50_FAN_IN = 512 * 9
"""The longest dot product on that path: layer4's 3x3 convolution over 512 channels."""
POINT_HEAD_DEPTH = 4
"""The point head's three fcs and its classifier, added on top of the coarse path for refined logits."""


def relative_tolerance(dtype: torch.dtype, depth: int, fan_in: int) -> float:
    """Relative gap allowed between two evaluations of a `depth`-layer network in `dtype` by other kernels.

    For R-50 in float32 this is about 3e-4 of the output's scale; in float64 about 6e-13.
    """
    unit_roundoff = torch.finfo(dtype).eps / 2
    return SAFETY * unit_roundoff * math.sqrt(depth * fan_in)


def scale(tensor: Tensor) -> float:
    """max |tensor|: what relative tolerances are multiplied by."""
    return tensor.detach().abs().max().item()


def max_abs_difference(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def near_threshold(scores: Tensor, k: int, band: float) -> Tensor:
    """(n,) bool: which of the scores (n,) lie within `band` of the k-th largest one (the top-k threshold)."""
    threshold = scores.topk(k).values[-1]
    return (scores - threshold).abs() <= band


def assert_same_top_k(ours: Iterable[int], theirs: Iterable[int], scores: Tensor, band: float, what: str) -> None:
    """Two top-k choices over the same candidates agree up to near-ties.

    `ours` and `theirs` are the chosen candidate indices (any order); `scores` (n,) our scores of all n
    candidates; `band` the absolute noise of a score. Passes when both choose k distinct candidates and every
    candidate chosen by one side only is within `band` of our top-k threshold, i.e. a tie at this
    precision. Everything else must be chosen by both. The band must leave the test meaningful: at most 5 %
    of k candidates may be near the threshold (the other 95 % are then checked exactly).
    """
    ours_set, theirs_set = {int(i) for i in ours}, {int(i) for i in theirs}
    k = len(theirs_set)
    assert len(ours_set) == k, f"{what}: we chose {len(ours_set)} distinct candidates, the reference {k}"
    near = near_threshold(scores, k, band)
    assert int(near.sum()) <= max(2, k // 20), (
        f"{what}: {int(near.sum())} of {scores.numel()} candidates lie within {band:.3g} of the top-{k} "
        "threshold; the tie band is too wide for the comparison to mean anything"
    )
    not_tied = sorted(i for i in ours_set ^ theirs_set if not near[i])
    assert not not_tied, (
        f"{what}: {len(not_tied)} candidates chosen by one side only are not near-ties "
        f"(e.g. index {not_tied[0]}, score {scores[not_tied[0]].item():.6g}, threshold "
        f"{scores.topk(k).values[-1].item():.6g}, band {band:.3g})"
    )
