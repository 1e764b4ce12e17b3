"""Datasets on generated trees in the official layouts: ids, paths, label remapping, classes, palettes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from pointrend_core.config import IGNORE_INDEX
from pointrend_core.data.datasets import (
    ADE20K_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN,
    ADE20kSegmentation,
    CityscapesSegmentation,
    FolderSegmentation,
    VOCSegmentation,
    bitwise_palette,
)
from synthetic_trees import (
    write_ade20k_tree,
    write_cityscapes_tree,
    write_folder_tree,
    write_voc_tree,
)

SIZE = (60, 80)


def raw_png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_voc_tree(tmp_path_factory.mktemp("voc") / "VOC2012", num_images=3, size=SIZE,
                          splits=("train", "val", "trainaug"), aug=True)  # fmt: skip


def test_voc_item_types_shapes_and_values(voc_root: Path) -> None:
    ds = VOCSegmentation(voc_root, "train")
    assert len(ds) == 3 and ds.ids == ["2007_000000", "2007_000001", "2007_000002"]
    image, mask = ds[1]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, *SIZE)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.uint8 and mask.shape == SIZE
    raw = raw_png(ds.mask_path(1))  # palette PNG: PIL gives the indices
    assert Image.open(ds.mask_path(1)).mode == "P"
    assert np.array_equal(mask.numpy(), raw)
    values = set(np.unique(raw).tolist())
    assert IGNORE_INDEX in values and 0 in values and values <= set(range(21)) | {255}
    assert ds.image_path(1) == voc_root / "JPEGImages" / "2007_000001.jpg"


def test_voc_classes_and_palette(voc_root: Path) -> None:
    ds = VOCSegmentation(voc_root, "val")
    assert ds.num_classes == 21 and ds.classes[0] == "__background__" and ds.classes[-1] == "tvmonitor"
    assert ds.palette.shape == (21, 3) and ds.palette.dtype == np.uint8
    assert ds.palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert bitwise_palette(256)[255].tolist() == [224, 224, 192]


def test_voc_palette_and_grey_masks_read_the_same(tmp_path: Path) -> None:
    a = write_voc_tree(tmp_path / "p", num_images=2, size=SIZE, palette_masks=True, seed=3)
    b = write_voc_tree(tmp_path / "l", num_images=2, size=SIZE, palette_masks=False, seed=3)
    da, db = VOCSegmentation(a, "train"), VOCSegmentation(b, "train")
    assert Image.open(da.mask_path(0)).mode == "P" and Image.open(db.mask_path(0)).mode == "L"
    for i in range(2):
        assert torch.equal(da[i][1], db[i][1])


def test_voc_trainaug_prefers_aug_folder(voc_root: Path) -> None:
    aug = VOCSegmentation(voc_root, "trainaug")
    plain = VOCSegmentation(voc_root, "val")
    assert aug.mask_path(0).parent.name == "SegmentationClassAug"
    assert plain.mask_path(0).parent.name == "SegmentationClass"
    # The fixture writes Aug labels with every object as class 1: proves which file was read.
    assert set(aug[0][1].unique().tolist()) <= {0, 1, 255}
    assert VOCSegmentation.splits_on_disk(voc_root) == ["train", "trainaug", "val"]


def test_voc_train_aug_alias(tmp_path: Path) -> None:
    root = write_voc_tree(tmp_path / "VOC2012", num_images=2, size=SIZE, splits=("train_aug",))
    assert len(VOCSegmentation(root, "trainaug")) == 2


def test_voc_transforms_are_applied(voc_root: Path) -> None:
    ds = VOCSegmentation(voc_root, "train", transforms=lambda image, mask: (image.shape, mask.sum()))
    shape, total = ds[0]
    assert shape == (3, *SIZE) and total == VOCSegmentation(voc_root, "train")[0][1].sum()


def test_ade20k_reduce_zero_label_and_derived_splits(tmp_path: Path) -> None:
    root = write_ade20k_tree(tmp_path / "ADE20k", num_images=2, size=SIZE)
    ds = ADE20kSegmentation(root, "val")
    assert ds.ids == ["ADE_val_00000001", "ADE_val_00000002"]
    assert ds.image_path(0) == root / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000001.jpg"
    for i in range(2):
        raw = raw_png(ds.mask_path(i)).astype(np.int64)
        expected = np.where(raw == 0, IGNORE_INDEX, raw - 1)
        assert np.array_equal(ds[i][1].numpy(), expected)
    assert ds.num_classes == 150 == len(ADE20K_CLASSES) and ds.classes[0] == "wall" and ds.classes[149] == "flag"
    assert ds.palette.shape == (150, 3)
    # Root may also be ADEChallengeData2016 itself.
    assert ADE20kSegmentation(root / "ADEChallengeData2016", "train").ids[0] == "ADE_train_00000001"


def test_ade20k_split_lists_used_when_present(tmp_path: Path) -> None:
    root = write_ade20k_tree(tmp_path / "ADE20k", num_images=3, size=SIZE, split_lists=True)
    (root / "ADEChallengeData2016" / "train.txt").write_text("ADE_train_00000002\n\n")
    assert ADE20kSegmentation(root, "train").ids == ["ADE_train_00000002"]
    with pytest.raises(ValueError, match=r"unknown ADE20k split 'test'; expected one of: train, val"):
        ADE20kSegmentation(root, "test")


def test_cityscapes_label_ids_mapped_to_train_ids(tmp_path: Path) -> None:
    root = write_cityscapes_tree(tmp_path / "Cityscapes", num_images=2, size=SIZE)
    ds = CityscapesSegmentation(root, "train")
    assert ds.ids == ["aachen/aachen_000000_000019_leftImg8bit", "bochum/bochum_000001_000020_leftImg8bit"]
    assert ds.mask_path(0) == root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    lut = np.full(256, IGNORE_INDEX)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    for i in range(2):
        raw = raw_png(ds.mask_path(i))
        assert {0, 7, 255} & set(np.unique(raw).tolist())  # void ids present in the fixture
        assert np.array_equal(ds[i][1].numpy(), lut[raw])
    assert ds.num_classes == 19 and ds.classes[6] == "traffic_light" and ds.palette[0].tolist() == [128, 64, 128]
    assert CityscapesSegmentation.splits_on_disk(root) == ["train", "val"]


def test_cityscapes_train_ids_used_directly_and_split_list(tmp_path: Path) -> None:
    root = write_cityscapes_tree(tmp_path / "cs", num_images=2, size=SIZE, train_ids=True, split_lists=True)
    (root / "val.txt").write_text("lindau/lindau_000001_000020_leftImg8bit\n")
    ds = CityscapesSegmentation(root, "val")
    assert ds.ids == ["lindau/lindau_000001_000020_leftImg8bit"]
    assert ds.mask_path(0).name == "lindau_000001_000020_gtFine_labelTrainIds.png"
    assert np.array_equal(ds[0][1].numpy(), raw_png(ds.mask_path(0)))
    (root / "val.txt").write_text("lindau/lindau_000001_000020\n")
    expected = r"val.txt has ids not ending in '_leftImg8bit', e.g. 'lindau/lindau_000001_000020'"
    with pytest.raises(ValueError, match=expected):
        CityscapesSegmentation(root, "val")


def test_folder_dataset(tmp_path: Path) -> None:
    root = write_folder_tree(tmp_path / "f", num_images=4, size=SIZE, classes=("bg", "a", "b"),
                             splits={"train": [0, 2], "val": [3]}, image_format="jpg")  # fmt: skip
    ds = FolderSegmentation(root, "train")
    assert ds.classes == ("bg", "a", "b") and ds.num_classes == 3 and ds.palette.shape == (3, 3)
    assert ds.ids == ["img_0000", "img_0002"] and ds.image_path(1) == root / "images" / "img_0002.jpg"
    image, mask = ds[1]
    assert image.shape == (3, *SIZE) and np.array_equal(mask.numpy(), raw_png(ds.mask_path(1)))
    assert len(FolderSegmentation(root, "all")) == 4
    assert FolderSegmentation.splits_on_disk(root) == ["train", "val", "all"]
    expected = r"splits/test.txt does not exist; expected one image stem per line"
    with pytest.raises(FileNotFoundError, match=expected):
        FolderSegmentation(root, "test")
    (root / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"class list .*classes.txt does not exist"):
        FolderSegmentation(root, "all")


def test_fixed_class_datasets_have_the_published_class_lists() -> None:
    # Independent of the rows (whose own check runs at import): the benchmark's class counts and ends.
    assert len(VOCSegmentation.CLASSES) == 21 and VOCSegmentation.CLASSES[-1] == "tvmonitor"
    assert len(ADE20kSegmentation.CLASSES) == 150 and ADE20kSegmentation.CLASSES[:2] == ("wall", "building")
    assert len(CityscapesSegmentation.CLASSES) == 19 and CityscapesSegmentation.CLASSES[-1] == "bicycle"
    assert sorted(CITYSCAPES_LABEL_TO_TRAIN.values()) == list(range(19))  # every trainId from exactly one labelId
