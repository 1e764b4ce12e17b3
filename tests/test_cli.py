"""`python -m pointrend_core`: argument errors, check-data exit codes, make-demo-data, and a tiny train +
evaluate through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pointrend_core.__main__ import build_parser, main, resolve_row
from pointrend_core.data.demo import DemoShapes
from synthetic_trees import write_voc_tree


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return int(exited.value.code)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--config", "nope"], "unknown config 'nope'; expected one of: pointrend_r50_voc, pointrend_r101_voc"),
        (["train"], "the following arguments are required: --config"),
        (["train", "--config", "demo", "--max-iters", "0"], "--max-iters: must be a positive integer, got 0"),
        (["train", "--config", "demo", "--crop", "64"], "--crop: expected 2 arguments"),
        (["train", "--config", "demo", "--amp", "fp8"], "--amp: invalid choice: 'fp8'"),
        (["train", "--config", "demo", "--workers", "-1"], "--workers: must be an integer >= 0, got -1"),
        (["evaluate", "--config", "demo"], "the following arguments are required: --checkpoint"),
        (["check-data", "--dataset", "coco", "--root", "x"], "--dataset: invalid choice: 'coco'"),
        (["make-demo-data"], "the following arguments are required: --out"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_argument_errors_exit_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert _exit_code(argv) == 2
    assert message in capsys.readouterr().err


def test_overrides_replace_the_row() -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "--config", "pointrend_r50_voc", "--batch-size", "4", "--crop", "96", "128"])
    row = resolve_row(parser, args)
    assert row.name == "pointrend_r50_voc"
    assert row.schedule.batch_size == 4 and row.data.crop_size == (96, 128)
    assert row.schedule.epochs == 60 and row.data.base_size == (2048, 512)  # the rest of the recipe is kept
    untouched = resolve_row(parser, parser.parse_args(["train", "--config", "pointrend_r50_voc"]))
    assert untouched.schedule.batch_size == 16 and untouched.data.crop_size == (512, 512)
    assert parser.parse_args(["train", "--config", "demo", "--out-dir", "x"]).out == Path("x")  # alias


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc_tree(tmp_path_factory.mktemp("voc") / "VOC2012", num_images=3, size=(40, 48), seed=1)


def test_check_data_exits_0_with_a_summary_on_good_data(voc_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check-data", "--dataset", "voc", "--root", str(voc_root)]) == 0
    assert capsys.readouterr().out == f"ok: VOCSegmentation at {voc_root}: train 3 images, val 3 images\n"
    assert main(["check-data", "--dataset", "voc", "--root", str(voc_root), "--split", "val"]) == 0
    assert capsys.readouterr().out == f"ok: VOCSegmentation at {voc_root}: val 3 images\n"


def test_check_data_prints_every_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_voc_tree(tmp_path / "VOC2012", num_images=3, size=(40, 48), seed=1)
    (root / "SegmentationClass" / "2007_000001.png").unlink()
    (root / "JPEGImages" / "2007_010002.jpg").write_bytes(b"not a jpeg")
    assert main(["check-data", "--dataset", "voc", "--root", str(root)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert "2007_000001.png" in lines[0] and "does not exist" in lines[0]
    assert "2007_010002.jpg" in lines[1]
    assert "2 problem(s) in VOCSegmentation" in captured.err
    assert main(["check-data", "--dataset", "ade20k", "--root", str(tmp_path / "missing")]) == 1
    assert "is not a directory" in capsys.readouterr().out


def test_runtime_errors_exit_1_naming_the_problem(tmp_path: Path, voc_root: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.pth"
    code = main(["evaluate", "--config", "demo", "--data-root", str(voc_root), "--checkpoint", str(missing),
                 "--device", "cpu", "--no-progress"])
    assert code == 1
    assert f"{missing} does not exist" in capsys.readouterr().err
    absent = tmp_path / "no_data"
    code = main(["train", "--config", "demo", "--data-root", str(absent), "--out", str(tmp_path / "run"),
                 "--device", "cpu"])
    assert code == 1
    assert f"error: DemoShapes root {absent} is not a directory" in capsys.readouterr().err
    code = main(["train", "--config", "demo", "--data-root", str(voc_root), "--out", str(tmp_path / "run"),
                 "--device", "cpu", "--amp", "fp16"])
    assert code == 1
    assert "amp 'fp16' needs CUDA" in capsys.readouterr().err
    code = main(["evaluate", "--config", "demo", "--data-root", str(voc_root), "--checkpoint", str(missing),
                 "--device", "cpu", "--precision", "fp16", "--out", str(tmp_path / "fp16")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: precision 'fp16' needs a CUDA device (got 'cpu')") and err.count("\n") == 1
    assert not (tmp_path / "fp16").exists()  # refused before anything was read or written
    common = ["--config", "demo", "--data-root", str(voc_root), "--out", str(tmp_path / "run"), "--device", "foo"]
    for argv in (["train", *common], ["evaluate", *common, "--checkpoint", str(missing)]):
        code = main(argv)
        assert code == 1
        err = capsys.readouterr().err
        assert err == "error: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'foo'\n"  # no traceback


def test_make_demo_data_train_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "demo"
    assert main(["make-demo-data", "--out", str(root), "--num-images", "6", "--seed", "2"]) == 0
    assert capsys.readouterr().out == f"demo dataset written to {root}\n"
    train_images = len(DemoShapes(root, "train"))
    assert train_images >= 2 and len(DemoShapes(root, "val")) >= 1

    out = tmp_path / "run"
    code = main(["train", "--config", "demo", "--data-root", str(root), "--out", str(out), "--crop", "64", "64",
                 "--batch-size", "2", "--max-iters", "2", "--device", "cpu", "--workers", "0", "--no-progress",
                 "--seed", "4"])
    assert code == 0
    assert capsys.readouterr().out == f"final checkpoint: {out / 'checkpoint_final.pth'}\n"
    summary = json.loads((out / "train.json").read_text())
    assert summary["iterations"] == 2 and summary["seed"] == 4 and summary["config"]["data"]["crop_size"] == [64, 64]

    code = main(["evaluate", "--config", "demo", "--data-root", str(root), "--checkpoint",
                 str(out / "checkpoint_final.pth"), "--max-images", "1", "--device", "cpu", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("demo: mIoU ") and printed.rstrip().endswith(str(out / "run.json"))
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["num_images"] == 1 and run["checkpoint"] == str(out / "checkpoint_final.pth")
    assert run["training"]["iterations"] == 2  # the training summary is merged into the run record
    assert 0 <= run["metrics"]["refined"]["mIoU"] <= 100
    assert run["timing"]["precision"] == "fp32" and run["timing"]["compiled"] is False

    bf16_out = tmp_path / "bf16"
    code = main(["evaluate", "--config", "demo", "--data-root", str(root), "--checkpoint",
                 str(out / "checkpoint_final.pth"), "--max-images", "1", "--device", "cpu", "--no-progress",
                 "--precision", "bf16", "--out", str(bf16_out)])
    assert code == 0
    assert "on 1 images (bf16, " in capsys.readouterr().out
    bf16_run = json.loads((bf16_out / "run.json").read_text())
    assert bf16_run["timing"]["precision"] == "bf16" and bf16_run["timing"]["compiled"] is False


def test_only_the_command_line_process_keeps_its_freed_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m pointrend_core evaluate` owns its process and calls `retain_freed_memory` (process-wide);
    `main()` called from another program (a notebook, these tests) must leave that program's malloc alone."""
    import pointrend_core.__main__ as cli

    calls: list[int] = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(1) or True)
    root = tmp_path / "demo"
    assert main(["make-demo-data", "--out", str(root), "--num-images", "6", "--seed", "2"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--config", "demo", "--data-root", str(root), "--out", str(run), "--crop", "64", "64",
                 "--batch-size", "2", "--max-iters", "1", "--device", "cpu", "--workers", "0", "--no-progress"]) == 0
    evaluate = ["evaluate", "--config", "demo", "--data-root", str(root), "--checkpoint",
                str(run / "checkpoint_final.pth"), "--max-images", "1", "--device", "cpu", "--no-progress"]
    assert main([*evaluate, "--out", str(tmp_path / "embedded")]) == 0
    assert calls == []
    assert main([*evaluate, "--out", str(tmp_path / "own")], own_process=True) == 0
    assert calls == [1]


@pytest.mark.slow
def test_a_bad_image_in_a_loader_worker_ends_the_run_at_once_with_its_message(tmp_path: Path) -> None:
    """With loader workers (the default) a decoding error used to leave the process waiting on its workers
    for ever; it must end like with --workers 0: one line naming the file, exit 1, no traceback."""
    import os
    import subprocess
    import sys
    import time

    from pointrend_core.data.demo import make_demo_dataset

    root = make_demo_dataset(tmp_path / "demo", num_images=10, size=64)
    bad = root / "JPEGImages" / "demo_00000.jpg"  # a training image (every fifth is val)
    bad.write_bytes(bad.read_bytes()[:300])
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "pointrend_core", "train", "--config", "demo", "--data-root", str(root), "--out",
         str(tmp_path / "run"), "--crop", "32", "32", "--batch-size", "2", "--max-iters", "40", "--workers", "2",
         "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    seconds = time.perf_counter() - started
    assert completed.returncode == 1, completed.stderr[-2000:]
    assert f"error: cannot decode image {bad}" in completed.stderr
    assert "Traceback" not in completed.stderr and "DataLoader worker" not in completed.stderr
    assert seconds < 60  # it used to hang until killed
