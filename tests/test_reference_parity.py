"""Numerical parity with sssegmentation's own PointRend (R-50, VOC), without sssegmentation installed.

`tests/data/ssseg_pointrend_r50_golden.pt` holds what sssegmentation 1.7.0's `PointRend` computed with the
weights and inputs of `tests/golden.py` (see `tests/data/make_ssseg_golden.py` for how it was run). Here our
model is built, loaded with the same weights through the real checkpoint loader, run on the same inputs and
compared: coarse logits, the points chosen at each subdivision step, the refined logits, and both training
losses with the points they were computed on, in float64 (tight) and float32 (the reference run unchanged).

The golden file was made on one CPU; these tests run on any other, with other kernels and thread counts. So
values are compared within tolerances derived from the dtype's rounding and the network's depth
(`numerics.relative_tolerance`), and point choices as sets in which candidates tied at that precision with the
top-k threshold are interchangeable (`numerics.assert_same_top_k`); everything else is asserted exactly.

Two known, explained conventions (reported, not bugs; neither shows in float32, the dtype models run in):
- Test-time grid coordinates: the reference computes them in float32 even for a float64 model; ours are float64
  for a float64 model (`points.coordinate_dtype`). That moves float64 refined logits by up to ~7e-6 and may
  reorder near-tied points inside step 2's top-k (the chosen set is the same). With our coordinates switched to
  float32, float64 refinement matches exactly: `test_float64_refinement_is_exact_with_float32_grid_coordinates`
  pins that down, so any other cause of a difference fails it.
- Training draws its random points in the model's dtype, the reference in torch's default dtype: the same
  stream whenever the two agree (float32 runs; the golden float64 pass ran under a float64 default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import golden
import pointrend_core.model.pointrend as pointrend_module
import pointrend_core.model.points as points_module
from pointrend_core import build_model, load_checkpoint
from pointrend_core.config import IGNORE_INDEX
from pointrend_core.model import PointRend
from pointrend_core.model.points import TrainingPoints, point_sample, uncertainty
from numerics import (
    POINT_HEAD_DEPTH,
    R50_DEPTH,
    R50_FAN_IN,
    assert_same_top_k,
    max_abs_difference,
    relative_tolerance,
    scale,
)

pytestmark = pytest.mark.numerics  # float results on this CPU's kernels: CI runs these twice (.ci/run)

GOLDEN = Path(__file__).parent / "data" / "ssseg_pointrend_r50_golden.pt"
F64 = torch.float64
F32 = torch.float32


@pytest.fixture(scope="module")
def reference() -> dict[str, Tensor]:
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model_and_weights(reference, tmp_path_factory) -> tuple[PointRend, dict[str, Tensor]]:
    """Our R-50 VOC model loaded (strictly, through `load_checkpoint`) with the golden weights."""
    model = build_model("pointrend_r50_voc")
    weights = golden.deterministic_state_dict({k: v.shape for k, v in model.state_dict().items()})
    path = tmp_path_factory.mktemp("golden") / "golden_weights.pth"
    torch.save({"model": weights}, path)
    load_checkpoint(model, path)
    return model, weights


def fresh(model_and_weights: tuple[PointRend, dict[str, Tensor]], dtype: torch.dtype) -> PointRend:
    """The model with the golden weights (running stats included: a training pass changes them) in `dtype`."""
    model, weights = model_and_weights
    model.to(dtype).load_state_dict(weights, strict=True)
    return model


@contextmanager
def float32_grid_coordinates() -> Iterator[None]:
    """Our points in float32 whatever the model dtype, as the reference's test-time grid coordinates are."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(points_module, "coordinate_dtype", lambda reference: F32)
        yield


def run_eval(model: PointRend, images: Tensor) -> dict[str, Any]:
    """Coarse logits once, then the refinement as is and with float32 grid coordinates."""
    model.eval()
    with torch.no_grad():
        fine, coarse = model.features(images)
        refined = model.refine(fine, coarse, record_steps=True)
        with float32_grid_coordinates():
            refined_f32_coords = model.refine(fine, coarse, record_steps=True)
    return {"coarse": coarse, "refined": refined, "refined_f32_coords": refined_f32_coords}


def run_train(
    model: PointRend, images: Tensor, targets: Tensor, points: Tensor | None = None
) -> dict[str, Tensor]:
    """Both losses after `torch.manual_seed(TRAIN_RNG_SEED)` as the reference, with what the point selection
    saw: its candidates, their uncertainty under our coarse logits, and the chosen points. With `points`
    (B, N, 2), the point head is trained at those points instead of the ones we choose (the random draws
    still happen, so the stream stays the reference's)."""
    chosen: dict[str, Tensor] = {}
    sample: Callable[..., Any] = pointrend_module.sample_training_points

    def recording_sample(coarse_logits: Tensor, *args: Any, **kwargs: Any) -> Any:
        result = sample(coarse_logits, *args, **kwargs)
        chosen["candidates"] = result.candidates
        chosen["candidate_uncertainty"] = uncertainty(point_sample(coarse_logits, result.candidates))[:, 0]
        chosen["points"] = result.points
        chosen["coarse_scale"] = coarse_logits.abs().max()
        if points is not None:
            result = TrainingPoints(result.candidates, points.to(result.points.dtype), result.num_uncertain)
        return result

    point_logits = model.point_logits

    def recording_point_logits(*args: Any) -> Tensor:
        logits = point_logits(*args)
        chosen["point_logits_scale"] = logits.detach().abs().max()
        return logits

    model.train()
    with torch.random.fork_rng(devices=[]), pytest.MonkeyPatch.context() as patch:
        patch.setattr(pointrend_module, "sample_training_points", recording_sample)
        patch.setattr(model, "point_logits", recording_point_logits)
        torch.manual_seed(golden.TRAIN_RNG_SEED)
        losses = model(images, targets)
    return {**{k: v.detach() for k, v in losses.items()}, **chosen}


@pytest.fixture(scope="module")
def eval64(model_and_weights) -> dict[str, Any]:
    return run_eval(fresh(model_and_weights, F64), golden.eval_images())


@pytest.fixture(scope="module")
def eval32(model_and_weights) -> dict[str, Any]:
    return run_eval(fresh(model_and_weights, F32), golden.eval_images().float())


def train_pass(model_and_weights, dtype: torch.dtype, points: Tensor | None = None) -> dict[str, Tensor]:
    images, targets = golden.train_batch(IGNORE_INDEX)
    return run_train(fresh(model_and_weights, dtype), images.to(dtype), targets, points)


@pytest.fixture(scope="module")
def train64(model_and_weights) -> dict[str, Tensor]:
    return train_pass(model_and_weights, F64)


@pytest.fixture(scope="module")
def train32(model_and_weights) -> dict[str, Tensor]:
    return train_pass(model_and_weights, F32)


@pytest.fixture(scope="module")
def train32_at_reference_points(model_and_weights, reference) -> dict[str, Tensor]:
    """Our float32 losses with the point head trained at the reference's points, so that a near-tie swap in
    the point choice (allowed, see `assert_training_points_match`) cannot move the point loss."""
    return train_pass(model_and_weights, F32, reference["f32/train_points"])


max_abs = max_abs_difference


def coarse_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the coarse logits (image -> R-50 -> FPN -> coarse head) between kernels."""
    return relative_tolerance(dtype, R50_DEPTH, R50_FAN_IN)


def refined_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of refined logits: the coarse path plus the point head."""
    return relative_tolerance(dtype, R50_DEPTH + POINT_HEAD_DEPTH, R50_FAN_IN)


def assert_steps_choose_the_references_points(steps: list[Any], reference: dict[str, Tensor], prefix: str) -> None:
    """Each subdivision step's cells equal the reference's as sets, up to near-ties of our uncertainty.

    A step's uncertainty is a difference of two logits of the map it upsampled (coarse logits for step 0,
    step 0's refined logits for step 1), so its noise is twice that map's tolerance times its scale.
    """
    dtype = steps[0].logits.dtype
    for k, step in enumerate(steps):
        tolerance = coarse_tolerance(dtype) if k == 0 else refined_tolerance(dtype)
        band = 2 * tolerance * scale(step.logits)
        assert_same_top_k(
            step.point_indices[0].tolist(), reference[f"{prefix}step{k}_indices"][0].tolist(),
            step.uncertainty.flatten(), band, f"{prefix} subdivision step {k}",
        )


def assert_refined_subset_matches(
    refined: Tensor, last_indices: Tensor, reference: dict[str, Tensor], prefix: str, tolerance: float
) -> int:
    """Refined logits at the reference's stored subset of its last step's cells, where we refined them too
    (a near-tie cell we left unrefined holds upsampled logits there, not the point head's). Returns how many
    subset cells were compared."""
    subset, theirs = reference[f"{prefix}refined_subset_index"], reference[f"{prefix}refined_subset_logits"]
    ours_cells = set(last_indices[0].tolist())
    both = torch.tensor([i for i, cell in enumerate(subset.tolist()) if cell in ours_cells], dtype=torch.long)
    compared = refined.flatten(2)[:, :, subset[both]]
    assert max_abs(compared, theirs[:, :, both]) <= tolerance * scale(theirs)
    return both.numel()


def candidate_indices(candidates: Tensor, points: Tensor) -> list[int]:
    """The positions in `candidates` (K, 2) of each of `points` (M, 2), matched exactly (both sides draw
    the same candidates from the same random stream; a point that is no candidate is an error)."""
    position = {tuple(c): i for i, c in enumerate(candidates.tolist())}
    missing = [tuple(p) for p in points.tolist() if tuple(p) not in position]
    assert not missing, f"{len(missing)} chosen points are not among the candidates, e.g. {missing[0]}"
    return [position[tuple(p)] for p in points.tolist()]


def assert_training_points_match(ours: dict[str, Tensor], theirs: Tensor, tolerance: float) -> None:
    """The reference's training points: the fresh uniform part exactly (the same random stream), the
    uncertain part as the same set of candidates up to near-ties of our candidate uncertainty."""
    batch, num_points, _ = theirs.shape
    num_uncertain = int(0.75 * num_points)  # importance_sample_ratio of the R-50 row
    band = 2 * tolerance * ours["coarse_scale"].item()
    for b in range(batch):
        assert torch.equal(ours["points"][b, num_uncertain:], theirs[b, num_uncertain:])
        candidates = ours["candidates"][b]
        assert_same_top_k(
            candidate_indices(candidates, ours["points"][b, :num_uncertain]),
            candidate_indices(candidates, theirs[b, :num_uncertain]),
            ours["candidate_uncertainty"][b], band, f"training points of image {b}",
        )


# ----------------------------------------------------------------------------------------------- inputs


def test_state_dict_keys_and_shapes_are_the_references(reference, model_and_weights):
    model, _ = model_and_weights
    ours = [f"{k} {tuple(v.shape)}" for k, v in sorted(model.state_dict().items())]
    theirs = bytes(reference["reference_keys"].tolist()).decode("ascii").splitlines()
    assert len(theirs) == 442
    assert sorted(set(ours) ^ set(theirs)) == []
    assert ours == theirs


def test_weights_and_inputs_regenerate_bit_exactly(reference, model_and_weights):
    _, weights = model_and_weights
    # Sums, not values: a tolerance only for the summation order of another CPU; new random draws are far off.
    assert torch.allclose(golden.state_dict_checksums(weights), reference["state_dict_checksums"], rtol=1e-12, atol=0), (
        "tests/golden.py no longer reproduces the weights the golden file was made with"
    )
    images, targets = golden.train_batch(IGNORE_INDEX)
    checksums = golden.input_checksums(golden.eval_images(), images, targets, IGNORE_INDEX)
    assert torch.allclose(checksums, reference["input_checksums"], rtol=1e-12, atol=0)
    assert 0 < checksums[4] < targets.numel()  # some pixels are ignored, not all


def test_tolerances_are_tight_enough_to_mean_something():
    # A wrong layer moves logits by O(1) of their scale; these are orders of magnitude below that.
    assert 1e-5 < coarse_tolerance(F32) < refined_tolerance(F32) < 1e-3
    assert refined_tolerance(F64) < 1e-11


# ----------------------------------------------------------------------------------------------- float64


def test_float64_coarse_logits_equal_the_references(reference, eval64):
    theirs = reference["f64/coarse_logits"]
    assert eval64["coarse"].shape == theirs.shape == (1, 21, 32, 40)
    assert 1.0 < scale(theirs) < 100.0  # the golden weights keep activations O(1)
    assert max_abs(eval64["coarse"], theirs) <= coarse_tolerance(F64) * scale(theirs)


def test_float64_first_step_refines_every_cell(reference, eval64):
    (step0, step1) = eval64["refined"].steps
    assert step0.point_indices.shape == (1, 5120)  # all 64 x 80 cells
    assert sorted(step0.point_indices[0].tolist()) == list(range(5120))
    assert torch.equal(step0.point_indices.sort().values, reference["f64/step0_indices"].sort().values)
    assert step1.point_indices.shape == (1, 8196)


def test_float64_second_step_chooses_the_references_points(reference, eval64):
    # The order of near-ties may differ by the grid-coordinate precision (module docstring); the set may only
    # differ by cells tied at float64 precision.
    assert_steps_choose_the_references_points(eval64["refined"].steps, reference, "f64/")


def test_float64_refined_logits_match_within_grid_coordinate_precision(reference, eval64):
    refined = eval64["refined"].logits
    assert refined.shape == reference["f64/refined_logits"].shape == (1, 21, 128, 160)
    # 2e-5: the effect of float32 against float64 grid coordinates (module docstring), far above rounding.
    assert max_abs(refined, reference["f64/refined_logits"]) < 2e-5
    subset = reference["f64/refined_subset_index"]
    assert max_abs(refined.flatten(2)[:, :, subset], reference["f64/refined_subset_logits"]) < 2e-5
    assert torch.equal(refined.argmax(1), reference["f64/refined_logits"].argmax(1))


def test_float64_refinement_is_exact_with_float32_grid_coordinates(reference, eval64):
    out = eval64["refined_f32_coords"]
    assert_steps_choose_the_references_points(out.steps, reference, "f64/")
    tolerance = refined_tolerance(F64)
    compared = assert_refined_subset_matches(out.logits, out.steps[-1].point_indices, reference, "f64/", tolerance)
    assert compared >= 1000  # of 1024: only float64 near-ties may be left out
    stored = reference["f64/refined_logits"].double()  # float32: compare at its precision
    bound = stored.abs() * 2.0**-24 + tolerance * scale(stored)
    cells = torch.arange(128 * 160)
    # Cells refined by one side only (near-ties) hold upsampled logits on the other: compare the rest.
    same_cells = torch.isin(cells, out.steps[-1].point_indices[0]) == torch.isin(cells, reference["f64/step1_indices"][0])
    within = ((out.logits - stored).abs() <= bound).flatten(2)[0].all(0)
    assert within[same_cells].all()


def test_float64_training_losses_and_points_equal_the_references(reference, train64):
    assert_training_points_match(train64, reference["f64/train_points"], coarse_tolerance(F64))
    assert abs(train64["loss_aux"].item() - reference["f64/loss_aux"].item()) < 1e-10
    assert abs(train64["loss_point"].item() - reference["f64/loss_point"].item()) < 1e-10
    assert 0.5 < train64["loss_point"].item() < 10.0


# ----------------------------------------------------------------------------------------------- float32


def test_float32_coarse_logits_match_the_unmodified_reference(reference, eval32):
    theirs = reference["f32/coarse_logits"]
    assert eval32["coarse"].dtype == F32
    assert max_abs(eval32["coarse"], theirs) <= coarse_tolerance(F32) * scale(theirs)


def test_float32_subdivision_chooses_the_references_points_up_to_near_ties(reference, eval32):
    assert_steps_choose_the_references_points(eval32["refined"].steps, reference, "f32/")


def test_float32_refined_logits_match_the_unmodified_reference(reference, eval32):
    refined = eval32["refined"]
    compared = assert_refined_subset_matches(
        refined.logits, refined.steps[-1].point_indices, reference, "f32/", refined_tolerance(F32)
    )
    assert compared >= 1000  # of 1024: only near-tie cells may be left out


def test_float32_training_draws_the_references_points(reference, train32):
    # The reference draws its random points in float32 (torch's default dtype): the same stream as ours.
    assert_training_points_match(train32, reference["f32/train_points"], coarse_tolerance(F32))


def test_float32_training_losses_match_the_references(reference, train32_at_reference_points):
    ours = train32_at_reference_points
    # A cross-entropy moves by at most twice the largest error of its logits (log-sum-exp and the target's
    # logit each move by at most that), and so does a mean of them; times the loss weight.
    tolerances = {
        "loss_aux": 0.4 * 2 * coarse_tolerance(F32) * ours["coarse_scale"].item(),
        "loss_point": 1.0 * 2 * refined_tolerance(F32) * ours["point_logits_scale"].item(),
    }
    for name, tolerance in tolerances.items():
        theirs = reference[f"f32/{name}"].item()
        assert ours[name].dtype == F32
        assert tolerance < 0.01 * theirs  # far below what a wrong layer or a wrong point would change
        assert abs(ours[name].item() - theirs) <= tolerance, name
