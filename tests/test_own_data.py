"""A user's own data end to end from the CLI: a folder dataset under a row's recipe (heads sized to its
classes.txt, images in every supported format), fine-tuning from a checkpoint of other classes, one run per
folder, and evaluation records that never replace each other."""

from __future__ import annotations

import json
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
from pointrend_core.config import DEMO, on_dataset
from pointrend_core.data.datasets import FolderSegmentation
from synthetic_trees import write_folder_tree

CLASSES = ("background", "cat", "dog")
FAST = ["--crop", "64", "64", "--batch-size", "2", "--max-iters", "2", "--device", "cpu", "--workers", "0",
        "--no-progress"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A folder dataset whose images come in every format the layout accepts: JPEG, 8-bit RGB PNG, 16-bit grey
    PNG, 16-bit RGB TIFF and 8-bit grey TIFF."""
    root = write_folder_tree(tmp_path_factory.mktemp("data") / "my_shapes", num_images=6, size=(72, 96),
                             classes=CLASSES, splits={"train": [0, 1, 2, 3], "val": [4, 5]}, image_format="jpg")
    images = root / "images"
    rgb = [np.array(Image.open(images / f"img_{n:04d}.jpg").convert("RGB")) for n in range(6)]
    Image.fromarray(rgb[1]).save(images / "img_0001.png")
    Image.fromarray(rgb[2].mean(-1).astype(np.uint16) * 257).save(images / "img_0002.png")  # mode I;16
    tifffile.imwrite(images / "img_0003.tif", rgb[3].astype(np.uint16) * 257)
    tifffile.imwrite(images / "img_0004.tiff", rgb[4][..., 0])
    for n in (1, 2, 3, 4):
        (images / f"img_{n:04d}.jpg").unlink()
    return root


def test_every_image_format_reads_as_uint8_rgb(shapes: Path) -> None:
    dataset = FolderSegmentation(shapes, "train")
    for i in range(len(dataset)):
        image, mask = dataset[i]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 72, 96) and tuple(mask.shape) == (72, 96)
    exact = np.array(Image.open(shapes / "images" / "img_0001.png"))
    assert torch.equal(dataset[1][0], torch.from_numpy(exact).permute(2, 0, 1))  # 8-bit: unchanged
    grey = FolderSegmentation(shapes, "val")[0][0]  # img_0004.tiff, 8-bit grey: the same value in R, G, B
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    wide = tifffile.imread(shapes / "images" / "img_0003.tif")  # 16-bit: full-range scaling back to 8 bits
    assert torch.equal(dataset[3][0], torch.from_numpy(np.round(wide / 257.0).astype(np.uint8)).permute(2, 0, 1))


def test_the_recipe_on_a_folder_takes_its_classes_and_its_name(shapes: Path) -> None:
    row = on_dataset(DEMO, "folder", shapes)
    assert row.name == "demo_my_shapes" and row.recipe == "demo" and row.model.num_classes == 3
    assert row.data.dataset is FolderSegmentation and (row.data.train_split, row.data.val_split) == ("train", "val")
    assert row.schedule == DEMO.schedule and row.data.crop_size == DEMO.data.crop_size and row.published_miou is None
    with pytest.raises(ValueError, match="dataset 'folder' needs a data root"):
        on_dataset(DEMO, "folder")
    voc = on_dataset(DEMO, "voc")
    assert voc.name == "demo_voc" and voc.model.num_classes == 21 and voc.data.train_split == "trainaug"


def test_train_evaluate_and_fine_tune_on_a_folder_from_the_cli(shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs" / "demo_my_shapes"
    args = ["--config", "demo", "--dataset", "folder", "--data-root", str(shapes)]
    assert main(["train", *args, "--out", str(out), *FAST]) == 0
    assert capsys.readouterr().out == f"final checkpoint: {out / 'checkpoint_final.pth'}\n"
    state = torch.load(out / "checkpoint_final.pth", weights_only=True)
    assert state["row"] == "demo_my_shapes" and state["model"]["decoder.1.weight"].shape[0] == 3
    assert main(["evaluate", *args, "--checkpoint", str(out / "checkpoint_final.pth"), "--device", "cpu",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("demo_my_shapes: mIoU ") and "boundary mIoU" in printed and "on 2 images" in printed
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["classes"] == list(CLASSES) and run["data"]["dataset"] == "FolderSegmentation"
    assert run["training"]["iterations"] == 2 and run["published_mIoU"] is None

    # Fine-tuning the 6-class demo network on the 3-class folder: class-dependent layers start afresh.
    demo = tmp_path / "demo.pth"
    torch.save({"model": __import__("pointrend_core").build_model(DEMO).state_dict()}, demo)
    tuned = tmp_path / "tuned"
    assert main(["train", *args, "--out", str(tuned), "--init-checkpoint", str(demo), *FAST]) == 0
    err = capsys.readouterr().err
    assert f"init: {demo}: every entry loaded except 22 re-initialised" in err
    assert "decoder.1.weight: one entry per class: shape (6, 134, 1) in the file, (3, 131, 1) for 3 classes here" in err
    assert "fcs.0.1.running_mean: BatchNorm after the re-initialised fcs.0.0.weight" in err
    # A strict --checkpoint of another class count keeps its refusal.
    assert main(["train", *args, "--out", str(tmp_path / "strict"), "--checkpoint", str(demo), *FAST]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {demo} does not fit the model:") and "mis-shaped" in err and "Traceback" not in err


def test_one_run_per_folder(shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "--config", "demo", "--dataset", "folder", "--data-root", str(shapes), "--out", str(out), *FAST]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pointrend_core.engine.run_folder import RunFolder\n"
         f"with RunFolder({str(out)!r}).hold():\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        assert main(args) == 1
        err = capsys.readouterr().err
        assert time.monotonic() - started < 10  # refused at once, not after loading anything
        assert f"error: run folder {out} is in use by process {holder.pid}" in err and "Traceback" not in err
    finally:
        holder.kill()  # a killed holder leaves its lock file behind, but no lock
        holder.wait()
    assert main(args) == 0
    capsys.readouterr()
    # A fresh run into a folder holding an earlier one is refused; --resume continues it, --overwrite replaces it.
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"error: {out} holds an earlier run (checkpoint_last.pth, checkpoint_final.pth, train.json, " in err
    assert "pass --resume to continue it, --overwrite to replace it" in err
    assert main([*args, "--max-iters", "3", "--resume"]) == 0  # the later --max-iters wins
    assert json.loads((out / "train.json").read_text())["iterations"] == 3
    assert main([*args, "--overwrite"]) == 0
    assert "overwrite: " in capsys.readouterr().err
    assert json.loads((out / "train.json").read_text())["iterations"] == 2
    # --resume with no checkpoint_last.pth to resume from never deletes a finished run.
    (out / "checkpoint_last.pth").unlink()
    assert main([*args, "--resume"]) == 1
    assert f"error: {out} holds an earlier run (checkpoint_final.pth, train.json" in capsys.readouterr().err
    assert (out / "checkpoint_final.pth").is_file()


def test_evaluating_another_checkpoint_keeps_the_runs_own_record(shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["--config", "demo", "--dataset", "folder", "--data-root", str(shapes)]
    assert main(["train", *args, "--out", str(out), *FAST, "--evaluate", "--eval-max-images", "1"]) == 0
    own = (out / "run.json").read_text()
    other = tmp_path / "other.pth"
    torch.save({"model": torch.load(out / "checkpoint_final.pth", weights_only=True)["model"]}, other)
    (out / "other.pth").write_bytes(other.read_bytes())
    capsys.readouterr()
    assert main(["evaluate", *args, "--checkpoint", str(out / "other.pth"), "--device", "cpu", "--no-progress"]) == 0
    written = out / "evaluations" / "other_demo_my_shapes_val" / "run.json"
    assert capsys.readouterr().out.rstrip().endswith(str(written))
    assert (out / "run.json").read_text() == own  # untouched
    assert json.loads(written.read_text())["training"] is None  # another checkpoint's record claims no training
