"""Point operations of PointRend: sampling features at points and choosing the points.

Conventions used by every function here:
- Shapes: B batch, C channels (or classes), H x W a feature/logit map, N points.
- A point is (x, y) in [0, 1] x [0, 1], x along the width. (0, 0) is the top-left corner of the top-left
  pixel and (1, 1) the bottom-right corner of the bottom-right pixel, i.e. `align_corners=False`: the centre
  of pixel (row, col) of an H x W map is ((col + 0.5) / W, (row + 0.5) / H).
- Sampling outside the map blends with zeros (`padding_mode="zeros"`); a point within half a pixel of the
  border therefore mixes in zeros, exactly as the reference (mmcv's point_sample) does.

These are the conventions of the sssegmentation reference (`docs/reference-recipe.md` §3) and of
detectron2's PointRend project.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def coordinate_dtype(reference: Tensor) -> torch.dtype:
    """Points are float32 (float64 for a float64 model), even when features are bf16/fp16 under autocast."""
    return torch.float64 if reference.dtype == torch.float64 else torch.float32


def point_sample(input: Tensor, points: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample `input` at continuous `points`.

    Args:
        input: (B, C, H, W) feature map, logits, or float labels (with `mode="nearest"`).
        points: (B, N, 2) (x, y) coordinates in [0, 1], align_corners=False convention.
        mode: "bilinear" for features and logits, "nearest" for labels (returns exact label values).

    Returns:
        (B, C, N) sampled values, in the wider dtype of `input` and `points`.
    """
    # Sample in the wider of the two dtypes: bf16/fp16 coordinates would move points by up to ~1/256.
    dtype = torch.promote_types(input.dtype, points.dtype)
    grid = 2.0 * points.to(dtype).unsqueeze(2) - 1.0  # (B, N, 1, 2) in grid_sample's [-1, 1]
    sampled = F.grid_sample(input.to(dtype), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return sampled.squeeze(3)


def uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of a prediction: the second-largest logit minus the largest (always <= 0).

    The closer to 0, the less certain the prediction (the top two classes are nearly tied).

    Args:
        logits: (B, C, ...) with C >= 2, e.g. (B, C, H, W) or (B, C, N).

    Returns:
        (B, 1, ...) uncertainty, same dtype as `logits`.
    """
    top2 = logits.topk(2, dim=1).values
    return top2[:, 1:2] - top2[:, 0:1]


def top2_uncertainty(logits: Tensor) -> Tensor:
    """`points.uncertainty` (second-largest minus largest logit over dim 1), the same values bit for bit:
    a running (largest, second) pair over the classes, each step an elementwise max/min over the (B, H, W)
    map. `topk(2, dim=1)` walks the classes with a stride of H*W per pixel; this streams contiguous rows.
    logits (B, C, H, W), C >= 2 -> (B, 1, H, W)."""
    if logits.shape[1] < 2:
        raise ValueError(f"uncertainty needs at least 2 classes, got {logits.shape[1]}")
    first = torch.maximum(logits[:, 0], logits[:, 1])
    second = torch.minimum(logits[:, 0], logits[:, 1])
    for c in range(2, logits.shape[1]):
        value = logits[:, c]
        torch.maximum(second, torch.minimum(first, value), out=second)
        torch.maximum(first, value, out=first)
    return (second - first).unsqueeze(1)


@dataclass
class TrainingPoints:
    """Points chosen for one training step.

    candidates: (B, k*N, 2) the uniformly drawn candidates the uncertain points were picked from.
    points: (B, N, 2) the chosen points; the first `num_uncertain` are the most uncertain candidates,
        the rest are fresh uniform points.
    num_uncertain: int(beta * N).
    """

    candidates: Tensor
    points: Tensor
    num_uncertain: int


def sample_training_points(
    coarse_logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> TrainingPoints:
    """Importance sampling of training points (PointRend paper, section 3.1).

    Draw k*N uniform candidates, keep the beta*N whose coarse prediction is most uncertain, and add
    (1 - beta)*N uniform points so that the whole image keeps being supervised.

    The random numbers are drawn as two `torch.rand` calls, shapes (B, k*N, 2) then (B, N - beta*N, 2), on the
    logits' device: the same stream as the reference, so a seeded run picks the same points.

    Args:
        coarse_logits: (B, C, h, w) coarse prediction (no gradient is needed or kept).
        num_points: N, points per image.
        oversample_ratio: k >= 1.
        importance_sample_ratio: beta in [0, 1].
        generator: optional RNG; the global one when None.

    Returns:
        TrainingPoints with candidates (B, k*N, 2) and points (B, N, 2).
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, "
            f"got {oversample_ratio} and {importance_sample_ratio}"
        )
    batch = coarse_logits.shape[0]
    device, dtype = coarse_logits.device, coordinate_dtype(coarse_logits)
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = torch.rand(batch, num_candidates, 2, device=device, dtype=dtype, generator=generator)
    candidate_uncertainty = uncertainty(point_sample(coarse_logits, candidates))[:, 0]  # (B, k*N)
    top = candidate_uncertainty.topk(num_uncertain, dim=1).indices  # (B, beta*N)
    uncertain = candidates.gather(1, top.unsqueeze(2).expand(-1, -1, 2))
    random = torch.rand(batch, num_points - num_uncertain, 2, device=device, dtype=dtype, generator=generator)
    return TrainingPoints(candidates, torch.cat([uncertain, random], dim=1), num_uncertain)


def uncertain_points_on_grid(uncertainty_map: Tensor, num_points: int) -> tuple[Tensor, Tensor]:
    """The `num_points` most uncertain cells of a grid, for inference-time subdivision.

    Args:
        uncertainty_map: (B, 1, h, w), larger = more uncertain.
        num_points: n; clipped to h*w.

    Returns:
        indices: (B, n) int64 indices into the row-major flattened h*w grid (index = row * w + col),
            in descending order of uncertainty.
        coords: (B, n, 2) (x, y) of the cell centres, in [0, 1] (float64 for a float64 map, else float32).
    """
    batch, _, height, width = uncertainty_map.shape
    num_points = min(height * width, num_points)
    indices = uncertainty_map.view(batch, height * width).topk(num_points, dim=1).indices
    # Centres as half a step plus whole steps: the reference's float arithmetic, for bit-equal coordinates.
    x_step, y_step = 1.0 / width, 1.0 / height
    dtype = coordinate_dtype(uncertainty_map)
    x = x_step / 2.0 + (indices % width).to(dtype) * x_step
    y = y_step / 2.0 + torch.div(indices, width, rounding_mode="floor").to(dtype) * y_step
    return indices, torch.stack([x, y], dim=2)
