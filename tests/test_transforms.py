"""The recipe's train and test pipelines: sizes, padding, crop cap, photometric ops, reproducibility.

Pixel values are checked against OpenCV and numpy themselves (see test_transforms_reference.py for the
reference's whole sequences); here each operation on its own."""

from __future__ import annotations

import pickle
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from pointrend_core.config import DEMO, IGNORE_INDEX, ROWS
from pointrend_core.data.photometric import PhotometricParams, PhotoMetricDistortion, convert_table, hue_table
from pointrend_core.data.transforms import (
    MEAN,
    STD,
    CatMaxRatioCrop,
    TrainTransforms,
    centred_span,
    crop_is_acceptable,
    denormalize,
    eval_transforms,
    image_array,
    keep_ratio_size,
    normalize,
    normalize_and_pad,
    resize_image,
    resize_mask,
    train_transforms,
)

VOC = ROWS["pointrend_r50_voc"].data
CITYSCAPES = ROWS["pointrend_r50_cityscapes"].data
pytestmark = pytest.mark.numerics  # OpenCV kernels on this CPU: CI runs these twice (.ci/run)

TABLE_ROWS = [row for name, row in ROWS.items() if name != DEMO.name]


def sample(h: int, w: int, seed: int = 0, classes: int = 5) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    # Vertical stripes of classes, so that most crops hold several classes.
    mask = (torch.arange(w) * classes // w).to(torch.uint8).expand(h, w).clone()
    mask[: h // 10] = IGNORE_INDEX
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def random_array(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def reference_convert(x: np.ndarray, alpha: float = 1, beta: float = 0) -> np.ndarray:
    """The reference's PhotoMetricDistortion.convert."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------
# Sizes and resizing


@pytest.mark.parametrize(
    ("hw", "target", "expected"),
    [
        ((375, 500), (2048, 512), (512, 683)),  # VOC landscape, recipe §5.2
        ((500, 375), (2048, 512), (683, 512)),  # portrait: long/short, not h/w
        ((1024, 2048), (2048, 1024), (1024, 2048)),  # Cityscapes unchanged
        ((256, 256), (256, 256), (256, 256)),
    ],
)
def test_keep_ratio_size(hw, target, expected) -> None:
    assert keep_ratio_size(hw, target) == expected


def _resize_cases() -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(input (h, w), output (h, w)): odd, tiny, 1 x N, N x 1, up and down, and the keep-ratio sizes of every
    table row's base size and of its training scales at both ends of the range."""
    cases = [((1, 1), (3, 5)), ((2, 3), (1, 1)), ((1, 37), (4, 100)), ((41, 1), (13, 3)), ((1, 64), (1, 23))]
    cases += [((7, 9), (15, 19)), ((101, 73), (37, 29)), ((64, 64), (64, 64)), ((33, 47), (33, 200))]
    for hw in ((375, 500), (500, 333), (97, 131)):
        for row in TABLE_ROWS:
            for r in (None, 0.5, 1.37, 1.9999):
                base = row.data.base_size
                target = base if r is None else (int(base[0] * r), int(base[1] * r))
                cases.append((hw, keep_ratio_size(hw, target)))
    return sorted(set(cases))


RESIZE_CASES = _resize_cases()


RESIZE_IDS = [f"{s[0]}x{s[1]}-{t[0]}x{t[1]}" for s, t in RESIZE_CASES]


@pytest.mark.parametrize(("source", "size"), RESIZE_CASES, ids=RESIZE_IDS)
def test_resizes_equal_opencv_with_the_reference_flags(source, size) -> None:
    rgb = random_array((*source, 3), seed=source[0] * 1000 + source[1])
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # the reference resizes its BGR array
    expected = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)[..., ::-1]
    assert np.array_equal(resize_image(rgb, size), expected)
    # Labels: the reference resizes a float32 array holding -100 for void; we resize uint8 with 255.
    mask = random_array(source, seed=1)
    mask[mask > 200] = IGNORE_INDEX
    reference_label = np.where(mask == IGNORE_INDEX, -100, mask).astype(np.float32)
    expected_label = cv2.resize(reference_label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    resized = resize_mask(mask, size)
    assert np.array_equal(np.where(resized == IGNORE_INDEX, -100, resized), expected_label)


def test_resize_to_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match=r"an image of 9000x1 \(WxH\) resizes to 1024x0"):
        resize_image(random_array((1, 9000, 3)), keep_ratio_size((1, 9000), (1024, 256)))


def test_image_array_is_a_view_of_channels_last_tensors() -> None:
    hwc = torch.from_numpy(random_array((5, 7, 3)))
    view = image_array(hwc.permute(2, 0, 1))  # how the decoders hand images over
    assert np.shares_memory(view, hwc.numpy()) and view.flags.c_contiguous
    planar = hwc.permute(2, 0, 1).contiguous()
    assert np.array_equal(image_array(planar), hwc.numpy())
    with pytest.raises(ValueError, match=r"expected a uint8 RGB image \(3, H, W\), got torch.float32 \(3, 5, 7\)"):
        image_array(planar.float())


# --------------------------------------------------------------------------------------------------------
# Normalisation and padding


def reference_normalize(bgr: np.ndarray) -> np.ndarray:
    """The reference's Normalize (to_rgb) then ToTensor: float32 (3, H, W)."""
    image = bgr.astype(np.float32)
    cv2.cvtColor(image, cv2.COLOR_BGR2RGB, image)
    cv2.subtract(image, np.float64(np.array(MEAN).reshape(1, -1)), image)
    cv2.multiply(image, 1 / np.float64(np.array(STD).reshape(1, -1)), image)
    return image.transpose((2, 0, 1)).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (37, 53), (512, 683)])
def test_normalize_equals_the_references_opencv_calls(shape) -> None:
    rgb = random_array((*shape, 3), seed=shape[1])
    rgb[0, 0] = (0, 128, 255)
    out = normalize(rgb)
    assert out.dtype == torch.float32 and out.shape == (3, *shape) and out.is_contiguous()
    # OpenCV's Python binding reads an (H, 1, 3) array as an H x 3 matrix, so the reference's in-place
    # subtract/multiply return new arrays and leave width-1 images unnormalised; we normalise those like any
    # other (docs/reference-recipe.md §10): compare them as a column of a wider image.
    wide = np.concatenate([rgb, rgb], axis=1)
    expected = reference_normalize(np.ascontiguousarray(wide[..., ::-1]))[..., : shape[1]]
    assert torch.equal(out, torch.from_numpy(np.ascontiguousarray(expected)))
    if shape[1] > 1:
        assert torch.equal(out, torch.from_numpy(reference_normalize(np.ascontiguousarray(rgb[..., ::-1]))))


@pytest.mark.parametrize(
    ("hw", "size"), [((100, 60), (128, 96)), ((601, 300), (512, 512)), ((7, 1030), (512, 1024)), ((64, 48), (64, 48))]
)
def test_normalize_and_pad_equal_the_references_normalize_then_tensor_padding(hw, size) -> None:
    rgb = random_array((*hw, 3), seed=hw[0])
    mask = random_array(hw)
    # The reference's Padding (tensor mode): F.pad with (out - in) // 2 before; negative amounts crop.
    top, left = (size[0] - hw[0]) // 2, (size[1] - hw[1]) // 2
    pads = (left, size[1] - hw[1] - left, top, size[0] - hw[0] - top)
    out_image, out_mask = normalize_and_pad(rgb, mask, size)
    expected = torch.from_numpy(reference_normalize(np.ascontiguousarray(rgb[..., ::-1])))
    assert torch.equal(out_image, F.pad(expected, pads, value=0.0))
    assert torch.equal(out_mask, F.pad(torch.from_numpy(mask).long(), pads, value=IGNORE_INDEX))
    assert centred_span(601, 512) == (45, 0, 512) and centred_span(100, 128) == (0, 14, 100)


def test_padding_is_centred_with_zero_and_ignore() -> None:
    # Scale fixed at 1 and a base size that keeps the 100x60 image as it is: everything outside is padding.
    transforms = TrainTransforms(crop_size=(128, 96), base_size=(100, 60), scale_range=(1.0, 1.0))
    image, mask = sample(100, 60)
    mask[:] = 1
    torch.manual_seed(0)
    out_image, out_mask = transforms(image, mask)
    top, left = (128 - 100) // 2, (96 - 60) // 2
    inside = torch.zeros(128, 96, dtype=torch.bool)
    inside[top : top + 100, left : left + 60] = True
    assert torch.all(out_mask[inside] == 1) and torch.all(out_mask[~inside] == IGNORE_INDEX)
    assert torch.all(out_image[:, ~inside] == 0)
    assert out_image[:, inside].abs().sum() > 0


# --------------------------------------------------------------------------------------------------------
# Photometric distortion


def _reference_hsv_edit(bgr: np.ndarray, channel: int, edit) -> np.ndarray:
    hsv = cv2.cvtColor(bgr, cv2.COLOR_RGB2HSV)  # the reference's call, on its BGR array
    hsv[..., channel] = edit(hsv[..., channel])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@pytest.mark.parametrize("shape", [(1, 1), (1, 200), (200, 1), (97, 131), (512, 512)])
def test_each_photometric_op_equals_the_references(shape) -> None:
    rgb = random_array((*shape, 3), seed=shape[0])
    rgb[0, 0] = (255, 0, 0)  # saturated and grey pixels, where HSV rounding is at its extremes
    rgb[-1, -1] = (90, 90, 90)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    distort = PhotoMetricDistortion()

    def check(params: PhotometricParams, expected_bgr: np.ndarray) -> None:
        out = distort(rgb, params)
        assert out.dtype == np.uint8 and np.array_equal(out, expected_bgr[..., ::-1]), params

    for beta in (-32.0, -7.3, 0.999999, 19.5, 31.99):
        check(PhotometricParams(brightness=beta), reference_convert(bgr, beta=beta))
    for alpha in (0.5, 0.73, 1.0, 1.2345, 1.4999):
        check(PhotometricParams(contrast_first=alpha), reference_convert(bgr, alpha=alpha))
        check(PhotometricParams(contrast_last=alpha), reference_convert(bgr, alpha=alpha))
        expected = _reference_hsv_edit(bgr, 1, lambda s: reference_convert(s, alpha=alpha))
        check(PhotometricParams(saturation=alpha), expected)
    for delta in (-18, -5, 0, 7, 17):
        check(PhotometricParams(hue=delta), _reference_hsv_edit(bgr, 0, lambda h: (h.astype(int) + delta) % 180))
    assert distort(rgb, PhotometricParams()) is rgb


def test_photometric_ops_in_the_references_order() -> None:
    rgb = random_array((64, 80, 3), seed=3)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    params = PhotometricParams(brightness=12.5, contrast_first=1.3, saturation=0.7, hue=-9, contrast_last=0.8)
    expected = reference_convert(bgr, beta=params.brightness)
    expected = reference_convert(expected, alpha=params.contrast_first)
    expected = _reference_hsv_edit(expected, 1, lambda s: reference_convert(s, alpha=params.saturation))
    expected = _reference_hsv_edit(expected, 0, lambda h: (h.astype(int) + params.hue) % 180)
    expected = reference_convert(expected, alpha=params.contrast_last)
    out = PhotoMetricDistortion()(rgb, params)
    assert np.array_equal(out, expected[..., ::-1])
    assert not np.array_equal(out, rgb)


def test_photometric_ops_clip_truncate_and_hue_quirk() -> None:
    distort = PhotoMetricDistortion()
    image = np.array([[[250, 100, 0]]], dtype=np.uint8)
    assert distort(image, PhotometricParams(brightness=10.7)).ravel().tolist() == [255, 110, 10]
    assert distort(image, PhotometricParams(contrast_last=1.5)).ravel().tolist() == [255, 150, 0]
    assert distort(image, PhotometricParams(saturation=0.0)).ravel().tolist() == [250, 250, 250]
    # HSV of the channel-reversed array (reference quirk): +10 hue units turn red towards magenta.
    red = np.array([[[255, 0, 0]]], dtype=np.uint8)
    assert distort(red, PhotometricParams(hue=10)).ravel().tolist() == [255, 0, 85]
    assert convert_table(beta=-0.5)[:2].tolist() == [0, 0]
    assert hue_table(-18)[[0, 17, 18, 179]].tolist() == [162, 179, 0, 161]
    with pytest.raises(ValueError, match=r"expects a uint8 \(H, W, 3\) image, got float32 \(1, 1, 3\)"):
        distort(image.astype(np.float32), PhotometricParams())


def test_photometric_param_ranges() -> None:
    distort = PhotoMetricDistortion()
    seen = {"brightness": [], "hue": [], "contrast": []}
    for seed in range(200):
        torch.manual_seed(seed)
        p = distort.draw()
        assert p.contrast_first is None or p.contrast_last is None  # contrast once, before or after
        for key, value in (("brightness", p.brightness), ("hue", p.hue)):
            if value is not None:
                seen[key].append(value)
        seen["contrast"] += [c for c in (p.contrast_first, p.contrast_last) if c is not None]
    assert 70 < len(seen["brightness"]) < 130 and all(-32 <= b <= 32 for b in seen["brightness"])
    assert all(isinstance(h, int) and -18 <= h <= 17 for h in seen["hue"]) and -18 in seen["hue"]
    assert all(0.5 <= c <= 1.5 for c in seen["contrast"])


# --------------------------------------------------------------------------------------------------------
# Crop


def test_crop_is_acceptable() -> None:
    mask = np.zeros((4, 4), dtype=np.uint8)
    assert not crop_is_acceptable(mask, 0.75)  # a single class
    mask[:, :1] = 1  # 25 % / 75 %: the cap is strict (< 0.75)
    assert not crop_is_acceptable(mask, 0.75)
    mask[0, 1] = 1  # 5 / 16 vs 11 / 16
    assert crop_is_acceptable(mask, 0.75)
    mask[2:] = IGNORE_INDEX  # ignored pixels do not count: 5 of 8 valid are class 1 -> 62.5 %
    assert crop_is_acceptable(mask, 0.75)
    mask[:2, 2:] = 1
    assert not crop_is_acceptable(mask, 0.75)  # 7 / 8
    big = np.zeros((4096, 4097), dtype=np.uint8)  # over 2^24 pixels: counted without OpenCV's float32 histogram
    big[:, : 4097 // 4 + 1] = 1
    assert crop_is_acceptable(big, 0.75)  # class 0 on 3072 of 4097 columns: under 75 %
    assert not crop_is_acceptable(big[:, 1:], 0.75)  # 3072 of 4096: 75 %, not under


def test_crop_cap_retries_until_acceptable() -> None:
    # Class 1 left of x = 600, class 2 right of it; a 512-wide crop is acceptable for left in (216, 472).
    mask = np.ones((512, 1024), dtype=np.uint8)
    mask[:, 600:] = 2
    capped, uncapped = CatMaxRatioCrop((512, 512), 0.75), CatMaxRatioCrop((512, 512), 1.0)
    accepted = {True: 0, False: 0}
    for seed in range(30):
        torch.manual_seed(seed)
        top, left, h, w = capped.draw(mask)
        assert (h, w) == (512, 512) and crop_is_acceptable(mask[top : top + h, left : left + w], 0.75)
        torch.manual_seed(seed)
        top, left, h, w = uncapped.draw(mask)
        accepted[crop_is_acceptable(mask[top : top + h, left : left + w], 0.75)] += 1
    assert accepted[False] >= 5  # without the cap many crops are single-class or lopsided


def test_crop_without_valid_pixels_keeps_the_sample_uncropped() -> None:
    mask = np.full((300, 401), IGNORE_INDEX, dtype=np.uint8)
    mask[0, 0] = 3  # a corner pixel that no 100x100 window after 10 tries is likely to contain
    torch.manual_seed(0)
    assert CatMaxRatioCrop((100, 100), 0.75).draw(mask) is None
    # The pipeline then centre-crops after the flip, as the reference's padding does: 300 x 401 -> rows
    # 100..199, columns 151..250 (ceil of the odd difference off the left/top).
    transforms = TrainTransforms((100, 100), base_size=(401, 300), scale_range=(1.0, 1.0))
    image = tv_tensors.Image(torch.from_numpy(random_array((300, 401, 3))).permute(2, 0, 1))
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_mask = transforms(image, tv_tensors.Mask(torch.from_numpy(mask)))
        assert out_image.shape == (3, 100, 100) and bool((out_mask == IGNORE_INDEX).all())


def test_crop_smaller_image_keeps_whole_side() -> None:
    _, mask = sample(100, 700)
    torch.manual_seed(0)
    top, left, h, w = CatMaxRatioCrop((512, 512)).draw(mask.numpy())
    assert (top, h, w) == (0, 100, 512) and 0 <= left <= 700 - 512


# --------------------------------------------------------------------------------------------------------
# Pipelines


def test_eval_transforms_resize_and_normalize() -> None:
    image, mask = sample(375, 500)
    out_image, out_mask = eval_transforms(VOC)(image, mask)
    assert out_image.shape == (3, 512, 683) and out_image.dtype == torch.float32
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    assert out_mask.dtype == torch.int64 and torch.equal(out_mask, mask.to(torch.int64))  # original size
    flat = tv_tensors.Image(torch.tensor(MEAN).round().to(torch.uint8).view(3, 1, 1).expand(3, 375, 500).clone())
    normalized, _ = eval_transforms(VOC)(flat, mask)
    assert normalized.abs().max() < 0.01  # the mean colour normalises to ~0
    image, mask = sample(1024, 2048)
    assert eval_transforms(CITYSCAPES)(image, mask)[0].shape == (3, 1024, 2048)


@pytest.mark.parametrize(("data", "hw"), [(VOC, (375, 500)), (CITYSCAPES, (256, 512)), (DEMO.data, (256, 256))])
def test_train_output_shapes_and_types(data, hw) -> None:
    transforms = train_transforms(data)
    image, mask = sample(*hw)
    for seed in range(2):
        torch.manual_seed(seed)
        out_image, out_mask = transforms(image, mask)
        assert out_image.shape == (3, *data.crop_size) and out_image.dtype == torch.float32
        assert out_mask.shape == data.crop_size and out_mask.dtype == torch.int64
        assert type(out_image) is torch.Tensor and out_image.is_contiguous()
        assert set(out_mask.unique().tolist()) <= set(range(5)) | {IGNORE_INDEX}


def test_train_transforms_reproducible_with_seed_and_picklable() -> None:
    transforms = pickle.loads(pickle.dumps(train_transforms(VOC)))
    image, mask = sample(375, 500, seed=1)
    before = image.clone()
    outputs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outputs.append(transforms(image, mask))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert not torch.equal(outputs[0][0], outputs[2][0])
    assert torch.equal(image, before)  # the input is never written


def test_rescale_range_sets_the_scale() -> None:
    # scale_range (2, 2): 375x500 -> 1024x1365 (s = min(4096/500, 1024/375)); a 512 crop of it, no padding.
    transforms = TrainTransforms((512, 512), VOC.base_size, scale_range=(2.0, 2.0))
    image, mask = sample(375, 500)
    torch.manual_seed(0)
    _, out_mask = transforms(image, mask)
    assert (out_mask == IGNORE_INDEX).float().mean() < 0.2  # only the ignored top tenth, no padding
    small = replace(VOC, scale_range=(0.5, 0.5))  # -> 256x341: padded to 512x512
    torch.manual_seed(0)
    _, out_mask = train_transforms(small)(image, mask)
    assert (out_mask != IGNORE_INDEX).sum() <= 256 * 341


def test_denormalize_inverts_normalize() -> None:
    image, mask = sample(60, 80)
    normalized, _ = eval_transforms(replace(VOC, base_size=(80, 60)))(image, mask)
    assert normalized.shape == (3, 60, 80)
    assert torch.equal(denormalize(normalized), image.as_subclass(torch.Tensor))
    batch = denormalize(normalized[None])
    assert batch.shape == (1, 3, 60, 80) and batch.dtype == torch.uint8
    assert torch.allclose(torch.tensor(STD), torch.tensor([58.395, 57.12, 57.375]))


class _ThreadsSeen(torch.utils.data.Dataset):
    """Runs the test transform and reports OpenCV's thread count before and after (in whichever process)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> tuple[int, int]:
        before = cv2.getNumThreads()
        image, mask = sample(8, 8)
        eval_transforms(DEMO.data)(image, mask)
        return before, cv2.getNumThreads()


def test_opencv_runs_single_threaded_in_loader_workers_only() -> None:
    main_threads = cv2.getNumThreads()
    seen = list(torch.utils.data.DataLoader(_ThreadsSeen(), batch_size=None, num_workers=1))
    assert [after for _, after in seen] == [1, 1]  # the workers' own pool is off from the first sample on
    assert _ThreadsSeen()[0] == (main_threads, main_threads)  # the main process keeps OpenCV's default
