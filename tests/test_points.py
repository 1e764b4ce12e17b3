"""The point functions on hand-made cases: coordinates, exact top-N choices, counts, label sampling."""

import pytest
import torch

from pointrend_core.config import IGNORE_INDEX
from pointrend_core.model.points import (
    point_sample,
    sample_training_points,
    uncertain_points_on_grid,
    uncertainty,
)

pytestmark = pytest.mark.numerics  # float results on this CPU's kernels: CI runs these twice (.ci/run)


def test_point_sample_at_cell_centres_returns_the_cells():
    grid = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)  # value = row * 4 + col
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    points = torch.stack([(cols + 0.5) / 4, (rows + 0.5) / 3], dim=-1).view(1, 12, 2)
    assert torch.allclose(point_sample(grid, points), grid.view(1, 1, 12), atol=1e-5)


def test_point_sample_is_bilinear_between_centres_and_zero_padded_at_the_border():
    grid = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    # Midway between all four centres.
    assert point_sample(grid, torch.tensor([[[0.5, 0.5]]])).item() == pytest.approx(15.0)
    # x halfway between the two top centres, y at the top edge: half a pixel outside the centre row, so the
    # row of zeros above weighs 0.5.
    assert point_sample(grid, torch.tensor([[[0.5, 0.0]]])).item() == pytest.approx(2.5)
    # The reference's first refinement row: source y = -0.25 -> 0.75 on row 0, 0.25 on zeros.
    h = 4
    value = point_sample(torch.ones(1, 1, h, 4), torch.tensor([[[0.5, 0.5 / (2 * h)]]])).item()
    assert value == pytest.approx(0.75)


def test_nearest_sampling_of_labels_keeps_exact_values_including_ignore():
    labels = torch.tensor([[3, IGNORE_INDEX], [0, 20]]).float().view(1, 1, 2, 2)
    points = torch.tensor([[[0.1, 0.1], [0.9, 0.2], [0.2, 0.8], [0.99, 0.99], [0.74, 0.26]]])
    sampled = point_sample(labels, points, mode="nearest").long().view(-1).tolist()
    assert sampled == [3, IGNORE_INDEX, 0, 20, IGNORE_INDEX]


def test_uncertainty_is_second_minus_first_logit():
    logits = torch.tensor([[1.0, 5.0, 4.5], [2.0, -1.0, 0.0]]).T.reshape(1, 3, 2)  # 2 points, 3 classes
    assert torch.allclose(uncertainty(logits), torch.tensor([[[-0.5, -2.0]]]))


def test_uncertain_points_on_grid_picks_exact_cells_with_centre_coordinates():
    u = torch.full((1, 1, 4, 5), -10.0)
    u[0, 0, 0, 0] = -0.1  # index 0
    u[0, 0, 2, 3] = -0.2  # index 13
    u[0, 0, 3, 4] = -0.3  # index 19
    indices, coords = uncertain_points_on_grid(u, 3)
    assert indices.tolist() == [[0, 13, 19]]
    expected = torch.tensor([[[0.5 / 5, 0.5 / 4], [3.5 / 5, 2.5 / 4], [4.5 / 5, 3.5 / 4]]])
    assert torch.allclose(coords, expected)
    assert coords.dtype == torch.float32


def test_uncertain_points_on_grid_clips_to_the_grid_size_and_keeps_float64():
    indices, coords = uncertain_points_on_grid(torch.randn(2, 1, 3, 3, dtype=torch.float64), 8196)
    assert indices.shape == (2, 9) and coords.shape == (2, 9, 2) and coords.dtype == torch.float64
    assert sorted(indices[0].tolist()) == list(range(9))


def test_training_points_counts_and_the_uncertain_ones_come_from_the_candidates():
    torch.manual_seed(0)
    coarse = torch.randn(2, 4, 8, 8)
    chosen = sample_training_points(coarse, num_points=100, oversample_ratio=3, importance_sample_ratio=0.75)
    assert chosen.candidates.shape == (2, 300, 2) and chosen.points.shape == (2, 100, 2)
    assert chosen.num_uncertain == 75
    assert ((chosen.points >= 0) & (chosen.points < 1)).all()
    candidate_u = uncertainty(point_sample(coarse, chosen.candidates))[:, 0]
    for b in range(2):
        top = set(candidate_u[b].topk(75).indices.tolist())
        picked = {int(i) for i in (chosen.candidates[b, :, None] == chosen.points[b, None, :75]).all(-1).nonzero()[:, 0]}
        assert picked == top
        # The 25 random ones are fresh draws, not candidates.
        assert not (chosen.candidates[b, :, None] == chosen.points[b, None, 75:]).all(-1).any()


def test_training_points_follow_the_reference_random_stream():
    coarse = torch.randn(2, 3, 5, 5)
    generator = torch.Generator().manual_seed(7)
    chosen = sample_training_points(coarse, 16, 3, 0.75, generator=generator)
    replay = torch.Generator().manual_seed(7)
    assert torch.equal(chosen.candidates, torch.rand(2, 48, 2, generator=replay))
    assert torch.equal(chosen.points[:, 12:], torch.rand(2, 4, 2, generator=replay))


def test_training_points_reject_bad_ratios():
    with pytest.raises(ValueError, match="oversample_ratio"):
        sample_training_points(torch.randn(1, 2, 4, 4), 10, 0.5, 0.75)
