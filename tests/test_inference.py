"""The fast inference path (`model.inference.prepare_for_inference`) against the plain eval-mode model.

What is compared, and within what (tolerances from `numerics`, as in test_reference_parity.py):
- fp32 fast vs fp32 eager: coarse logits within the float32 tolerance of the demo network's depth (the two
  run other kernels: folded BatchNorm, channels-last oneDNN convolutions); each subdivision step's cells equal
  as sets up to near-ties of the uncertainty; refined argmax equal except at pixels whose top-2 logit gap is
  within the noise band, or that a near-tie point swap (and the 2x bilinear upsampling after it) can reach.
- The point choice does not depend on the memory layout: the same coarse logits in NCHW and in channels-last
  give *identical* indices and logits, even where the uncertainty has exact ties (top-k breaks ties by
  memory order, and `PointRend.subdivide` makes its map contiguous first).
- bf16: a measured bound, not a tolerance (see `test_bf16_argmax_agreement_has_a_measured_bound`).
- Accuracy measured, not assumed: mIoU and boundary mIoU of each precision against fp32 eager on a briefly
  trained demo model (`test_each_precision_keeps_the_metrics_of_fp32_eager`, slow: it trains).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from numerics import POINT_HEAD_DEPTH, assert_same_top_k, max_abs_difference, relative_tolerance, scale
from pointrend_core.config import DEMO
from pointrend_core.model import PointRend, PointRendOutput, build_model
from pointrend_core.model.inference import InferenceModel, InferenceSettings, prepare_for_inference
from pointrend_core.model.points import top2_uncertainty
from pointrend_core.model.points import uncertainty

pytestmark = pytest.mark.numerics  # float results on this CPU's kernels: CI runs these twice (.ci/run)

F32 = torch.float32

R18_DEPTH = 25
"""Layers in sequence from the image to the coarse logits of the demo row's R-18 PointRend: the 3-conv stem,
8 basic blocks of 2 convs, the FPN lateral and output convs, up to 3 scale-head convs and the classifier."""
R18_FAN_IN = 512 * 9
"""The longest dot product on that path: layer4's 3x3 convolution over 512 channels."""

COARSE_TOLERANCE = relative_tolerance(F32, R18_DEPTH, R18_FAN_IN)
REFINED_TOLERANCE = relative_tolerance(F32, R18_DEPTH + POINT_HEAD_DEPTH, R18_FAN_IN)


# ---------------------------------------------------------------------------------------------- helpers


def demo_model_with_statistics(seed: int = 0) -> PointRend:
    """The demo row with random weights and non-trivial BatchNorm (statistics, scales and shifts away from
    the identity, so that folding them is tested) and classifiers scaled to O(1) logits, so that most pixels
    are decided by a clear margin as in a trained model (the init's std 0.01 makes nearly every pixel a tie)."""
    torch.manual_seed(seed)
    model = build_model(DEMO).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1, generator=generator)
                m.running_var.uniform_(1.0, 2.0, generator=generator)
                m.weight.uniform_(0.5, 1.0, generator=generator)
                m.bias.normal_(0, 0.1, generator=generator)
        for head in (model.auxiliary_decoder[1], model.decoder[1]):
            head.weight.normal_(0, 1 / math.sqrt(head.weight.shape[1]), generator=generator)
    return model


def images(batch: int = 2, size: tuple[int, int] = (96, 128), seed: int = 2) -> Tensor:
    """(B, 3, 96, 128) by default: step 1 refines every cell of its 48x64 map (4096 points), step 2 picks
    4096 of 12288, where the random model has about 90 cells within the float32 tie band of the threshold
    (below the 5 % that `assert_same_top_k` allows; at 128x160 it has 266)."""
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def eager(model: PointRend, x: Tensor, **kwargs) -> PointRendOutput:
    """What `evaluate` runs without a fast path: the plain model in eval mode under no_grad, float32."""
    model.eval()
    with torch.no_grad():
        return model(x, record_steps=True, **kwargs)


def top2_gap(logits: Tensor) -> Tensor:
    """(B, H, W) largest minus second-largest logit."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def reach_of_swapped_cells(a: PointRendOutput, b: PointRendOutput) -> Tensor:
    """(B, H, W) bool at the refined resolution: the pixels a cell refined by one side only can reach.

    A swapped cell at step k holds the point head's logits on one side and the upsampled ones on the other;
    every later step upsamples 2x bilinearly (an output cell reads the two nearest input cells per axis), so
    the cell reaches a 3x3 neighbourhood (dilated here) of its children at the next step, and so on.
    """
    reach = None
    for step_a, step_b in zip(a.steps, b.steps):
        batch, _, height, width = step_a.logits.shape
        if reach is None:
            reach = torch.zeros(batch, 1, height, width, dtype=torch.bool)
        else:
            reach = F.interpolate(F.max_pool2d(reach.float(), 3, 1, 1), size=(height, width), mode="nearest") > 0
        for image in range(batch):
            swapped = set(step_a.point_indices[image].tolist()) ^ set(step_b.point_indices[image].tolist())
            reach[image].view(-1)[torch.tensor(sorted(swapped), dtype=torch.long)] = True
    assert reach is not None and reach.shape[-2:] == a.logits.shape[-2:]
    return reach[:, 0]


def assert_same_output_up_to_near_ties(ours: PointRendOutput, theirs: PointRendOutput) -> dict[str, int]:
    """fp32 fast against fp32 eager (`theirs`): coarse logits, point sets and refined argmax; returns counts."""
    coarse_scale = scale(theirs.coarse_logits)
    assert max_abs_difference(ours.coarse_logits, theirs.coarse_logits) <= COARSE_TOLERANCE * coarse_scale
    for k, (step, reference) in enumerate(zip(ours.steps, theirs.steps)):
        tolerance = COARSE_TOLERANCE if k == 0 else REFINED_TOLERANCE
        band = 2 * tolerance * scale(step.logits)  # uncertainty is a difference of two logits
        for image in range(step.point_indices.shape[0]):
            assert_same_top_k(
                step.point_indices[image].tolist(), reference.point_indices[image].tolist(),
                step.uncertainty[image].flatten(), band, f"subdivision step {k} of image {image}",
            )
    band = 2 * REFINED_TOLERANCE * scale(theirs.logits)
    near_tie = (top2_gap(theirs.logits) <= band) | (top2_gap(ours.logits) <= band)
    reached = reach_of_swapped_cells(ours, theirs)
    differ = ours.logits.argmax(1) != theirs.logits.argmax(1)
    unexplained = differ & ~near_tie & ~reached
    assert not unexplained.any(), f"{int(unexplained.sum())} pixels change class without a near-tie"
    assert near_tie.float().mean() < 0.01, "the tie band covers too many pixels for the test to mean anything"
    return {"differ": int(differ.sum()), "near_tie": int(near_tie.sum()), "reached": int(reached.sum())}


def argmax_agreement(ours: PointRendOutput, theirs: PointRendOutput) -> float:
    return (ours.logits.argmax(1) == theirs.logits.argmax(1)).float().mean().item()


@pytest.fixture(scope="module")
def model() -> PointRend:
    return demo_model_with_statistics()


@pytest.fixture(scope="module")
def reference(model) -> PointRendOutput:
    return eager(model, images())


# ------------------------------------------------------------------------------------------------ fp32


def test_fp32_fast_path_equals_eager_up_to_near_ties(model, reference):
    fast = prepare_for_inference(model)
    out = fast(images(), record_steps=True)
    assert out.logits.shape == reference.logits.shape == (2, DEMO.model.num_classes, 96, 128)
    assert out.logits.dtype == out.coarse_logits.dtype == F32
    assert 0.1 < scale(reference.coarse_logits) < 100.0  # O(1) logits: the tolerance is relative to this
    assert_same_output_up_to_near_ties(out, reference)


def test_the_tolerances_are_tight_enough_to_mean_something():
    # A wrong layer (an unfolded BatchNorm, a missing ReLU) moves logits by O(1) of their scale.
    assert 1e-5 < COARSE_TOLERANCE < REFINED_TOLERANCE < 1e-3


def test_a_wrongly_folded_batchnorm_would_fail_the_comparison(model, reference):
    """The comparison has teeth: nudging one folded convolution by 1 % of a BatchNorm scale is caught."""
    fast = prepare_for_inference(model)
    with torch.no_grad():
        conv = fast.model.backbone_net.layer3[0].conv2
        conv.weight.mul_(1.01)
    with pytest.raises(AssertionError):
        assert_same_output_up_to_near_ties(fast(images(), record_steps=True), reference)


def test_subdivision_settings_are_passed_through(model):
    x = images(1, (64, 96))
    theirs = eager(model, x, subdivision_steps=1, subdivision_num_points=100)
    ours = prepare_for_inference(model)(x, subdivision_steps=1, subdivision_num_points=100, record_steps=True)
    assert len(ours.steps) == len(theirs.steps) == 1 and ours.steps[0].point_indices.shape == (1, 100)
    assert ours.logits.shape == theirs.logits.shape == (1, DEMO.model.num_classes, 32, 48)
    assert_same_output_up_to_near_ties(ours, theirs)
    plain = prepare_for_inference(model)(x)
    assert plain.steps == [] and plain.logits.shape[-2:] == (64, 96)


def test_the_original_model_is_left_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fast = prepare_for_inference(model, "bf16")
    assert model.training and not fast.training
    model.eval()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fast.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert fast.model.backbone_net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.backbone_net.stem[0].weight.is_contiguous()


def test_settings_are_recorded_on_the_returned_model(model):
    fast = prepare_for_inference(model, "bf16")
    assert isinstance(fast, InferenceModel)
    assert (fast.precision, fast.compiled) == ("bf16", False)
    assert fast.settings == InferenceSettings("bf16", compile=False, channels_last=True)
    assert fast.settings.as_record() == {"precision": "bf16", "compile": False, "channels_last": True}
    assert fast.cfg == model.cfg and fast.num_classes == model.num_classes
    assert "precision='bf16'" in repr(fast)


def test_inference_only(model):
    fast = prepare_for_inference(model)
    with pytest.raises(TypeError, match="no training losses"):
        fast(images(1, (64, 64)), torch.zeros(1, 64, 64, dtype=torch.long))
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()
    assert fast.eval() is fast and fast.train(False) is fast


def test_fp16_is_refused_on_cpu(model):
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        prepare_for_inference(model, "fp16")
    with pytest.raises(ValueError, match="precision must be"):
        prepare_for_inference(model, "int8")  # type: ignore[arg-type]
    # Prepared for CUDA, then called on CPU: refused at the call too.
    fast = InferenceModel(model, InferenceSettings("fp16"))
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        fast(images(1, (64, 64)))


def test_its_own_precision_overrides_an_outer_autocast(model):
    """A caller's autocast does not leak in: an fp32 fast model stays fp32 under an outer bf16 autocast (bit
    for bit the same as without it)."""
    fast = prepare_for_inference(model)
    x = images(1, (64, 96))
    plain = fast(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fast(x)
    assert torch.equal(plain.logits, inside.logits) and torch.equal(plain.coarse_logits, inside.coarse_logits)


# ---------------------------------------------------------------------------------------------- layout


def quantised_logits(shape: tuple[int, ...], seed: int = 3) -> Tensor:
    """Logits on a grid of 1/4: the uncertainty has many exact ties, so top-k's tie-break is exercised."""
    return torch.randint(-8, 9, shape, generator=torch.Generator().manual_seed(seed)).float() / 4


@pytest.mark.parametrize("device_model", ["plain", "fast"])
def test_point_choice_does_not_depend_on_the_memory_layout(model, device_model):
    """The same coarse logits and P2 features, contiguous or channels-last, give identical cells and logits,
    even with exact ties in the uncertainty: the subdivision makes its map contiguous NCHW before top-k."""
    net = model if device_model == "plain" else prepare_for_inference(model)
    coarse = quantised_logits((2, DEMO.model.num_classes, 24, 40))
    fine = torch.randn(2, DEMO.model.fpn_channels, 24, 40, generator=torch.Generator().manual_seed(4))
    u = coarse.topk(2, dim=1).values
    assert (u[:, 0] - u[:, 1]).unique().numel() < 20  # exact ties everywhere: the tie-break decides
    outputs = []
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            outputs.append(net.refine(fine.contiguous(memory_format=layout), coarse.contiguous(memory_format=layout),
                                      2, 300, record_steps=True))
    contiguous, channels_last = outputs
    assert not coarse.contiguous(memory_format=torch.channels_last).is_contiguous()
    for a, b in zip(contiguous.steps, channels_last.steps):
        assert torch.equal(a.point_indices, b.point_indices)
    assert torch.equal(contiguous.logits, channels_last.logits)


@pytest.mark.parametrize("classes", [2, 6, 21])
def test_top2_uncertainty_equals_the_topk_one_bit_for_bit(classes):
    logits = torch.randn(2, classes, 17, 23, generator=torch.Generator().manual_seed(classes))
    logits[0, :, :3] = 0.5  # every class tied
    logits[1, classes - 1] = logits[1, 0]  # the top value twice
    assert torch.equal(top2_uncertainty(logits), uncertainty(logits))
    quantised = quantised_logits((1, classes, 30, 40))
    assert torch.equal(top2_uncertainty(quantised), uncertainty(quantised))


@pytest.mark.parametrize("record", [True, False])
def test_the_in_place_subdivision_step_equals_the_recorded_one(model, record):
    """The step written in place (no copy of the map) gives the same cells and logits as the recorded one,
    whose upsampled map is not overwritten by the update; and the fast path's refinement is that step's."""
    fast = prepare_for_inference(model)
    for coarse in (quantised_logits((2, DEMO.model.num_classes, 24, 32)),
                   torch.randn(2, DEMO.model.num_classes, 24, 32, generator=torch.Generator().manual_seed(5))):
        fine = torch.randn(2, DEMO.model.fpn_channels, 24, 32, generator=torch.Generator().manual_seed(6))
        with torch.inference_mode():
            theirs, their_step = fast.model.subdivide(coarse, fine, coarse, 500)  # recorded
            ours, our_step = fast.model.subdivide(coarse, fine, coarse, 500, record=record)
            refined = fast.refine(fine, coarse, steps=1, num_points=500).logits
        assert torch.equal(our_step.point_indices, their_step.point_indices)
        assert torch.equal(our_step.uncertainty, their_step.uncertainty)
        assert torch.equal(ours, theirs) and torch.equal(refined, theirs)
        assert torch.equal(our_step.logits, their_step.logits) == record
        assert not torch.equal(their_step.logits, theirs)  # the recorded map is the one before the update


def test_channels_last_input_gives_the_same_points_as_contiguous(model):
    x = images()
    fast = prepare_for_inference(model)
    a = fast(x, record_steps=True)
    b = fast(x.contiguous(memory_format=torch.channels_last), record_steps=True)
    for step_a, step_b in zip(a.steps, b.steps):
        assert torch.equal(step_a.point_indices, step_b.point_indices)
    assert torch.equal(a.logits, b.logits)
    # The plain model on a channels-last input runs other kernels: the same points up to near-ties.
    assert_same_output_up_to_near_ties(eager(model, x.contiguous(memory_format=torch.channels_last)), eager(model, x))


# ------------------------------------------------------------------------------------------------ bf16


BF16_AGREEMENT_RANDOM = 0.95
"""Refined argmax agreement of bf16 with fp32 eager on `demo_model_with_statistics` and `images()`: measured
0.979 on Zen 4 (AVX-512-BF16). Why it is not 1: bf16 keeps 8 significant bits and autocast rounds every
convolution's input and weights to it (relative error 2^-9 each, float32 accumulation); over 25 layers the
coarse logits move by about 0.35 % of their scale rms, 1.8 % at most (measured). A pixel whose top-2 gap is
within that may flip, and so may a point choice where two uncertainties are that close (about 1 % of the
4096 cells per step here); a cell refined on one side only then holds the point head's logits there and the
upsampled coarse ones on the other, and with *random* weights the two disagree about the class most of the
time. A trained model's point head mostly agrees with its coarse head, hence `BF16_AGREEMENT_TRAINED`; this
bound only says that bf16 runs the same network. Margin: another CPU's kernels (no AVX-512-BF16: oneDNN
converts instead) round differently and flip other near-ties."""
BF16_AGREEMENT_TRAINED = 0.998
"""The same on every val image of the briefly trained demo model (`trained`): measured 0.99902 at worst,
0.99957 on average (and 0.99956 worst / 0.99978 average on the fully trained demo row's 60 val images)."""
BF16_MIOU_BOUND = 0.25
"""|mIoU(bf16) - mIoU(fp32 eager)|, and the same for boundary mIoU, refined and coarse, in percentage points
on `trained`'s 8 val images of 128x128: measured 0.065 at most (refined mIoU 46.90 -> 46.83). On so small a
val set one flipped pixel of a small class moves its IoU by up to ~0.1 pp, hence the margin. (The fully
trained demo row, 60 val images at 256x256: 58.713 -> 58.710, boundary 47.595 -> 47.598; benchmarks/
inference.py --checkpoint runs/demo/checkpoint_final.pth measures it again.)"""


def test_bf16_argmax_agreement_has_a_measured_bound(model, reference):
    fast = prepare_for_inference(model, "bf16")
    out = fast(images(), record_steps=True)
    assert out.logits.dtype == out.coarse_logits.dtype == F32
    assert all(s.logits.dtype == s.uncertainty.dtype == F32 for s in out.steps)
    agreement = argmax_agreement(out, reference)
    print(f"bf16 argmax agreement {agreement:.5f}")
    assert BF16_AGREEMENT_RANDOM <= agreement < 1.0  # < 1: it really ran in bf16
    coarse_error = max_abs_difference(out.coarse_logits, reference.coarse_logits) / scale(reference.coarse_logits)
    assert 1e-4 < coarse_error < 0.05  # bf16's rounding, not float32's, and not a broken network


def test_bf16_point_choice_runs_in_float32(model):
    """The subdivision's upsampling, uncertainty and top-k see float32 logits in bf16 mode: bf16 would
    quantise the uncertainty to 8 bits and make ties of most cells."""
    out = prepare_for_inference(model, "bf16")(images(1), record_steps=True)
    u = out.steps[0].uncertainty.flatten()
    assert u.unique().numel() > 0.5 * u.numel()
    assert not torch.equal(u, u.bfloat16().float())


# --------------------------------------------------------------------------------------------- compile


@pytest.mark.slow  # inductor compiles C++ for the first call: about a minute on 2 cores
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("gcc") is None, reason="inductor needs a C++ compiler")
def test_compiled_features_match_the_eager_fast_path(model, reference):
    fast = prepare_for_inference(model, compile=True)
    assert fast.compiled
    x = images()
    started = time.perf_counter()
    out = fast(x, record_steps=True)
    print(f"first compiled call {time.perf_counter() - started:.1f} s")
    assert_same_output_up_to_near_ties(out, reference)
    again = fast(x, record_steps=True)  # no recompilation needed for the same shape; same kernels, same values
    assert torch.equal(again.logits, out.logits)


# -------------------------------------------------------------------------------------- accuracy measured


TINY_DEMO = replace(
    DEMO,
    name="tiny_demo",
    data=replace(DEMO.data, crop_size=(64, 64), base_size=(128, 128)),
    schedule=replace(DEMO.schedule, batch_size=4, warmup_iters=5, workers_per_process=0),
)
"""The demo network on 128x128 images, 64x64 crops, batch 4: 120 steps train in about 30 s on 2 cores
(70 s on one thread without SIMD) and reach a refined mIoU of about 47 % (coarse 35 %) on 8 val images: a model that has learnt the shapes, so
that its near-ties are a trained model's, not a random one's."""
TRAIN_STEPS = 120


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[PointRend, Path]:
    """The demo model trained for `TRAIN_STEPS` steps on a tiny demo dataset (40 images, 8 of them val)."""
    from pointrend_core.checkpoints import load_checkpoint
    from pointrend_core.data.demo import make_demo_dataset
    from pointrend_core.engine.train import TrainOptions, train

    base = tmp_path_factory.mktemp("tiny_demo")
    root = make_demo_dataset(base / "demo", num_images=40, size=128)
    options = TrainOptions(max_iters=TRAIN_STEPS, device="cpu", workers=0, progress=False, log_every=20)
    checkpoint = train(TINY_DEMO, root, base / "run", options)
    model = build_model(TINY_DEMO)
    load_checkpoint(model, checkpoint)
    return model.eval(), root


@pytest.mark.slow  # trains the demo network for 120 steps
def test_each_precision_keeps_the_metrics_of_fp32_eager(trained):
    from pointrend_core.data.transforms import eval_transforms
    from pointrend_core.engine.evaluate import evaluate

    model, root = trained
    dataset = TINY_DEMO.data.dataset(root, TINY_DEMO.data.val_split, transforms=eval_transforms(TINY_DEMO.data))
    assert len(dataset) == 8
    nets = {"eager fp32": model, "fast fp32": prepare_for_inference(model), "fast bf16": prepare_for_inference(model, "bf16")}
    results = {
        name: evaluate(net, dataset, TINY_DEMO.eval, "cpu", TINY_DEMO.model.num_classes, progress=False)
        for name, net in nets.items()
    }
    rows = {
        name: {
            "mIoU": 100 * r.refined.mIoU, "boundary mIoU": 100 * r.refined_boundary.mIoU,
            "coarse mIoU": 100 * r.coarse.mIoU, "coarse boundary mIoU": 100 * r.coarse_boundary.mIoU,
        }
        for name, r in results.items()
    }
    print("\n" + "\n".join(f"{name:12s} " + "  ".join(f"{k} {v:7.3f}" for k, v in row.items()) for name, row in rows.items()))
    base = rows["eager fp32"]
    assert base["mIoU"] > 30.0  # a model that learnt something: the comparison is not between two noise maps
    for key, value in rows["fast fp32"].items():
        assert abs(value - base[key]) < 0.01, key  # the same predictions up to near-ties (none measured)
    for key, value in rows["fast bf16"].items():
        assert abs(value - base[key]) <= BF16_MIOU_BOUND, key


@pytest.mark.slow  # shares the trained model
def test_trained_model_fast_paths_agree_with_eager(trained):
    from pointrend_core.data.transforms import eval_transforms

    model, root = trained
    dataset = TINY_DEMO.data.dataset(root, TINY_DEMO.data.val_split, transforms=eval_transforms(TINY_DEMO.data))
    fp32, bf16 = prepare_for_inference(model), prepare_for_inference(model, "bf16")
    agreements = []
    for index in range(len(dataset)):
        x = dataset[index][0][None]
        reference = eager(model, x)
        assert_same_output_up_to_near_ties(fp32(x, record_steps=True), reference)
        agreements.append(argmax_agreement(bf16(x, record_steps=True), reference))
    print(f"bf16 argmax agreement: worst {min(agreements):.5f}, mean {sum(agreements) / len(agreements):.5f}")
    assert min(agreements) >= BF16_AGREEMENT_TRAINED


def test_retain_freed_memory_in_a_process_of_its_own():
    """Process-wide (and for good), so in a subprocess: on glibc it takes, and inference still runs."""
    import subprocess
    import sys

    code = (
        "import torch; from pointrend_core.model.inference import retain_freed_memory as r; ok = r(); "
        "x = torch.randn(1 << 24); y = x * 2; del y; print(ok, torch.equal(x * 2, x + x))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    ok, ran = completed.stdout.split()
    assert ran == "True"
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert ok == "True"
