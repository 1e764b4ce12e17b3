"""The trainer end to end on a generated VOC tree with a tiny PointRend: files, exact resume after SIGKILL and
SIGTERM, NaN handling, bf16 autocast, and the data-order pieces (sampler, per-sample seeding)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from pointrend_core.checkpoints import load_checkpoint
from pointrend_core.config import DEMO, replace
from pointrend_core.data.datasets import VOCSegmentation
from synthetic_trees import write_voc_tree
from pointrend_core.data.transforms import train_transforms
from pointrend_core.engine.schedule import poly_lr
from pointrend_core.engine.progress import read_progress
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.data.loading import EpochSampler, SeededSamples
from pointrend_core.engine.state import Position, TrainState
from pointrend_core.engine.train import NonFiniteLossError, TrainOptions, train
from pointrend_core.model import build_model

REPO = Path(__file__).resolve().parents[1]

TINY = replace(
    DEMO,
    name="tiny_voc",
    model=replace(
        DEMO.model, num_classes=21, fpn_channels=32, scale_head_channels=16, point_head_channels=32,
        train_num_points=128, subdivision_num_points=256,
    ),
    data=replace(
        DEMO.data, dataset=VOCSegmentation, train_split="train", val_split="val", crop_size=(64, 64),
        base_size=(96, 64),
    ),
    schedule=replace(DEMO.schedule, batch_size=2, epochs=2, lr=0.01, warmup_iters=3, workers_per_process=0),
)
"""R-18 with narrow heads, 64x64 crops, batch 2: about a third of a second per step on one CPU thread."""


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 7 images: 3 steps per epoch with batch 2, the last image dropped, so epochs and resumes cross boundaries.
    return write_voc_tree(tmp_path_factory.mktemp("voc") / "VOC2012", num_images=7, size=(80, 96), seed=0)


def _options(**overrides: object) -> TrainOptions:
    base = dict(device="cpu", workers=0, log_every=1, progress=False)
    base.update(overrides)
    return TrainOptions(**base)  # type: ignore[arg-type]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------------------
# End to end in this process


@pytest.fixture(scope="module")
def short_run(voc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    final = train(TINY, voc_root, out, _options(max_iters=4, checkpoint_every=3, seed=3))
    assert final == out / "checkpoint_final.pth"
    return out


def test_training_writes_checkpoints_metrics_and_summary(short_run: Path) -> None:
    out = short_run
    assert sorted(p.name for p in out.iterdir()) == [  # the lock goes when the run ends
        "checkpoint_final.pth", "checkpoint_last.pth", "metrics.jsonl", "progress.json", "tensorboard", "train.json"
    ]
    progress = read_progress(RunFolder(out).progress_file)
    assert (progress.iteration, progress.max_iters, progress.start_iteration) == (4, 4, 0)
    assert progress.eta_seconds == 0.0 and progress.session_seconds > 0
    records = _read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    # Each record's lr is the one of the step just taken (step index = iteration - 1).
    for record in records:
        expected = poly_lr(record["iteration"] - 1, 4, 0.01, warmup_iters=3)
        assert record["lr"] == pytest.approx(expected, rel=1e-12)
        assert record["loss"] == pytest.approx(record["loss_aux"] + record["loss_point"])
        assert record["window"] == 1
    assert [r["epoch"] for r in records] == pytest.approx([1 / 3, 2 / 3, 1.0, 4 / 3])

    summary = json.loads((out / "train.json").read_text())
    assert summary["row"] == "tiny_voc"
    assert summary["iterations"] == 4 and summary["max_iters"] == 4 and summary["iters_per_epoch"] == 3
    assert summary["epochs"] == pytest.approx(4 / 3)
    assert summary["world_size"] == 1 and summary["per_process_batch"] == 2
    assert summary["synchronized_batchnorm_layers"] == 0
    assert summary["amp"] == "fp32" and summary["device"] == "cpu"
    assert summary["seed"] == 3
    assert summary["iters_per_second"] > 0 and summary["wall_seconds"] > 0
    assert set(summary["final_losses"]) == {"loss", "loss_aux", "loss_point"}
    assert summary["final_losses"]["loss_point"] == pytest.approx(records[-1]["loss_point"])
    assert summary["environment"]["torch"] == torch.__version__


def test_checkpoint_content_loads_with_weights_only(short_run: Path) -> None:
    state = torch.load(short_run / "checkpoint_last.pth", weights_only=True)
    assert state["iteration"] == 4 and state["epoch"] == 1 and state["batch_in_epoch"] == 1
    assert state["max_iters"] == 4  # 4 steps of 3 per epoch: epoch 1, batch 1 (above)
    # The file is exactly TrainState's fields (its one schema), and reads back as one.
    assert list(state) == [f.name for f in dataclasses.fields(TrainState)]
    assert TrainState.read(short_run / "checkpoint_last.pth").position == Position(4, 1, 1)
    assert state["row"] == "tiny_voc" and state["sampler_seed"] == 3 and state["world_size"] == 1
    assert state["rng_cpu"][0].dtype == torch.uint8 and state["rng_cuda"] is None
    assert state["options"]["max_iters"] == 4 and state["options"]["checkpoint_every"] == 3
    momentum = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert len(momentum) == len(state["optimizer"]["param_groups"][0]["params"]) > 100
    final = torch.load(short_run / "checkpoint_final.pth", weights_only=True)
    assert all(torch.equal(final["model"][k], v) for k, v in state["model"].items())
    # The package's loader accepts it as initial weights for a fresh model.
    model = build_model(TINY)
    load_checkpoint(model, short_run / "checkpoint_final.pth")
    assert torch.equal(model.decoder[1].weight, state["model"]["decoder.1.weight"])


def test_resume_refuses_a_checkpoint_of_another_row_or_batch(short_run: Path, voc_root: Path) -> None:
    with pytest.raises(ValueError, match="written for row 'tiny_voc', not 'other'"):
        train(replace(TINY, name="other"), voc_root, short_run, _options(resume=True))
    bigger = replace(TINY, schedule=replace(TINY.schedule, batch_size=4))
    with pytest.raises(ValueError, match="1 processes x batch 2; this run has 1 x 4"):
        train(bigger, voc_root, short_run, _options(resume=True))


def test_resume_of_a_finished_run_only_rewrites_the_summary(short_run: Path, voc_root: Path) -> None:
    before = torch.load(short_run / "checkpoint_final.pth", weights_only=True)["model"]
    train(TINY, voc_root, short_run, _options(max_iters=4, resume=True))
    after = torch.load(short_run / "checkpoint_final.pth", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((short_run / "train.json").read_text())["resumed_from_iteration"] == 4
    assert len(_read_jsonl(short_run / "metrics.jsonl")) == 4


def test_periodic_and_final_evaluation(voc_root: Path, tmp_path: Path) -> None:
    row = replace(TINY, schedule=replace(TINY.schedule, eval_every_epochs=1))
    train(row, voc_root, tmp_path, _options(max_iters=4, evaluate=True, eval_max_images=2, log_every=2))
    mid = json.loads((tmp_path / "eval" / "epoch_001" / "run.json").read_text())
    final = json.loads((tmp_path / "run.json").read_text())
    assert mid["data"]["num_images"] == final["data"]["num_images"] == 2 and mid["data"]["split"] == "val"
    assert mid["training"] is None and final["training"]["iterations"] == 4  # train.json merged at the end
    assert final["checkpoint"] == str(tmp_path / "checkpoint_final.pth")
    records = _read_jsonl(tmp_path / "metrics.jsonl")
    scores = [r for r in records if "mIoU" in r]
    assert [(r["iteration"], r["epoch"]) for r in scores] == [(3, 1.0), (4, pytest.approx(4 / 3))]
    assert scores[-1]["mIoU"] == pytest.approx(final["metrics"]["refined"]["mIoU"])
    assert scores[-1]["coarse_mIoU"] == pytest.approx(final["metrics"]["coarse"]["mIoU"])
    assert [r["iteration"] for r in records if "loss" in r] == [2, 4]


class _DivergesAt(nn.Module):
    """The tiny model whose loss turns NaN from the `at`-th call on (call 0 is the first step)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.inner = build_model(TINY)
        self.at, self.calls = at, 0

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = self.inner(images, targets)
        self.calls += 1
        if self.calls > self.at:
            losses["loss_point"] = losses["loss_point"] * float("nan")
        return losses


def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(voc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError) as error:
        train(TINY, voc_root, tmp_path, _options(max_iters=6, checkpoint_every=2), model=_DivergesAt(3))
    message = str(error.value)
    assert "non-finite loss at iteration 3 (epoch 1" in message
    assert "loss_point=nan" in message
    assert f"the last good checkpoint is {tmp_path / 'checkpoint_last.pth'}" in message
    state = torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "checkpoint_final.pth").exists() and not (tmp_path / "train.json").exists()
    assert [r["iteration"] for r in _read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize(("machine_default", "option", "expected"),
                         [(True, None, True), (False, None, False), (True, False, False), (False, True, True)])
def test_the_memory_format_is_the_machines_default_unless_the_option_says(
    voc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    machine_default: bool, option: bool | None, expected: bool,
) -> None:
    monkeypatch.setattr("pointrend_core.engine.train.channels_last_by_default", lambda device, amp: machine_default)
    seen: list[bool] = []
    model = build_model(TINY)
    forward = model.forward

    def recording_forward(images: torch.Tensor, *args: object, **kwargs: object) -> object:
        seen.append(images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous())
        return forward(images, *args, **kwargs)

    model.forward = recording_forward  # type: ignore[method-assign]
    train(TINY, voc_root, tmp_path, _options(max_iters=1, channels_last=option), model=model)
    assert seen == [expected]
    assert model.backbone_net.stem[0].weight.is_contiguous(memory_format=torch.channels_last) is expected
    assert json.loads((tmp_path / "train.json").read_text())["channels_last"] is expected
    assert ("channels-last" if expected else "NCHW") in capsys.readouterr().err


def test_bf16_autocast_on_cpu_trains(voc_root: Path, tmp_path: Path) -> None:
    train(TINY, voc_root, tmp_path, _options(max_iters=2, amp="bf16", channels_last=True))
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["amp"] == "bf16" and summary["channels_last"] is True and summary["iterations"] == 2
    assert all(0 < v < 100 for v in summary["final_losses"].values())
    state = torch.load(tmp_path / "checkpoint_final.pth", weights_only=True)
    assert state["model"]["decoder.1.weight"].dtype == torch.float32


def test_fp16_on_cpu_and_indivisible_batch_are_refused(voc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp16' needs CUDA"):
        train(TINY, voc_root, tmp_path, _options(max_iters=1, amp="fp16"))
    with pytest.raises(ValueError, match="amp must be"):
        TrainOptions(amp="fp8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_iters must be a positive integer"):
        TrainOptions(max_iters=0)
    too_few = replace(TINY, schedule=replace(TINY.schedule, batch_size=8))
    with pytest.raises(ValueError, match="has 7 images: fewer than one batch of 8"):
        train(too_few, voc_root, tmp_path, _options(max_iters=1))


# --------------------------------------------------------------------------------------------------
# Exact resume across processes

_WORKER = """
import sys
sys.path.insert(0, "tests")  # the test helpers import each other by module name, as under pytest
from pointrend_core.engine.train import TrainOptions, TrainingInterrupted, train
from test_train import TINY
root, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
options = TrainOptions(max_iters=6, checkpoint_every=int(sys.argv[4]), seed=11, device="cpu", workers=int(sys.argv[5]),
                       log_every=1, progress=False, resume=resume)
try:
    train(TINY, root, out, options)
except TrainingInterrupted as stop:
    print(stop, file=sys.stderr)
    sys.exit(143)
"""


def _worker(voc_root: Path, out: Path, mode: str, checkpoint_every: int, workers: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(voc_root), str(out), mode, str(checkpoint_every), str(workers)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def _assert_same_state(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert first["iteration"] == second["iteration"] == 6
    assert first["model"].keys() == second["model"].keys()
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    for index, state in first["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], second["optimizer"]["state"][index]["momentum_buffer"])


def _losses(path: Path) -> list[tuple[int, float, float]]:
    return [(r["iteration"], r["loss_aux"], r["loss_point"]) for r in _read_jsonl(path)]


@pytest.mark.slow
def test_killed_or_terminated_runs_resume_to_bit_identical_weights(voc_root: Path, tmp_path: Path) -> None:
    reference, killed, terminated = tmp_path / "reference", tmp_path / "killed", tmp_path / "terminated"
    # Two workers: one with two loader processes killed with SIGKILL after its first checkpoint and resumed at
    # once (its loader processes outlive it for a few seconds: they must not hold the run folder), one sent
    # SIGTERM once it has taken a step (it checkpoints only on the signal: every=100). Meanwhile the
    # uninterrupted reference runs here, with the workers' single thread so that the arithmetic is the same.
    runs = {"killed": _worker(voc_root, killed, "fresh", 2, workers=2),
            "terminated": _worker(voc_root, terminated, "fresh", 100)}
    resumed: dict[str, subprocess.Popen] = {}
    pending = {
        "killed": (lambda: (killed / "checkpoint_last.pth").exists(), signal.SIGKILL),
        "terminated": (lambda: (terminated / "metrics.jsonl").exists() and (terminated / "metrics.jsonl").stat().st_size > 0,
                       signal.SIGTERM),
    }
    deadline = time.monotonic() + 300
    while pending:  # signal each worker as soon as it reaches its point
        for name, (reached, signum) in list(pending.items()):
            if reached():
                runs[name].send_signal(signum)
                del pending[name]
                if signum == signal.SIGKILL:
                    runs[name].wait()
                    resumed[name] = _worker(voc_root, killed, "resume", 2, workers=2)
            elif runs[name].poll() is not None or time.monotonic() > deadline:
                runs[name].kill()
                raise AssertionError(f"{name} worker never reached its point: {runs[name].communicate()[1]}")
        time.sleep(0.01)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TINY, voc_root, reference, _options(max_iters=6, checkpoint_every=2, seed=11))
    finally:
        torch.set_num_threads(threads)

    assert _finish(runs["killed"])[0] == -signal.SIGKILL
    code, stderr = _finish(runs["terminated"])
    assert code == 143, f"{stderr}\nmetrics: {(terminated / 'metrics.jsonl').read_text()}"
    assert "SIGTERM: stopped at iteration" in stderr and "continue with --resume" in stderr
    stopped_at = torch.load(terminated / "checkpoint_last.pth", weights_only=True)["iteration"]
    assert 1 <= stopped_at < 6 and not (terminated / "checkpoint_final.pth").exists()
    # SIGTERM finishes cleanly: no half-written file (a SIGKILL may leave one; the resume removes it).
    left = sorted(p.name for p in terminated.iterdir())
    assert left == ["checkpoint_last.pth", "metrics.jsonl", "progress.json", "tensorboard"]

    resumed["terminated"] = _worker(voc_root, terminated, "resume", 100)
    for name, process in resumed.items():
        code, stderr = _finish(process)
        assert code == 0, f"{name}: {stderr}"

    for out in (killed, terminated):
        _assert_same_state(reference / "checkpoint_final.pth", out / "checkpoint_final.pth")
        # The log is continuous too: records after the checkpoint were dropped and redone with equal losses.
        assert _losses(out / "metrics.jsonl") == _losses(reference / "metrics.jsonl")
        assert json.loads((out / "train.json").read_text())["resumed_from_iteration"] >= 1


# --------------------------------------------------------------------------------------------------
# Data order and augmentation seeding


def test_epoch_sampler_matches_distributed_sampler_and_skips(voc_root: Path) -> None:
    dataset = VOCSegmentation(voc_root, "train")
    for rank in (0, 1):
        sampler = EpochSampler(dataset, world_size=2, rank=rank, seed=5)
        reference = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=5)
        for epoch in (0, 3):
            reference.set_epoch(epoch)
            sampler.set_epoch(epoch)
            expected = [(epoch, i) for i in reference]
            assert list(sampler) == expected and len(sampler) == 4  # ceil(7 / 2), padded
            sampler.set_epoch(epoch, skip=3)
            assert list(sampler) == expected[3:] and len(sampler) == 1
    sampler.set_epoch(0)
    first = [i for _, i in sampler]
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != first  # reshuffled every epoch


def test_seeded_samples_make_the_stream_independent_of_workers_and_global_rng(voc_root: Path) -> None:
    dataset = SeededSamples(VOCSegmentation(voc_root, "train", transforms=train_transforms(TINY.data)), seed=2)
    image, mask = dataset[(1, 4)]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (64, 64) and mask.dtype == torch.int64 and type(image) is torch.Tensor
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again_image, again_mask = dataset[(1, 4)]
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    assert torch.equal(image, again_image) and torch.equal(mask, again_mask)
    assert not torch.equal(image, dataset[(2, 4)][0])  # another epoch, another augmentation

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = EpochSampler(dataset, 1, 0, seed=2)
        sampler.set_epoch(1, skip=2)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, drop_last=True, num_workers=workers)
        return [images for images, _ in loader]

    in_process, with_workers = batches(0), batches(2)
    assert len(in_process) == 2
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers))
