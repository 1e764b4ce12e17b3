"""The recipe's train and test pipelines: sizes, padding, crop cap, photometric ops, reproducibility."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import torch
from torchvision import tv_tensors

from hsv_cv2 import hsv_to_rgb_cv2, rgb_to_hsv_cv2
from pointrend_core.config import DEMO, IGNORE_INDEX, ROWS
from pointrend_core.data.transforms import (
    MEAN,
    STD,
    CatMaxRatioCrop,
    CenterPad,
    PhotoMetricDistortion,
    TrainTransforms,
    crop_is_acceptable,
    denormalize,
    eval_transforms,
    keep_ratio_size,
    scale_saturation_,
    shift_hue,
    train_transforms,
)

pytestmark = pytest.mark.numerics  # float results on this CPU's kernels: CI runs these twice (.ci/run)

VOC = ROWS["pointrend_r50_voc"].data
CITYSCAPES = ROWS["pointrend_r50_cityscapes"].data


def sample(h: int, w: int, seed: int = 0, classes: int = 5) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    # Vertical stripes of classes, so that most crops hold several classes.
    mask = (torch.arange(w) * classes // w).to(torch.uint8).expand(h, w).clone()
    mask[: h // 10] = IGNORE_INDEX
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


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
    pad = CenterPad((4, 4))
    padded = pad(tv_tensors.Mask(torch.zeros(1, 1, dtype=torch.uint8)))
    assert padded.tolist() == [[255] * 4, [255, 0, 255, 255], [255] * 4, [255] * 4]  # top = left = 3 // 2


def test_crop_is_acceptable() -> None:
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    assert not crop_is_acceptable(mask, 0.75)  # a single class
    mask[:, :1] = 1  # 25 % / 75 %: the cap is strict (< 0.75)
    assert not crop_is_acceptable(mask, 0.75)
    mask[0, 1] = 1  # 5 / 16 vs 11 / 16
    assert crop_is_acceptable(mask, 0.75)
    mask[2:] = IGNORE_INDEX  # ignored pixels do not count: 5 of 8 valid are class 1 -> 62.5 %
    assert crop_is_acceptable(mask, 0.75)
    mask[:2, 2:] = 1
    assert not crop_is_acceptable(mask, 0.75)  # 7 / 8


def test_crop_cap_retries_until_acceptable() -> None:
    # Class 1 left of x = 600, class 2 right of it; a 512-wide crop is acceptable for left in (216, 472).
    mask = torch.ones(512, 1024, dtype=torch.uint8)
    mask[:, 600:] = 2
    image = tv_tensors.Image(torch.zeros(3, 512, 1024, dtype=torch.uint8))
    capped, uncapped = CatMaxRatioCrop((512, 512), 0.75), CatMaxRatioCrop((512, 512), 1.0)
    accepted = {True: 0, False: 0}
    for seed in range(30):
        torch.manual_seed(seed)
        _, crop = capped(image, tv_tensors.Mask(mask))
        assert crop.shape == (512, 512) and crop_is_acceptable(crop, 0.75)
        torch.manual_seed(seed)
        _, crop = uncapped(image, tv_tensors.Mask(mask))
        accepted[crop_is_acceptable(crop, 0.75)] += 1
    assert accepted[False] >= 5  # without the cap many crops are single-class or lopsided


def test_crop_without_valid_pixels_takes_the_centre() -> None:
    mask = torch.full((300, 400), IGNORE_INDEX, dtype=torch.uint8)
    mask[0, 0] = 3  # a corner pixel that a centred 100x100 window cannot contain
    crop = CatMaxRatioCrop((100, 100), 0.75)
    torch.manual_seed(0)
    params = crop.make_params([tv_tensors.Mask(mask)])
    assert params == {"top": 100, "left": 150, "height": 100, "width": 100}


def test_crop_smaller_image_keeps_whole_side() -> None:
    image, mask = sample(100, 700)
    torch.manual_seed(0)
    out_image, out_mask = CatMaxRatioCrop((512, 512))(image, mask)
    assert out_image.shape == (3, 100, 512) and out_mask.shape == (100, 512)


def test_train_transforms_reproducible_with_seed_and_picklable() -> None:
    transforms = pickle.loads(pickle.dumps(train_transforms(VOC)))
    image, mask = sample(375, 500, seed=1)
    outputs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outputs.append(transforms(image, mask))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert not torch.equal(outputs[0][0], outputs[2][0])


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


def test_hsv_conversions_match_cv2_conventions() -> None:
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 128, 0], [90, 90, 90], [0, 0, 0]])
    image = colours.T.to(torch.uint8).view(3, 1, 6)
    h, s, v = rgb_to_hsv_cv2(image)
    assert h.flatten().tolist() == [0, 60, 120, 15, 0, 0]
    assert s.flatten().tolist() == [255, 255, 255, 255, 0, 0]
    assert v.flatten().tolist() == [255, 255, 255, 255, 90, 0]
    assert torch.equal(hsv_to_rgb_cv2(h, s, v), image)
    g = torch.Generator().manual_seed(0)
    random = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g)
    error = (hsv_to_rgb_cv2(*rgb_to_hsv_cv2(random)).int() - random.int()).abs()
    assert error.float().mean() < 0.6 and error.max() <= 6  # 8-bit HSV quantisation, as in cv2


def test_photometric_ops_clip_truncate_and_hue_quirk() -> None:
    distort = PhotoMetricDistortion()
    image = tv_tensors.Image(torch.tensor([250, 100, 0], dtype=torch.uint8).view(3, 1, 1))
    none = {"brightness": None, "contrast_first": None, "saturation": None, "hue": None, "contrast_last": None}
    assert distort.transform(image, {**none, "brightness": 10.7}).flatten().tolist() == [255, 110, 10]
    assert distort.transform(image, {**none, "contrast_last": 1.5}).flatten().tolist() == [255, 150, 0]
    assert distort.transform(image, {**none, "saturation": 0.0}).flatten().tolist() == [250, 250, 250]
    unchanged = distort.transform(image, none)
    assert unchanged.dtype == torch.float32 and unchanged.flatten().tolist() == [250, 100, 0]
    red = tv_tensors.Image(torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1))
    # HSV of the channel-reversed array (reference quirk): +10 hue units turn red towards magenta.
    assert distort.transform(red, {**none, "hue": 10}).flatten().tolist() == [255, 0, 85]
    mask = tv_tensors.Mask(torch.ones(1, 1, dtype=torch.uint8))
    torch.manual_seed(0)
    _, out_mask = distort(image, mask)
    assert out_mask is mask


def test_photometric_param_ranges() -> None:
    distort = PhotoMetricDistortion()
    seen = {"brightness": [], "hue": [], "contrast": []}
    for seed in range(200):
        torch.manual_seed(seed)
        p = distort.make_params([])
        assert p["contrast_first"] is None or p["contrast_last"] is None  # contrast once, before or after
        for key, value in (("brightness", p["brightness"]), ("hue", p["hue"])):
            if value is not None:
                seen[key].append(value)
        seen["contrast"] += [c for c in (p["contrast_first"], p["contrast_last"]) if c is not None]
    assert 70 < len(seen["brightness"]) < 130 and all(-32 <= b <= 32 for b in seen["brightness"])
    assert all(isinstance(h, int) and -18 <= h <= 17 for h in seen["hue"]) and -18 in seen["hue"]
    assert all(0.5 <= c <= 1.5 for c in seen["contrast"])


def test_denormalize_inverts_normalize() -> None:
    image, mask = sample(60, 80)
    normalized, _ = eval_transforms(replace(VOC, base_size=(80, 60)))(image, mask)
    assert normalized.shape == (3, 60, 80)
    assert torch.equal(denormalize(normalized), image.as_subclass(torch.Tensor))
    batch = denormalize(normalized[None])
    assert batch.shape == (1, 3, 60, 80) and batch.dtype == torch.uint8
    assert torch.allclose(torch.tensor(STD), torch.tensor([58.395, 57.12, 57.375]))


@pytest.mark.parametrize("swap_rb", [True, False])
def test_fast_hsv_ops_match_the_cv2_round_trip(swap_rb: bool) -> None:
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8, generator=g)
    for alpha in (0.5, 0.8, 1.3, 1.5):
        h, s, v = rgb_to_hsv_cv2(image, swap_rb=True)
        reference = hsv_to_rgb_cv2(h, s.mul(alpha).clamp(0, 255).floor(), v, swap_rb=True)
        fast = scale_saturation_(image.float(), alpha)
        error = (fast - reference.float()).abs()
        # cv2's round trip snaps hue to 2-degree steps (up to 4 levels off at alpha 1); the fast op does not.
        assert error.max() <= 6 and error.mean() < 0.5, alpha
    for delta in (-18, -5, 0, 7, 17):
        h, s, v = rgb_to_hsv_cv2(image, swap_rb=swap_rb)
        reference = hsv_to_rgb_cv2((h + delta).remainder(180), s, v, swap_rb=swap_rb)
        fast = shift_hue(image.float(), delta, swap_rb=swap_rb)
        error = (fast - reference.float()).abs()
        assert error.max() <= 1 and error.mean() < 0.3, delta
        assert fast.min() >= 0 and fast.max() <= 255 and torch.equal(fast, fast.floor())
