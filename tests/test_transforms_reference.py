"""The whole test and training pipelines against the reference's sequences written out here with OpenCV and
numpy calls (its Resize, RandomCrop, RandomFlip, PhotoMetricDistortion, Normalize, ToTensor and Padding, on
the BGR arrays that `cv2.imread` gives), on photo-like JPEGs read back from disk. The reference draws from
numpy's generator; here the same draws, in the same order, come from torch's, which the package uses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pointrend_core.config import DEMO, ROWS, DataConfig
from pointrend_core.data.datasets import VOCSegmentation
from pointrend_core.data.transforms import MEAN, STD, eval_transforms, train_transforms
from pointrend_core.labels import IGNORE_INDEX
from synthetic_trees import write_voc_tree

pytestmark = pytest.mark.numerics  # OpenCV kernels on this CPU: CI runs these twice (.ci/run)

DATA = {name: ROWS[name].data for name in ("pointrend_r50_voc", "pointrend_r50_ade20k", "pointrend_r50_cityscapes")}
DATA["demo"] = DEMO.data


# --------------------------------------------------------------------------------------------------------
# The reference's steps (ignore label -100, labels float32, image BGR uint8)


def _uniform(lo: float, hi: float) -> float:
    return float(torch.rand((), dtype=torch.float64)) * (hi - lo) + lo


def _randint(lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, ()))


def ref_resize(image: np.ndarray, label: np.ndarray | None, output_size, scale_range) -> tuple:
    if scale_range is not None:
        rand_scale = _uniform(*scale_range)
        output_size = int(output_size[0] * rand_scale), int(output_size[1] * rand_scale)
    scale_factor = min(max(output_size) / max(image.shape[:2]), min(output_size) / min(image.shape[:2]))
    dsize = int(image.shape[1] * scale_factor + 0.5), int(image.shape[0] * scale_factor + 0.5)
    image = cv2.resize(image, dsize=dsize, interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, dsize=dsize, interpolation=cv2.INTER_NEAREST)
    return image, label


def ref_random_crop(image: np.ndarray, label: np.ndarray, crop_size, ratio: float) -> tuple:
    for _ in range(10):
        h_ori, w_ori = image.shape[:2]
        h_out, w_out = min(crop_size[0], h_ori), min(crop_size[1], w_ori)
        top, left = _randint(0, h_ori - h_out + 1), _randint(0, w_ori - w_out + 1)
        image_crop = image[top : top + h_out, left : left + w_out]
        label_crop = label[top : top + h_out, left : left + w_out]
        labels, counts = np.unique(label_crop, return_counts=True)
        counts = counts[labels != -100]
        if len(counts) > 1 and np.max(counts) / np.sum(counts) < ratio:
            break
    if len(counts) == 0:
        return image, label  # uncropped
    return image_crop, label_crop


def ref_flip(image: np.ndarray, label: np.ndarray) -> tuple:
    if float(torch.rand(1)) >= 0.5:
        return image, label
    return np.flip(image, axis=1).copy(), np.flip(label, axis=1).copy()


def ref_convert(image: np.ndarray, alpha: float = 1, beta: float = 0) -> np.ndarray:
    image = image.astype(np.float32) * alpha + beta
    return np.clip(image, 0, 255).astype(np.uint8)


def ref_photometric(image: np.ndarray) -> np.ndarray:
    def maybe() -> bool:
        return bool(_randint(0, 2))

    def contrast(image: np.ndarray) -> np.ndarray:
        return ref_convert(image, alpha=_uniform(0.5, 1.5)) if maybe() else image

    if maybe():
        image = ref_convert(image, beta=_uniform(-32, 32))
    mode = _randint(0, 2)
    if mode == 1:
        image = contrast(image)
    if maybe():
        image = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        image[..., 1] = ref_convert(image[..., 1], alpha=_uniform(0.5, 1.5))
        image = cv2.cvtColor(image, cv2.COLOR_HSV2RGB)
    if maybe():
        image = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        image[..., 0] = (image[..., 0].astype(int) + _randint(-18, 18)) % 180
        image = cv2.cvtColor(image, cv2.COLOR_HSV2RGB)
    if mode == 0:
        image = contrast(image)
    return image


def ref_normalize_to_tensor(image: np.ndarray) -> torch.Tensor:
    image = image.astype(np.float32)
    cv2.cvtColor(image, cv2.COLOR_BGR2RGB, image)
    cv2.subtract(image, np.float64(np.array(MEAN).reshape(1, -1)), image)
    cv2.multiply(image, 1 / np.float64(np.array(STD).reshape(1, -1)), image)
    return torch.from_numpy(image.transpose((2, 0, 1)).astype(np.float32))


def ref_padding(image: torch.Tensor, label: torch.Tensor, output_size) -> tuple:
    h_ori, w_ori = image.shape[1:]
    h_out, w_out = output_size
    if (h_ori > w_ori and h_out < w_out) or (h_ori < w_ori and h_out > w_out):
        output_size = (w_out, h_out)  # output_size_auto_adaptive
    top = (output_size[0] - h_ori) // 2
    left = (output_size[1] - w_ori) // 2
    pads = (left, output_size[1] - w_ori - left, top, output_size[0] - h_ori - top)
    return F.pad(image, pads, value=0.0), F.pad(label, pads, value=-100.0)


def reference_train(bgr: np.ndarray, label: np.ndarray, data: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    image, label = ref_resize(bgr, label, data.base_size, data.scale_range)
    image, label = ref_random_crop(image, label, data.crop_size, data.cat_max_ratio)
    image, label = ref_flip(image, label)
    image = ref_photometric(image)
    return ref_padding(ref_normalize_to_tensor(image), torch.from_numpy(label.astype(np.float32)), data.crop_size)


def reference_test(path: Path, data: DataConfig) -> torch.Tensor:
    image, _ = ref_resize(cv2.imread(str(path)), None, data.base_size, None)
    return ref_normalize_to_tensor(image)


# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[VOCSegmentation]:
    """Two small VOC trees of photo-like JPEGs (smooth colour fields, noise, tinted blobs), landscape and
    portrait, with their blob masks."""
    root = tmp_path_factory.mktemp("photos")
    return [
        VOCSegmentation(write_voc_tree(root / f"voc{h}x{w}", num_images=2, size=(h, w), splits=("val",)), "val")
        for h, w in ((375, 500), (333, 251))
    ]


@pytest.mark.parametrize("name", sorted(DATA))
def test_the_test_pipeline_equals_the_references(photos, name) -> None:
    transforms = eval_transforms(DATA[name])
    for dataset in photos:
        for i in range(len(dataset)):
            image, mask = transforms(*dataset.load_raw(i))
            expected = reference_test(dataset.image_path(i), DATA[name])
            assert image.shape == expected.shape and torch.equal(image, expected), (name, i)
            assert torch.equal(mask, dataset.load_mask(i).as_subclass(torch.Tensor).long())


def _reference_label(mask: torch.Tensor) -> np.ndarray:
    label = mask.as_subclass(torch.Tensor).numpy().astype(np.float32)
    label[label == IGNORE_INDEX] = -100.0
    return label


def _assert_train_equal(dataset: VOCSegmentation, data: DataConfig, seeds, mask_edit=None) -> None:
    transforms = train_transforms(data)
    for i in range(len(dataset)):
        image, mask = dataset.load_raw(i)
        if mask_edit is not None:
            mask = mask_edit(mask.clone())
        bgr = cv2.imread(str(dataset.image_path(i)))
        for seed in seeds:
            torch.manual_seed(seed)
            out_image, out_mask = transforms(image, mask)
            torch.manual_seed(seed)
            expected_image, expected_label = reference_train(bgr, _reference_label(mask), data)
            assert torch.equal(out_image, expected_image), (i, seed)
            assert torch.equal(torch.where(out_mask == IGNORE_INDEX, -100, out_mask), expected_label.long()), (i, seed)


@pytest.mark.parametrize("name", sorted(DATA))
def test_the_training_pipeline_equals_the_references(photos, name) -> None:
    data = DATA[name]
    if data.crop_size[0] != data.crop_size[1]:  # Cityscapes crops: a cheaper image of the same shape
        data = replace(data, base_size=(1024, 512), crop_size=(256, 512))
    _assert_train_equal(photos[0], data, seeds=range(6))
    _assert_train_equal(photos[1], data, seeds=range(6, 9))


def test_the_uncropped_fallback_equals_the_references(photos) -> None:
    # Only a corner of the label is valid, so the last of the 10 crops usually holds no valid pixel and the
    # reference keeps the rescaled sample whole until its padding centre-crops it (odd sizes: 375 x 500 at
    # a scale range that makes both differences odd in some draws).
    def corner_only(mask: torch.Tensor) -> torch.Tensor:
        mask[:] = IGNORE_INDEX
        mask[:3, :3] = 1
        return mask

    data = replace(DATA["pointrend_r50_voc"], base_size=(500, 375), crop_size=(200, 200))
    _assert_train_equal(photos[0], data, seeds=range(6), mask_edit=corner_only)
