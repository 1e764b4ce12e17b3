"""Bad inputs: each raises a clear error when loading, and `check_dataset` lists them all at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointrend_core.data.datasets import (
    ADE20kSegmentation,
    CityscapesSegmentation,
    FolderSegmentation,
    VOCSegmentation,
)
from synthetic_trees import (
    write_ade20k_tree,
    write_cityscapes_tree,
    write_folder_tree,
    write_voc_tree,
)
from pointrend_core.data.validate import check_dataset

SIZE = (48, 64)


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return write_voc_tree(tmp_path / "VOC2012", num_images=3, size=SIZE, splits=("train", "val"))


def _mask_file(root: Path, image_id: str) -> Path:
    return root / "SegmentationClass" / f"{image_id}.png"


def test_clean_trees_have_no_problems(tmp_path: Path, voc: Path) -> None:
    assert check_dataset(VOCSegmentation, voc) == []
    assert check_dataset(VOCSegmentation, voc, "val") == []
    assert check_dataset(ADE20kSegmentation, write_ade20k_tree(tmp_path / "a", 2, SIZE)) == []
    assert check_dataset(CityscapesSegmentation, write_cityscapes_tree(tmp_path / "c", 2, SIZE), workers=2) == []
    assert check_dataset(FolderSegmentation, write_folder_tree(tmp_path / "f", 2, SIZE)) == []


def test_wrong_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    expected = r"VOCSegmentation root .*nope is not a directory; expected a VOC2012"
    with pytest.raises(FileNotFoundError, match=expected):
        VOCSegmentation(missing, "train")
    [message] = check_dataset(VOCSegmentation, missing)
    assert str(missing) in message and "is not a directory" in message and "JPEGImages/<id>.jpg" in message
    # A root that exists but holds another layout: no split is found.
    [message] = check_dataset(VOCSegmentation, write_folder_tree(tmp_path / "f", 1, SIZE))
    assert message.startswith(f"no split found under {tmp_path / 'f'}; expected a VOC2012 folder")


def test_missing_split_file(voc: Path) -> None:
    expected = (
        r"split file .*ImageSets/Segmentation/trainaug.txt or .*train_aug.txt does not exist; "
        r"expected one image id per line \(splits found: train, val"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        VOCSegmentation(voc, "trainaug")
    [message] = check_dataset(VOCSegmentation, voc, "trainaug")
    assert "trainaug.txt" in message and "does not exist" in message


def test_empty_split(voc: Path) -> None:
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n\n")
    expected = r"split 'val' of VOCSegmentation at .* is empty \(.*val.txt\); expected at least one image id"
    with pytest.raises(ValueError, match=expected):
        VOCSegmentation(voc, "val")
    problems = check_dataset(VOCSegmentation, voc)
    assert len(problems) == 1 and "split 'val'" in problems[0] and "is empty" in problems[0]


def test_split_id_without_files(voc: Path) -> None:
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000000\nghost_42\n")
    ds = VOCSegmentation(voc, "train")
    with pytest.raises(FileNotFoundError) as info:
        ds[1]
    assert f"image file {voc / 'JPEGImages' / 'ghost_42.jpg'} for id 'ghost_42'" in str(info.value)
    assert "train.txt" in str(info.value) and "does not exist" in str(info.value)
    problems = check_dataset(VOCSegmentation, voc, "train")
    assert len(problems) == 2
    assert "image file" in problems[0] and "ghost_42.jpg" in problems[0]
    assert "mask file" in problems[1] and f"{_mask_file(voc, 'ghost_42')}" in problems[1]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(voc: Path, damage: str) -> None:
    path = voc / "JPEGImages" / "2007_000001.jpg"
    data = path.read_bytes()
    path.write_bytes(b"this is not a jpeg" if damage == "garbage" else data[: len(data) // 2])
    ds = VOCSegmentation(voc, "train")
    with pytest.raises(ValueError, match=rf"cannot decode image {path} .*expected a complete JPEG or PNG file"):
        ds[1]
    ds[0]  # the others still load
    [message] = check_dataset(VOCSegmentation, voc)
    assert message.startswith(f"cannot decode image {path}")


def test_corrupt_mask(voc: Path) -> None:
    path = _mask_file(voc, "2007_000002")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"cannot decode mask {path} .*expected a complete 8-bit PNG file"):
        VOCSegmentation(voc, "train")[2]


def test_mask_of_wrong_size(voc: Path) -> None:
    path = _mask_file(voc, "2007_000000")
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(path)
    with pytest.raises(ValueError) as info:
        VOCSegmentation(voc, "train")[0]
    expected = f"mask {path} is 50x30 (WxH) but image {voc / 'JPEGImages' / '2007_000000.jpg'} is 64x48"
    assert str(info.value).startswith(expected) and "expected a mask of the same size" in str(info.value)
    assert check_dataset(VOCSegmentation, voc)[0].startswith(expected)


def test_label_values_out_of_range(voc: Path) -> None:
    path = _mask_file(voc, "2007_010001")
    mask = np.zeros(SIZE, np.uint8)
    mask[:2, :3] = 42
    mask[10, 10] = 21
    Image.fromarray(mask).save(path)
    with pytest.raises(ValueError) as info:
        VOCSegmentation(voc, "val")[1]
    assert str(info.value) == (
        f"mask {path} contains label values 21 (1 px), 42 (6 px) that are neither a class index 0..20 nor the "
        "void value 255"
    )
    assert check_dataset(VOCSegmentation, voc) == [str(info.value)]


def test_rgb_mask_is_rejected(voc: Path) -> None:
    path = _mask_file(voc, "2007_000000")
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(path)
    expected = r"has PIL mode 'RGB'; expected a single-channel 8-bit PNG \(mode 'L'\) or a palette PNG"
    with pytest.raises(ValueError, match=expected):
        VOCSegmentation(voc, "train")[0]


def test_every_problem_listed_at_once(voc: Path) -> None:
    (voc / "JPEGImages" / "2007_000000.jpg").write_bytes(b"\xff\xd8\xff broken")
    Image.fromarray(np.full(SIZE, 99, np.uint8)).save(_mask_file(voc, "2007_000000"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(_mask_file(voc, "2007_010000"))
    (voc / "JPEGImages" / "2007_010002.jpg").unlink()
    problems = check_dataset(VOCSegmentation, voc)
    assert len(problems) == 4, problems
    assert "cannot decode image" in problems[0] and "2007_000000.jpg" in problems[0]
    assert "label values 99 (3072 px)" in problems[1]
    assert "is 8x8 (WxH) but image" in problems[2]
    assert "image file" in problems[3] and "2007_010002.jpg" in problems[3]


def test_other_layouts_report_bad_labels(tmp_path: Path) -> None:
    ade = write_ade20k_tree(tmp_path / "ade", num_images=1, size=SIZE)
    ade_mask = ade / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000001.png"
    Image.fromarray(np.full(SIZE, 200, np.uint8)).save(ade_mask)
    [message] = check_dataset(ADE20kSegmentation, ade)
    assert message == (
        f"mask {ade_mask} contains label values 200 (3072 px) that are neither a class value 1..150 nor the void "
        "value 0 (raw ADE20k annotations, before reduce-zero-label)"
    )
    cs = write_cityscapes_tree(tmp_path / "cs", num_images=1, size=SIZE, splits=("val",))
    cs_mask = cs / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.full(SIZE, 40, np.uint8)).save(cs_mask)
    [message] = check_dataset(CityscapesSegmentation, cs, "val")
    assert message == (
        f"mask {cs_mask} contains label values 40 (3072 px) that are not Cityscapes labelIds (0..33, or 255 for -1)"
    )
    folder = write_folder_tree(tmp_path / "f", num_images=1, size=SIZE, classes=("bg", "fg"))
    Image.fromarray(np.full(SIZE, 2, np.uint8)).save(folder / "masks" / "img_0000.png")
    [message] = check_dataset(FolderSegmentation, folder)
    assert "values 2 (3072 px) that are neither a class index 0..1 (classes.txt) nor the void value 255" in message
    missing_city = tmp_path / "empty_cs"
    (missing_city / "leftImg8bit").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"Cityscapes split folder .*leftImg8bit/train does not exist"):
        CityscapesSegmentation(missing_city, "train")
