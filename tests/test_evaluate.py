"""Inference modes, test-time augmentation, the evaluation loop (also under 2-process gloo DDP) and run.json."""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from pointrend_core.config import IGNORE_INDEX, ROWS, DataConfig, EvalConfig, ModelConfig, RowConfig, ScheduleConfig
from pointrend_core.engine import evaluate as evaluate_module
from pointrend_core.engine.evaluate import evaluate, evaluate_run, inference_model, predict, slide_windows
from pointrend_core.model import Subdivision, build_model
from pointrend_core.model.inference import InferenceModel

pytestmark = pytest.mark.numerics  # float results on this CPU's kernels: CI runs these twice (.ci/run)

X = IGNORE_INDEX


@dataclass
class FakeOutput:
    logits: Tensor
    coarse_logits: Tensor


class Conv1x1Fake(nn.Module):
    """Translation- and flip-equivariant: both outputs are 1x1 convolutions at the input resolution."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.refine = nn.Conv2d(3, num_classes, 1)
        self.coarse = nn.Conv2d(3, num_classes, 1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)
        self.calls: list[tuple[int, int]] = []

    def forward(self, x: Tensor) -> FakeOutput:
        self.calls.append(tuple(x.shape[-2:]))
        return FakeOutput(self.refine(x), self.coarse(x))


class Stride4Fake(Conv1x1Fake):
    """The real model's output sizes: refined 4*ceil(H/4) x 4*ceil(W/4), coarse ceil(H/4) x ceil(W/4)."""

    def forward(self, x: Tensor) -> FakeOutput:
        coarse = F.avg_pool2d(self.coarse(x), 4, ceil_mode=True)
        return FakeOutput(F.interpolate(self.refine(x), size=(4 * coarse.shape[-2], 4 * coarse.shape[-1])), coarse)


class RampFake(Conv1x1Fake):
    """Adds 0, 1, ..., W-1 along the width to class 0: not flip-equivariant, so flip TTA changes it."""

    def forward(self, x: Tensor) -> FakeOutput:
        out = super().forward(x)
        ramp = torch.arange(x.shape[-1], dtype=x.dtype)
        logits = out.logits.clone()
        logits[:, 0] += ramp
        return FakeOutput(logits, out.coarse_logits)


class OracleFake(nn.Module):
    """Refined logits = 10 x the image (whose channels one-hot encode the label); coarse says class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> FakeOutput:
        coarse = torch.zeros(x.shape[0], 3, 1, 1)
        coarse[:, 0] = 1.0
        return FakeOutput(10 * x, coarse)


def test_slide_windows_layout() -> None:
    assert slide_windows((10, 14), (6, 8), (4, 4)) == [
        (0, 6, 0, 8), (0, 6, 4, 12), (0, 6, 6, 14),
        (4, 10, 0, 8), (4, 10, 4, 12), (4, 10, 6, 14),
    ]
    assert slide_windows((4, 5), (6, 8), (4, 4)) == [(0, 4, 0, 5)]  # smaller than one crop
    with pytest.raises(ValueError, match="stride .* larger than crop"):
        slide_windows((10, 10), (4, 4), (5, 4))


def test_whole_and_slide_agree_for_a_translation_equivariant_model() -> None:
    model = Conv1x1Fake().eval()
    image = torch.randn(1, 3, 20, 28, generator=torch.Generator().manual_seed(1))
    whole = predict(model, image, (15, 21), EvalConfig(mode="whole"))
    model.calls.clear()
    slide = predict(model, image, (15, 21), EvalConfig(mode="slide", slide_crop=(8, 12), slide_stride=(6, 8)))
    assert len(model.calls) == len(slide_windows((20, 28), (8, 12), (6, 8))) == 3 * 3
    for w, s in zip(whole, slide):
        assert w.shape == s.shape == (1, 4, 15, 21)
        torch.testing.assert_close(w, s, rtol=0, atol=1e-5)


def test_outputs_are_resized_straight_to_the_original_size() -> None:
    model = Stride4Fake().eval()
    image = torch.randn(1, 3, 18, 30)
    for cfg in (EvalConfig(), EvalConfig(mode="slide", slide_crop=(12, 12), slide_stride=(8, 8))):
        refined, coarse = predict(model, image, (25, 40), cfg)
        assert refined.shape == coarse.shape == (1, 4, 25, 40)
        assert refined.dtype == coarse.dtype == torch.float32
    # Whole mode: the 20x32 refined map goes directly to 25x40 (no crop back to 18x30, recipe §5.2).
    refined, _ = predict(model, image, (25, 40), EvalConfig())
    raw = model(image).logits
    assert raw.shape[-2:] == (20, 32)
    torch.testing.assert_close(refined, F.interpolate(raw, size=(25, 40), mode="bilinear", align_corners=False))


def test_flip_tta_symmetric_case_and_ramp() -> None:
    image = torch.randn(1, 3, 6, 5)
    image = image + image.flip(-1)  # mirror-symmetric
    model = Conv1x1Fake().eval()
    plain = predict(model, image, (6, 5), EvalConfig())
    flipped = predict(model, image, (6, 5), EvalConfig(flip=True))
    for a, b in zip(plain, flipped):
        torch.testing.assert_close(a, b)
    # With a ramp 0..W-1 on class 0, averaging with the mirrored pass leaves the constant (W-1)/2.
    ramp = RampFake().eval()
    refined, _ = predict(ramp, image, (6, 5), EvalConfig(flip=True))
    expected = plain[0].clone()
    expected[:, 0] += 2.0
    torch.testing.assert_close(refined, expected)


def test_multi_scale_runs_each_scale_and_flip() -> None:
    model = Conv1x1Fake().eval()
    image = torch.ones(1, 3, 20, 30) * torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)  # constant image
    single = predict(model, image, (10, 12), EvalConfig())
    model.calls.clear()
    multi = predict(model, image, (10, 12), EvalConfig(scales=(0.5, 1.0, 1.5), flip=True))
    assert model.calls == [(10, 15), (10, 15), (20, 30), (20, 30), (30, 45), (30, 45)]
    for a, b in zip(single, multi):
        torch.testing.assert_close(a, b)  # a constant image gives the same logits at every scale


def test_multi_scale_rescales_as_the_reference() -> None:
    """sssegmentation rescales each pass with F.interpolate(scale_factor=s): floor of the size, sampled at the
    scale itself. At 301 x 423 and s = 0.75 (225.75 x 317.25) rounding would give 226 x 317 and another grid."""
    model = Conv1x1Fake().eval()
    image = torch.randn(1, 3, 301, 423, generator=torch.Generator().manual_seed(0))
    refined, coarse = predict(model, image, (301, 423), EvalConfig(scales=(0.75,)))
    assert model.calls == [(225, 317)]
    scaled = F.interpolate(image, scale_factor=0.75, mode="bilinear", align_corners=False)
    expected = model(scaled)
    # The same kernels on both sides in one process: the merged logits are the reference's computation.
    torch.testing.assert_close(refined, F.interpolate(expected.logits, size=(301, 423), mode="bilinear",
                                                      align_corners=False), rtol=0, atol=0)
    torch.testing.assert_close(coarse, F.interpolate(expected.coarse_logits, size=(301, 423), mode="bilinear",
                                                     align_corners=False), rtol=0, atol=0)
    rounded = F.interpolate(image, size=(226, 317), mode="bilinear", align_corners=False)
    assert not torch.allclose(F.interpolate(model(rounded).logits, size=(301, 423), mode="bilinear",
                                            align_corners=False), refined, atol=1e-3)  # the size matters


def test_predict_bad_inputs() -> None:
    model = Conv1x1Fake().eval()
    with pytest.raises(ValueError, match=r"one float image \(1, 3, H, W\)"):
        predict(model, torch.zeros(3, 8, 8), (8, 8), EvalConfig())
    with pytest.raises(ValueError, match=r"eval.slide_crop must be two positive integers \(mode 'slide'\)"):
        EvalConfig(mode="slide")  # refused where it is made, before any prediction
    with pytest.raises(TypeError, match=r"\.logits and \.coarse_logits"):
        predict(nn.Identity(), torch.zeros(1, 3, 8, 8), (8, 8), EvalConfig())
    refined, _ = predict(model, torch.randn(1, 3, 8, 8), (8, 8), EvalConfig())
    assert refined.dtype == torch.float32 and not refined.requires_grad


# --- the inference path -----------------------------------------------------------------------------


def test_inference_model_prepares_a_pointrend_and_leaves_it_alone() -> None:
    model = build_model(ROWS["demo"]).train()
    net = inference_model(model, "bf16")
    assert isinstance(net, InferenceModel) and net.precision == "bf16" and not net.compiled
    assert model.training and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())  # all folded

    class Wrapper(nn.Module):  # what DistributedDataParallel looks like from here
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    assert isinstance(inference_model(Wrapper(model)), InferenceModel)
    assert inference_model(net) is net and inference_model(net, "bf16") is net
    with pytest.raises(ValueError, match=r"prepared for precision 'bf16'.*got precision 'fp32' \(compile=True\)"):
        inference_model(net, "fp32", compile=True)
    with pytest.raises(ValueError, match="fp16.*needs a CUDA device"):
        inference_model(model, "fp16", device="cpu")


def test_other_modules_run_as_they_are_in_fp32_only() -> None:
    fake = Conv1x1Fake().eval()
    assert inference_model(fake) is fake
    with pytest.raises(ValueError, match="apply to a PointRend.*Conv1x1Fake runs as it is, in fp32"):
        inference_model(fake, "bf16")
    with pytest.raises(ValueError, match="apply to a PointRend"):
        evaluate(fake, [], EvalConfig(), "cpu", 2, compile=True)


def test_evaluate_runs_the_prepared_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluate` calls the prepared copy (the subdivision settings passed on), never the model itself."""
    model = build_model(ROWS["demo"]).eval()
    calls: list[tuple[type, dict]] = []
    original = InferenceModel.forward

    def spy(self, images, *args, **kwargs):
        calls.append((type(self), kwargs))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(InferenceModel, "forward", spy)
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: pytest.fail("the unprepared model was called"))
    items = [(torch.randn(3, 32, 32), torch.randint(0, 6, (32, 32)))]
    result = evaluate(model, items, EvalConfig(), "cpu", 6, progress=False, subdivision=Subdivision(1, 8))
    assert result.num_images == 1
    assert calls == [(InferenceModel, {"subdivision_steps": 1, "subdivision_num_points": 8})]


# --- evaluation loop --------------------------------------------------------------------------------


def _labels() -> list[Tensor]:
    """Two 4x4 label maps: 16 pixels of class 0, 8 of class 1, 7 of class 2, one ignored."""
    a = torch.zeros(4, 4, dtype=torch.long)
    a[2:] = 1
    b = torch.zeros(4, 4, dtype=torch.long)
    b[:, :2] = 2
    b[0, 0] = X
    return [a, b]


class OracleDataset(torch.utils.data.Dataset):
    """Images (3, 8, 8) one-hot encode the label (upsampled x2, so the resize back to 4x4 is exact)."""

    CLASSES = ("background", "disc", "ring")

    def __init__(self, root: object = None, split: str = "val", transforms: object = None, labels=None) -> None:
        self.root, self.split, self.transforms = root, split, transforms
        self.labels = _labels() if labels is None else labels
        self.classes = self.CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        label = self.labels[i]
        onehot = F.one_hot(label.clamp(max=2), 3).permute(2, 0, 1).float()
        return F.interpolate(onehot[None], scale_factor=2, mode="nearest")[0], label


def test_evaluate_oracle_and_coarse_known_values() -> None:
    model = OracleFake().train()
    result = evaluate(model, OracleDataset(), EvalConfig(), "cpu", 3, progress=False)
    assert model.training  # mode restored
    assert result.num_images == 2 and result.seconds > 0 and result.images_per_second > 0
    assert result.refined.mIoU == 1.0 and result.refined.aAcc == 1.0
    assert result.refined_boundary.iou == (1.0, 1.0, 1.0)
    # Coarse predicts class 0 everywhere: IoU_0 = 16/31, others 0.
    assert result.coarse.iou == pytest.approx((16 / 31, 0.0, 0.0))
    assert result.coarse.mIoU == pytest.approx(16 / 93)
    assert result.coarse.aAcc == pytest.approx(16 / 31)
    assert result.coarse.mAcc == pytest.approx(1 / 3)
    assert result.coarse_boundary.mIoU < 1.0
    only_first = evaluate(model, OracleDataset(), EvalConfig(), "cpu", 3, progress=False, max_images=1)
    assert only_first.num_images == 1
    assert only_first.coarse.iou[:2] == pytest.approx((8 / 16, 0.0)) and math.isnan(only_first.coarse.iou[2])


def test_evaluate_rejects_bad_items() -> None:
    class Bad(OracleDataset):
        def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
            image, label = super().__getitem__(i)
            return image, label.float()

    with pytest.raises(ValueError, match=r"dataset item 0: expected an integer label map \(H, W\)"):
        evaluate(OracleFake(), Bad(), EvalConfig(), "cpu", 3, progress=False)


def _five_labels() -> list[Tensor]:
    return _labels() + [torch.roll(lab, 1, dims=1) for lab in _labels()] + [_labels()[0].flip(0)]


def _ddp_rank(rank: int, store: str, out: str) -> None:
    """One rank of a 2-process gloo group evaluating 5 images (rank 0 takes 3, rank 1 takes 2)."""
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120)
    )
    try:
        result = evaluate(OracleFake(), OracleDataset(labels=_five_labels()), EvalConfig(), "cpu", 3, progress=False)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _ddp_child(index: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    _ddp_rank(1, store, out)


def test_evaluate_under_two_process_gloo_matches_one_process(tmp_path: Path) -> None:
    # This process is rank 0 and one spawned process is rank 1: a single extra interpreter start-up.
    store = str(tmp_path / "store")
    child = mp.spawn(_ddp_child, args=(store, str(tmp_path)), nprocs=1, join=False)
    try:
        _ddp_rank(0, store, str(tmp_path))
        while not child.join():
            pass
    finally:
        for process in child.processes:
            if process.is_alive():
                process.terminate()
    single = evaluate(OracleFake(), OracleDataset(labels=_five_labels()), EvalConfig(), "cpu", 3, progress=False)
    for rank in range(2):
        shard = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert shard.num_images == 5  # 3 + 2 images, none duplicated
        assert shard.refined == single.refined and shard.coarse == single.coarse
        assert shard.refined_boundary == single.refined_boundary
        assert shard.coarse_boundary == single.coarse_boundary
        # Per-image counts gathered from both processes, in dataset order, as one process records them.
        assert (shard.counts.image_index == single.counts.image_index).all()
        assert (shard.counts.counts == single.counts.counts).all() and single.counts.counts.any()
    assert 0 < single.coarse.mIoU < single.refined.mIoU == 1.0


# --- run.json --------------------------------------------------------------------------------------


class TinyDataset(OracleDataset):
    CLASSES = ("background", "disc", "ring", "unused")  # 'unused' never occurs: its IoU is null

    def __init__(self, root: object, split: str, transforms: object = None) -> None:
        super().__init__(root, split, transforms)
        self.classes = self.CLASSES
        TinyDataset.seen = (root, split, transforms)


def _tiny_row() -> RowConfig:
    data = DataConfig(
        dataset=TinyDataset, default_root="data/tiny", train_split="train", val_split="val",
        crop_size=(4, 4), base_size=(4, 4),
    )
    return RowConfig(
        name="tiny", model=ModelConfig(num_classes=4), data=data,
        schedule=ScheduleConfig(batch_size=1, epochs=1), published_miou=50.0,
    )


class Oracle4Fake(OracleFake):
    def forward(self, x: Tensor) -> FakeOutput:
        out = super().forward(x)
        pad = torch.full_like(x[:, :1], -1.0)
        return FakeOutput(torch.cat([out.logits, pad], 1), torch.cat([out.coarse_logits, -torch.ones(1, 1, 1, 1)], 1))


@pytest.fixture
def fake_transforms(monkeypatch: pytest.MonkeyPatch) -> object:
    """Stands in for eval_transforms (TinyDataset ignores the transform it is given)."""
    sentinel = object()
    monkeypatch.setattr(evaluate_module, "eval_transforms", lambda data_cfg: sentinel)
    return sentinel


def _no_nan_constant(token: str) -> None:
    raise AssertionError(f"run.json holds the non-JSON constant {token}")


def test_evaluate_run_writes_run_json(tmp_path: Path, fake_transforms: object, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[tuple[nn.Module, object]] = []
    monkeypatch.setattr(evaluate_module, "load_checkpoint", lambda model, path: loaded.append((model, path)) or {})
    monkeypatch.setattr(evaluate_module, "check_checkpoint_path", Path)  # no file: the load is faked
    (tmp_path / "train.json").write_text(
        json.dumps({"iterations": 12, "wall_seconds": 3.5, "checkpoint": str(tmp_path / "checkpoint_final.pth")}))
    model = Oracle4Fake()
    row = _tiny_row()

    record = evaluate_run(row, tmp_path / "checkpoint_final.pth", tmp_path / "data", tmp_path, model=model,
                          progress=False)

    assert TinyDataset.seen == (tmp_path / "data", "val", fake_transforms)
    assert loaded == [(model, str(tmp_path / "checkpoint_final.pth"))]
    on_disk = json.loads((tmp_path / "run.json").read_text(), parse_constant=_no_nan_constant)
    assert on_disk == record.to_json()
    assert set(on_disk) == {
        "row", "units", "config", "checkpoint", "data", "published_mIoU", "metrics", "gain_refined_minus_coarse",
        "delta_refined_minus_published_mIoU", "timing", "environment", "training", "intervals",
    }
    assert (tmp_path / "image_counts.npz").is_file()  # per-image counts beside run.json (engine.image_counts)
    assert on_disk["intervals"]["num_images"] == 2 and on_disk["intervals"]["refined_mIoU"]["estimate"] == 100.0
    assert on_disk["row"] == "tiny" and "percentage" in on_disk["units"]
    assert on_disk["config"]["data"]["dataset"] == "TinyDataset"
    assert on_disk["config"]["eval"]["mode"] == "whole"
    assert on_disk["checkpoint"] == str(tmp_path / "checkpoint_final.pth")
    assert on_disk["data"]["num_images"] == 2 and on_disk["data"]["split"] == "val"
    refined, coarse = on_disk["metrics"]["refined"], on_disk["metrics"]["coarse"]
    assert refined["mIoU"] == 100.0 and refined["boundary_mIoU"] == 100.0
    assert refined["IoU"] == {"background": 100.0, "disc": 100.0, "ring": 100.0, "unused": None}
    assert refined["boundary_IoU"]["unused"] is None and refined["Acc"]["unused"] is None
    assert coarse["mIoU"] == pytest.approx(100 * 16 / 93)
    assert coarse["IoU"]["background"] == pytest.approx(100 * 16 / 31)
    assert on_disk["gain_refined_minus_coarse"]["mIoU"] == pytest.approx(100 - 100 * 16 / 93)
    assert on_disk["published_mIoU"] == 50.0
    assert on_disk["delta_refined_minus_published_mIoU"] == pytest.approx(50.0)
    assert on_disk["timing"]["num_images"] == 2 and on_disk["timing"]["images_per_second"] > 0
    env = on_disk["environment"]
    assert env["torch"] == torch.__version__ and env["cpu_count"] >= 1 and env["device"] == "cpu"
    assert {"torchvision", "device_name", "cuda_device_name", "date"} <= set(env)
    assert on_disk["training"]["iterations"] == 12 and on_disk["training"]["wall_seconds"] == 3.5
    assert not list(tmp_path.glob(".run.json.*"))  # no temporary left behind


def test_every_evaluation_keeps_its_own_record(tmp_path: Path, fake_transforms: object, monkeypatch) -> None:
    monkeypatch.setattr(evaluate_module, "load_checkpoint", lambda model, path: {})
    monkeypatch.setattr(evaluate_module, "check_checkpoint_path", Path)  # no file: the load is faked
    (tmp_path / "train.json").write_text(json.dumps({"iterations": 12, "checkpoint": str(tmp_path / "checkpoint_final.pth")}))
    row = _tiny_row()
    # The run's own final checkpoint: its training summary is merged.
    record = evaluate_run(row, tmp_path / "checkpoint_final.pth", None, tmp_path, model=Oracle4Fake(), progress=False)
    assert record.training is not None and record.training.iterations == 12
    again = evaluate_run(row, tmp_path / "checkpoint_final.pth", None, tmp_path, model=Oracle4Fake(), progress=False)
    assert again.checkpoint == record.checkpoint  # the same evaluation refreshes its own record
    # Another checkpoint, split or image count never replaces it, and never claims that training.
    for kwargs in ({"checkpoint": tmp_path / "other.pth"}, {"split": "train"}, {"max_images": 1}):
        args = {"checkpoint": tmp_path / "checkpoint_final.pth", **kwargs}
        with pytest.raises(ValueError, match=r"run\.json already records another evaluation .*pass another --out"):
            evaluate_run(row, args.pop("checkpoint"), None, tmp_path, model=Oracle4Fake(), progress=False, **args)
    # The last checkpoint, evaluated while the run was interrupted, gives way to the finished run's final one;
    # it claims the training only when it holds the iteration that training ended at.
    (tmp_path / "run.json").unlink()
    monkeypatch.setattr(evaluate_module, "load_checkpoint", lambda model, path: {"iteration": 7})
    monkeypatch.setattr(evaluate_module, "check_checkpoint_path", Path)  # no file: the load is faked
    last = evaluate_run(row, tmp_path / "checkpoint_last.pth", None, tmp_path, model=Oracle4Fake(), progress=False)
    assert last.training is None  # iteration 7, the training ended at 12
    monkeypatch.setattr(evaluate_module, "load_checkpoint", lambda model, path: {"iteration": 12})
    monkeypatch.setattr(evaluate_module, "check_checkpoint_path", Path)  # no file: the load is faked
    final = evaluate_run(row, tmp_path / "checkpoint_final.pth", None, tmp_path, model=Oracle4Fake(), progress=False)
    assert final.checkpoint == str(tmp_path / "checkpoint_final.pth") and final.training.iterations == 12
    other = evaluate_run(row, tmp_path / "other.pth", None, tmp_path / "elsewhere", model=Oracle4Fake(), progress=False)
    assert other.training is None
    assert evaluate_module.default_evaluation_folder(row, tmp_path / "checkpoint_final.pth", None, None, None) == tmp_path
    assert evaluate_module.default_evaluation_folder(row, tmp_path / "other.pth", None, "val", 5) == (
        tmp_path / "evaluations" / "other_tiny_val_first5")


def test_evaluate_run_without_train_json_and_with_bad_one(tmp_path: Path, fake_transforms: object, monkeypatch) -> None:
    row = replace(_tiny_row(), published_miou=None)
    record = evaluate_run(row, None, None, tmp_path, model=Oracle4Fake(), max_images=1, progress=False)
    assert record.training is None and record.checkpoint is None
    assert record.delta_refined_minus_published_mIoU is None
    assert record.data.root == str(Path("data/tiny").resolve()) and record.data.num_images == 1
    (tmp_path / "run.json").unlink()  # that evaluation keeps its record otherwise
    (tmp_path / "train.json").write_text("{not json")
    monkeypatch.setattr(evaluate_module, "load_checkpoint", lambda model, path: {})
    monkeypatch.setattr(evaluate_module, "check_checkpoint_path", Path)  # no file: the load is faked
    with pytest.raises(ValueError, match=r"train\.json: not a valid JSON training summary"):
        evaluate_run(row, tmp_path / "checkpoint_final.pth", None, tmp_path, model=Oracle4Fake(), progress=False)


def test_an_evaluation_is_the_same_one_from_another_working_directory(
    tmp_path: Path, fake_transforms: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record keeps the data root absolute: given relative from one directory and absolute from another,
    it is the same evaluation, which refreshes its record (an evaluation of other data would be refused)."""
    row = replace(_tiny_row(), published_miou=None)
    out = tmp_path / "run"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    first = evaluate_run(row, None, "data/tiny", out, model=Oracle4Fake(), max_images=1, progress=False)
    assert first.data.root == str(tmp_path / "data" / "tiny")
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = evaluate_run(row, None, tmp_path / "data" / "tiny", out, model=Oracle4Fake(), max_images=1,
                         progress=False)
    assert again.data.root == first.data.root
    with pytest.raises(ValueError, match="pass another --out"):
        evaluate_run(row, None, "data/tiny", out, model=Oracle4Fake(), max_images=1, progress=False)  # other data
