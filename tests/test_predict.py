"""`predict` and `Predictor`: evaluate's pipeline on new images, palette PNGs, skipped files, run folders."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pointrend_core.__main__ import main
from pointrend_core.checkpoints import save_checkpoint
from pointrend_core.config import ROWS, on_dataset
from pointrend_core.data.datasets import DEMO_PALETTE, DemoShapes
from pointrend_core.data.demo import make_demo_dataset
from pointrend_core.deploy import Predictor, palette_for, row_from_config
from pointrend_core.deploy.images import list_inputs
from pointrend_core.engine.evaluate import evaluate_run
from pointrend_core.engine.metrics import ConfusionMatrix
from pointrend_core.engine.records import TrainRecord, config_json
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.model import build_model

FINAL_CHECKPOINT = RunFolder.FINAL_CHECKPOINT

# The demo row at a 64-pixel test size: the same pipeline, 16x fewer pixels than its 256 x 256.
ROW = replace(ROWS["demo"], data=replace(ROWS["demo"].data, base_size=(64, 64)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(demo dataset root with 2 val images of 64 x 64, a random-weight checkpoint of ROW)."""
    folder = tmp_path_factory.mktemp("predict")
    root = make_demo_dataset(folder / "data", num_images=10, size=64)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / "weights.pth", model=build_model(ROW))
    return root, checkpoint


def _val_list(root: Path, folder: Path) -> Path:
    ids = DemoShapes(root, "val").ids
    listing = folder / "val.txt"
    listing.write_text("".join(f"{root}/JPEGImages/{i}.jpg\n" for i in ids))
    return listing


def _write_run(folder: Path, row, checkpoint: Path) -> Path:
    folder.mkdir()
    (folder / FINAL_CHECKPOINT).write_bytes(checkpoint.read_bytes())
    TrainRecord(row=row.name, config=config_json(row)).write(folder / "train.json")
    return folder


def test_predicting_the_validation_split_scores_evaluates_miou(demo, tmp_path: Path) -> None:
    root, checkpoint = demo
    record = evaluate_run(ROW, checkpoint, root, tmp_path / "eval", progress=False)
    run = _write_run(tmp_path / "run", ROW, checkpoint)
    out = tmp_path / "masks"
    assert main(["predict", "--run", str(run), "--input", str(_val_list(root, tmp_path)), "--out", str(out),
                 "--no-progress"]) == 0
    dataset = DemoShapes(root, "val")
    predictor = Predictor.from_run(run)
    refined, coarse = ConfusionMatrix(ROW.model.num_classes), ConfusionMatrix(ROW.model.num_classes)
    for i, stem in enumerate(dataset.ids):
        png = Image.open(out / f"{stem}.png")
        assert png.mode == "P" and png.size == (64, 64)
        assert np.array_equal(np.array(png.getpalette()[:18]).reshape(6, 3), DEMO_PALETTE)
        label = dataset.load_mask(i).as_subclass(torch.Tensor).long()
        refined.update(torch.from_numpy(np.array(png)).long(), label)
        coarse.update(torch.from_numpy(predictor.predict(dataset.image_path(i), coarse=True)).long(), label)
    assert 100 * refined.compute().mIoU == pytest.approx(record.metrics.refined.mIoU, abs=1e-9)
    assert 100 * coarse.compute().mIoU == pytest.approx(record.metrics.coarse.mIoU, abs=1e-9)
    assert record.metrics.refined.mIoU != record.metrics.coarse.mIoU  # the two outputs are told apart


def test_api_and_cli_give_the_same_masks(demo, tmp_path: Path) -> None:
    root, checkpoint = demo
    images = sorted((root / "JPEGImages").glob("*.jpg"))[:3]
    predictor = Predictor(ROW, checkpoint)
    from_array = predictor.predict(np.array(Image.open(images[0]).convert("RGB")))
    from_pil = predictor.predict(Image.open(images[0]))
    assert from_array.shape == (64, 64) and from_array.dtype == np.uint8
    assert np.array_equal(from_array, from_pil)
    listing = tmp_path / "some.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    out = tmp_path / "out"
    run = _write_run(tmp_path / "run", ROW, checkpoint)
    assert main(["predict", "--run", str(run), "--input", str(listing), "--out", str(out), "--no-progress",
                 "--overlay", "--batch-size", "2"]) == 0
    for path in images:
        # Batches of 2 may round convolutions differently from one image: equal up to float near-ties.
        cli = np.array(Image.open(out / f"{path.stem}.png"))
        assert (cli != predictor.predict(path)).mean() < 1e-3
        overlay = Image.open(out / f"{path.stem}_overlay.jpg")
        assert overlay.size == (64, 64) and overlay.mode == "RGB"
    assert main(["predict", "--run", str(run), "--input", str(images[0]), "--out", str(tmp_path / "one"),
                 "--no-progress"]) == 0
    assert np.array_equal(np.array(Image.open(tmp_path / "one" / f"{images[0].stem}.png")), from_array)


def test_a_corrupt_file_is_skipped_and_reported(demo, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, checkpoint = demo
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for path in sorted((root / "JPEGImages").glob("*.jpg"))[:2]:
        (images / "sub" / path.name).write_bytes(path.read_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = tmp_path / "out"
    run = _write_run(tmp_path / "run", ROW, checkpoint)
    argv = ["predict", "--run", str(run), "--input", str(images), "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"skipped {images / 'broken.jpg'}" in captured.err
    assert "predicted 2 image(s), 1 skipped" in captured.out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        f"sub/{p.stem}.png" for p in sorted((images / "sub").glob("*.jpg"))]
    # Existing outputs are refused up front, naming how many; --overwrite replaces them.
    assert main(argv) == 1
    assert "2 of the 3 output file(s) already exist" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 1
    assert not list(out.rglob("*.tmp"))


def test_a_folder_run_rebuilds_its_classes_and_palette(tmp_path: Path) -> None:
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "classes.txt").write_text("ground\nleaf\nsky\n")
    row = on_dataset(ROWS["demo"], "folder", data)
    rebuilt = row_from_config(json.loads(json.dumps(config_json(row))))
    assert rebuilt == row
    (data / "classes.txt").unlink()  # the run needs only its record, not the data
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "w.pth", model=build_model(row))
    predictor = Predictor.from_run(_write_run(tmp_path / "run", row, checkpoint))
    assert predictor.num_classes == 3 and predictor.row.name == row.name
    assert palette_for(predictor.row).tolist() == [[128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette_for(ROWS["pointrend_r50_voc"])[:2].tolist() == [[0, 0, 0], [128, 0, 0]]
    mask = predictor.predict(np.zeros((33, 47, 3), dtype=np.uint8))
    assert mask.shape == (33, 47) and mask.max() < 3


def test_bad_sources_and_inputs_name_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", "--run", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "no image to predict in folder" in capsys.readouterr().err
    (tmp_path / "a.jpg").write_bytes(b"")
    assert main(["predict", "--run", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert f"{tmp_path / FINAL_CHECKPOINT} does not exist" in capsys.readouterr().err
    assert main(["predict", "--config", "demo", "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "--config and --checkpoint go together" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a.png").write_bytes(b"")
    (tmp_path / "list.txt").write_text("a.jpg\n# a comment\nb/a.png\n")
    with pytest.raises(ValueError, match="would both write a.png"):
        list_inputs(tmp_path / "list.txt")
    with pytest.raises(ValueError, match="expected a uint8 numpy image"):
        Predictor(ROW).predict(np.zeros((8, 8, 3), dtype=np.float32))
