"""Faults and bad input from the command line: nothing a user made is deleted, signals and a full disk end in
one line, conflicting options are refused with a sentence, and a refused command leaves nothing behind.
Signals go to real processes (whole process groups, loader workers on); the full disk is a real tmpfs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pointrend_core.__main__ import main
from pointrend_core.data.datasets import FolderSegmentation
from pointrend_core.data.validate import check_dataset_report
from pointrend_core.engine.run_folder import RunFolder
from synthetic_trees import write_folder_tree

REPO = Path(__file__).resolve().parents[1]
FAST = ["--crop", "64", "64", "--batch-size", "2", "--max-iters", "2", "--device", "cpu", "--workers", "0",
        "--no-progress"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_folder_tree(tmp_path_factory.mktemp("data") / "shapes", num_images=4, size=(64, 80),
                             splits={"train": [0, 1, 2], "val": [3]})


def _train_args(shapes: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "demo", "--dataset", "folder", "--data-root", str(shapes), "--out", str(out),
            *FAST, *extra]


# --------------------------------------------------------------------------------------------------
# Nothing a user made is deleted


def test_a_fresh_run_keeps_what_is_in_eval_folders(shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mine"
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "notes.txt").write_text("my notes")
    assert main(_train_args(shapes, out)) == 1
    err = capsys.readouterr().err
    assert f"error: {out} holds an earlier run (eval/)" in err and "--overwrite" in err
    assert (out / "eval" / "notes.txt").read_text() == "my notes"
    # --overwrite deletes only what runs wrote: a file of the user's there is named and kept.
    assert main(_train_args(shapes, out, "--overwrite")) == 1
    err = capsys.readouterr().err
    assert f"error: {out / 'eval'} holds files that no run wrote ({out / 'eval' / 'notes.txt'})" in err
    assert (out / "eval" / "notes.txt").is_file() and not (out / "checkpoint_last.pth").exists()


def test_overwrite_lists_what_it_deletes(shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_train_args(shapes, out)) == 0
    evaluation = RunFolder(out).epoch_evaluation(1)
    evaluation.path.mkdir(parents=True)
    evaluation.run_record.write_text("{}")
    capsys.readouterr()
    assert main(_train_args(shapes, out, "--overwrite")) == 0
    err = capsys.readouterr().err
    assert (f"overwrite: {out}: deleting the earlier run's checkpoint_last.pth, checkpoint_final.pth, train.json, "
            "metrics.jsonl") in err
    assert "eval/ (1 files)" in err and not (out / "eval").exists()


# --------------------------------------------------------------------------------------------------
# Signals


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pointrend_core", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for(condition, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"never reached: {process.communicate()[1]}")
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_the_process_group_stops_training_with_one_line(shapes: Path, tmp_path: Path, signum) -> None:
    out = tmp_path / "run"
    args = _train_args(shapes, out)
    args[args.index("--max-iters") + 1] = "40"
    args[args.index("--workers") + 1] = "2"  # loader workers get the signal too, as from a terminal
    args += ["--checkpoint-every", "1", "--log-every", "1"]
    process = _start(args, tmp_path)
    _wait_for(lambda: RunFolder(out).last_checkpoint.is_file(), process)
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and "exited unexpectedly" not in err
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGHUP"
    [line] = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert line.startswith(f"stopped: {name}: stopped at iteration ") and str(out / "checkpoint_last.pth") in line
    assert line.endswith(f"--out {out} " + " ".join(args[args.index("--crop"):]) + " --resume")
    stopped_at = torch.load(out / "checkpoint_last.pth", weights_only=True)["iteration"]
    assert 1 <= stopped_at < 40
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()


@pytest.mark.slow
def test_ctrl_c_during_evaluate_says_nothing_was_recorded(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(_train_args(shapes, out)) == 0
    # Many images and a big test size make the evaluation long enough to be interrupted in the middle.
    big = write_folder_tree(tmp_path / "big", num_images=40, size=(64, 80), splits={"val": range(40)})
    process = _start(["evaluate", "--config", "demo", "--dataset", "folder", "--data-root", str(big),
                      "--checkpoint", str(out / "checkpoint_final.pth"), "--out", str(tmp_path / "eval"),
                      "--device", "cpu"], tmp_path)
    _wait_for(lambda: (tmp_path / "eval" / ".lock").exists(), process)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "stopped: Ctrl-C (SIGINT) during evaluation; nothing was recorded" in err
    assert not (tmp_path / "eval").exists()  # the folder it made for the record, empty, is gone again


# --------------------------------------------------------------------------------------------------
# A full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not allowed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_naming_the_file(shapes: Path, small_disk: Path, capsys) -> None:
    out = small_disk / "run"
    assert main(_train_args(shapes, out)) == 1
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: no space left on the device writing {out / 'checkpoint_last.pth'}: it needs ")
    assert "Traceback" not in err and "unexpected pos" not in err and "[Errno" not in err
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------------
# Refusals: a sentence, and nothing left behind


def test_refusals_leave_no_folder_or_lock(shapes: Path, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--config", "demo", "--checkpoint", str(tmp_path / "nosuchdir" / "x.pth"), "--device",
                 "cpu"]) == 1
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "nosuchdir").exists()
    out = tmp_path / "runs" / "demo"
    assert main(["train", "--config", "demo", "--data-root", str(tmp_path / "nodata"), "--out", str(out), *FAST]) == 1
    err = capsys.readouterr().err
    assert "make-demo-data" in err and not (tmp_path / "runs").exists()
    checkpoint = tmp_path / "folder.pth"
    checkpoint.mkdir()
    assert main(["evaluate", "--config", "demo", "--checkpoint", str(checkpoint), "--device", "cpu"]) == 1
    assert f"error: checkpoint {checkpoint} is a folder; expected a .pth file" in capsys.readouterr().err
    a_file = tmp_path / "outfile.txt"
    a_file.write_text("x")
    assert main(_train_args(shapes, a_file)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: run folder {a_file} is a file; expected a folder or a new path") and "Errno" not in err


def test_conflicting_options_are_refused_with_which_to_drop(shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_train_args(shapes, out)) == 0
    final = out / "checkpoint_final.pth"
    capsys.readouterr()
    assert main(_train_args(shapes, tmp_path / "b", "--checkpoint", str(final), "--init-checkpoint", str(final))) == 1
    assert "--checkpoint (every weight, strictly) and --init-checkpoint" in capsys.readouterr().err
    assert main(_train_args(shapes, tmp_path / "c", "--pretrained-backbone", str(final))) == 1
    assert "holds a whole segmentation model, not ImageNet backbone weights; pass it as --checkpoint" in (
        capsys.readouterr().err)
    assert main([*_train_args(shapes, out, "--resume"), "--max-iters", "1"]) == 1
    assert "--max-iters 1 is below the 2 iterations" in capsys.readouterr().err
    assert json.loads((out / "train.json").read_text())["iterations"] == 2


# --------------------------------------------------------------------------------------------------
# check-data


def test_check_data_refuses_all_void_splits_and_one_class(tmp_path: Path) -> None:
    root = write_folder_tree(tmp_path / "void", num_images=2, size=(16, 16), splits={"train": [0], "val": [1]})
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(root / "masks" / "img_0001.png")
    report = check_dataset_report(FolderSegmentation, root)
    assert any("every mask of split 'val'" in p and "nothing to train on or to score" in p for p in report.problems)
    single = write_folder_tree(tmp_path / "one", num_images=1, size=(16, 16), classes=("background",))
    assert any("has 1 class (background); segmentation needs at least two" in p
               for p in check_dataset_report(FolderSegmentation, single).problems)


def test_check_data_warns_about_overlap_repeats_twin_files_and_dim_16_bit(tmp_path: Path, capsys) -> None:
    root = write_folder_tree(tmp_path / "f", num_images=4, size=(16, 16), splits={"train": [0, 1, 1], "val": [1, 3]})
    Image.open(root / "images" / "img_0000.png").save(root / "images" / "img_0000.jpg")
    tifffile.imwrite(root / "images" / "img_0003.tif", np.full((16, 16), 4000, np.uint16))
    (root / "images" / "img_0003.png").unlink()
    assert main(["check-data", "--dataset", "folder", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "warning: split 'train' of" in out and "lists 1 id(s) more than once (img_0001)" in out
    assert "1 id(s) are in both split 'train' and split 'val'" in out and "(img_0001)" in out
    assert "have several image files (img_0000.jpg, img_0000.png)" in out
    assert "1 16-bit image(s) use at most 12 of their 16 bits (img_0003.tif)" in out


def test_train_refuses_one_class_before_starting(tmp_path: Path, capsys) -> None:
    single = write_folder_tree(tmp_path / "one", num_images=2, size=(64, 64), classes=("background",),
                               splits={"train": [0, 1]})
    out = tmp_path / "run"
    assert main(["train", "--config", "demo", "--dataset", "folder", "--data-root", str(single), "--out", str(out),
                 *FAST]) == 1
    assert "has 1 class (background); segmentation needs at least two" in capsys.readouterr().err
    assert not out.exists()


def test_numeric_inputs_get_the_same_sentence_everywhere(tmp_path: Path) -> None:
    from pointrend_core.config import DEMO
    from pointrend_core.engine.evaluate import evaluate_run
    from pointrend_core.workbook.runner import run_rows

    with pytest.raises(ValueError, match=r"^max_images must be a positive integer or None, got -1$"):
        evaluate_run(DEMO, None, tmp_path, tmp_path / "e", max_images=-1)
    with pytest.raises(ValueError, match=r"^max_eval_images must be a positive integer or None, got -1$"):
        run_rows(["demo"], runs_dir=tmp_path / "runs", reports_dir=tmp_path / "r", extra_params={"max_eval_images": -1})
    with pytest.raises(ValueError, match=r"^max_iters must be a positive integer or None, got 0$"):
        run_rows(["demo"], runs_dir=tmp_path / "runs", reports_dir=tmp_path / "r", max_iters=0)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "e").exists()



def test_option_names_are_one_from_the_cli_down() -> None:
    from pointrend_core.__main__ import build_parser
    from pointrend_core.engine.train_options import TrainOptions

    assert TrainOptions(amp="none").amp == "fp32"  # the old spelling keeps working
    args = build_parser().parse_args(["train", "--config", "demo", "--amp", "none", "--checkpoint", "a.pth",
                                      "--init-checkpoint", "b.pth"])
    assert (args.amp, str(args.checkpoint), str(args.init_checkpoint)) == ("fp32", "a.pth", "b.pth")
    assert {"checkpoint", "init_checkpoint", "amp"} <= set(TrainOptions.__dataclass_fields__)


def test_resume_falls_back_to_the_previous_checkpoint_when_the_last_is_damaged(shapes: Path, tmp_path: Path,
                                                                            capsys) -> None:
    out = tmp_path / "run"
    args = _train_args(shapes, out, "--checkpoint-every", "1")
    assert main(args) == 0
    folder = RunFolder(out)
    assert not folder.previous_checkpoint.exists()  # a finished run keeps no fallback
    # An unfinished run as a kill leaves it: the checkpoint before the last kept, the last one damaged.
    shutil.copy(folder.last_checkpoint, folder.previous_checkpoint)
    data = folder.last_checkpoint.read_bytes()
    folder.last_checkpoint.write_bytes(data[: len(data) // 2])
    for path in (folder.final_checkpoint, folder.train_record):
        path.unlink()
    capsys.readouterr()
    assert main([*args, "--max-iters", "3", "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"resume: checkpoint_last.pth: {folder.last_checkpoint} is not a readable PyTorch checkpoint" in err
    assert f"continuing from {folder.previous_checkpoint} (iteration 2)" in err
    assert json.loads(folder.train_record.read_text())["iterations"] == 3
    # Nothing left to fall back to: refused with what to do.
    folder.last_checkpoint.write_bytes(b"PK\x03\x04 damaged")
    assert main([*args, "--max-iters", "4", "--resume"]) == 1
    assert f"error: no checkpoint of {out} can be resumed from (checkpoint_last.pth: " in capsys.readouterr().err
