"""The recipe's training and test pipelines (recipe §5.1 and §5.2, `docs/reference-recipe.md`) on (image, mask) pairs.

Inputs are what the datasets return: image `tv_tensors.Image` uint8 (3, H, W) RGB, mask `tv_tensors.Mask`
uint8 (H, W) with void = IGNORE_INDEX. Resize, crop and flip run on uint8 data; the photometric distortion
works in float32 holding whole numbers (truncated after every op, like the reference's uint8 casts) and hands
that straight to normalisation. The image is cropped before the per-pixel work, so its cost is per crop.

Train, in order: `RandomRescale` -> `CatMaxRatioCrop` -> `v2.RandomHorizontalFlip` -> `PhotoMetricDistortion`
-> float + `v2.Normalize` -> `CenterPad` -> (image float32 (3, h, w), mask int64 (h, w)), (h, w) = crop_size.
Test: resize keeping the ratio to `base_size` -> float + `v2.Normalize`; the mask is returned untouched at the
original size (int64), because metrics are computed at the original resolution.

All randomness comes from torch's global RNG, so `torch.manual_seed(s)` before a call makes that sample
reproducible (the trainer seeds per sample).

Deviations from the reference, on purpose:
* cv2's INTER_LINEAR is replaced by torch's bilinear resize without antialiasing (same sampling positions,
  align_corners=False; rounding of the fixed-point arithmetic may differ by 1 grey level) and INTER_NEAREST by
  torch's "nearest" (the same floor(dst * in/out) rule).
* The reference returns a sample *uncropped* when the last of its 10 crop tries has no valid pixel, and its
  padding step then centre-crops it through negative pads; `CatMaxRatioCrop` does that centre crop directly
  (same pixels up to a 1-pixel shift for odd size differences; the flip and the pixel-wise distortion commute
  with it).
* The reference's padding swaps the output size for images whose orientation disagrees with the crop
  (`output_size_auto_adaptive`); that never triggers for square crops or Cityscapes' landscape crops, and would
  make batches of mixed shapes otherwise, so `CenterPad` always pads to `crop_size`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pointrend_core.labels import IGNORE_INDEX

if TYPE_CHECKING:
    from pointrend_core.config import DataConfig

MEAN = (123.675, 116.28, 103.53)
"""Per-channel mean, RGB order, 0-255 scale (ImageNet statistics, as in the reference)."""
STD = (58.395, 57.12, 57.375)
"""Per-channel standard deviation, RGB order, 0-255 scale."""


# --------------------------------------------------------------------------------------------------------
# Sizes


def keep_ratio_size(size: tuple[int, int], target: tuple[float, float]) -> tuple[int, int]:
    """The reference's keep-ratio resize: (h, w) -> (h', w') with s = min(long_t / long, short_t / short).

    `target` is (long side, short side) and may be fractional scale products truncated by the caller.
    Rounds half up like the reference (`int(x * s + 0.5)`): VOC 375x500 with target (2048, 512) -> (512, 683).
    """
    h, w = size
    scale = min(max(target) / max(h, w), min(target) / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _query_hw(flat_inputs: Sequence[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return int(inpt.shape[-2]), int(inpt.shape[-1])
    raise TypeError("expected a tv_tensors.Image or tv_tensors.Mask among the inputs")


def _find_mask(flat_inputs: Sequence[Any]) -> tv_tensors.Mask:
    for inpt in flat_inputs:
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
    raise TypeError("expected a tv_tensors.Mask among the inputs (the crop inspects the labels)")


# --------------------------------------------------------------------------------------------------------
# Geometric steps


class RandomRescale(v2.Transform):
    """Resize keeping the aspect ratio to `base_size` (long, short) times r ~ U[scale_range) (recipe §5.1, step 1).

    Target = (int(long * r), int(short * r)); the image is resized bilinearly (antialias off, like cv2
    INTER_LINEAR), the mask with nearest neighbour.
    """

    def __init__(self, base_size: tuple[int, int], scale_range: tuple[float, float]) -> None:
        super().__init__()
        self.base_size = tuple(base_size)
        self.scale_range = tuple(scale_range)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.scale_range
        r = float(torch.rand((), dtype=torch.float64)) * (hi - lo) + lo
        target = (int(self.base_size[0] * r), int(self.base_size[1] * r))
        return {"size": keep_ratio_size(_query_hw(flat_inputs), target)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # For tv_tensors.Mask, v2's resize kernel always uses nearest neighbour.
        return self._call_kernel(
            F.resize, inpt, size=list(params["size"]), interpolation=v2.InterpolationMode.BILINEAR, antialias=False
        )


def crop_is_acceptable(mask: torch.Tensor, cat_max_ratio: float, ignore_index: int = IGNORE_INDEX) -> bool:
    """The reference's crop test on a uint8 mask (h, w): more than one non-ignored label value, and the most
    frequent one covers less than `cat_max_ratio` of the non-ignored pixels."""
    counts = torch.bincount(mask.reshape(-1), minlength=256)
    counts[ignore_index] = 0
    total = int(counts.sum())
    return int((counts > 0).sum()) > 1 and int(counts.max()) < cat_max_ratio * total


def _has_valid_pixel(mask: torch.Tensor, ignore_index: int) -> bool:
    return bool((mask != ignore_index).any())


class CatMaxRatioCrop(v2.Transform):
    """Random crop of `crop_size` (h, w) (or the whole side when the image is smaller), retried up to
    `max_tries` times until `crop_is_acceptable` (recipe §5.1, step 2); after that the last try is kept, or a
    centred window when the last try holds no valid pixel (see the module docstring)."""

    def __init__(
        self,
        crop_size: tuple[int, int],
        cat_max_ratio: float = 0.75,
        max_tries: int = 10,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.crop_size = tuple(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.max_tries = max_tries
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        mask = _find_mask(flat_inputs)
        h, w = mask.shape[-2:]
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        window = mask.as_subclass(torch.Tensor)
        for _ in range(self.max_tries):
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
            crop = window[..., top : top + ch, left : left + cw]
            if self.cat_max_ratio >= 1.0 or crop_is_acceptable(crop, self.cat_max_ratio, self.ignore_index):
                break
        else:
            if not _has_valid_pixel(crop, self.ignore_index):
                top, left = (h - ch) // 2, (w - cw) // 2
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class CenterPad(v2.Transform):
    """Pad to `size` (h, w), centred (top = (H_out - h) // 2, left likewise; recipe §5.1, step 6), with 0 for
    images and IGNORE_INDEX for masks. Inputs larger than `size` are left as they are."""

    def __init__(self, size: tuple[int, int], image_fill: float = 0.0, mask_fill: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = tuple(size)
        self.image_fill = image_fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _query_hw(flat_inputs)
        dh, dw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        return {"padding": [dw // 2, dh // 2, dw - dw // 2, dh - dh // 2]}  # left, top, right, bottom

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.image_fill
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)


# --------------------------------------------------------------------------------------------------------
# Photometric distortion (recipe §5.1, step 4)
#
# The reference converts to cv2's 8-bit HSV, edits S or H, and converts back. `scale_saturation_` /
# `shift_hue` compute the same operations directly in RGB at a fraction of the cost; the tests check them
# against a plain implementation of cv2's conversions (tests/hsv_cv2.py).


def _max_min(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel max and min over the channels of float (3, H, W) -> two (H, W) tensors (elementwise
    maximum/minimum: a strided reduction over dim 0 is several times slower)."""
    v = torch.maximum(x[0], x[1])
    torch.maximum(v, x[2], out=v)
    low = torch.minimum(x[0], x[1])
    torch.minimum(low, x[2], out=low)
    return v, low


def scale_saturation_(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """cv2-HSV saturation scaling in place on float (3, H, W) holding integers 0..255; returns `x`.

    With H and V fixed every channel is c = v - v * S * ramp_c(H) (S in [0, 1]), so scaling S moves each
    channel along its line to V: c' = v - (v - c) * S' / S. S' follows the reference's 8-bit arithmetic:
    S = round(255 * (max - min) / max), S' = trunc(clip(S * alpha, 0, 255)); the result is rounded to nearest
    like cv2's HSV2RGB. Unlike cv2 the hue is not snapped to its 2-degree grid in between, so the output
    differs from the cv2 round trip HSV2RGB(RGB2HSV(.)) by that round trip's own error
    (up to ~5 grey levels on saturated colours, 0.4 on average).
    Independent of the channel order.
    """
    v, low = _max_min(x)
    diff = low.neg_().add_(v)  # max - min
    s = torch.mul(diff, 255.0).div_(v.clamp(min=1.0)).add_(0.5).floor_()
    s.mul_(alpha).clamp_(0.0, 255.0).floor_()
    ratio = s.mul_(v).div_(diff.mul_(255.0).clamp_(min=1.0))  # S' / S_exact = S' * v / (255 (max - min))
    return x.sub_(v).mul_(ratio).add_(v.add_(0.5)).floor_()  # stays in [0, v]: no clipping needed


def shift_hue(x: torch.Tensor, delta: int, swap_rb: bool = True) -> torch.Tensor:
    """cv2-HSV hue shift of float (3, H, W) holding integers 0..255 -> a new float (3, H, W) of the same kind
    (`x` is left unchanged).

    H = cv2's 8-bit hue (degrees / 2, rounded) of the pixel, read with channel 2 as red when `swap_rb` (the
    reference converts its BGR array with RGB2HSV, recipe §5.1); H' = (H + delta) mod 180;
    each channel becomes v - (max - min) * ramp_c(H'), rounded, where ramp_c is the piecewise-linear HSV
    profile of channel c, looked up in a 181-entry table per channel (H is an integer, so this is exact).
    V and max - min are kept unquantised, which can differ from cv2's 8-bit S round trip by one grey level.
    """
    r, g, b = (x[2], x[1], x[0]) if swap_rb else (x[0], x[1], x[2])
    v, low = _max_min(x)
    diff = low.neg_().add_(v)
    # cv2's sector rule, priority R, then G, then B; grey pixels (diff 0) get 0 and stay grey below.
    numerator = torch.sub(r, g).add_(diff, alpha=4.0)
    other = torch.sub(b, r).add_(diff, alpha=2.0)
    torch.where(v == g, other, numerator, out=numerator)
    torch.where(v == r, torch.sub(g, b, out=other), numerator, out=numerator)
    # H in [-30, 150] before wrapping; +30 makes it a table index 0..180.
    index = numerator.mul_(30.0).div_(diff.clamp(min=1.0)).add_(30.5).floor_().to(torch.int64).view(-1)
    ramps = _hue_ramps(delta, swap_rb).index_select(1, index).view_as(x)  # ~5x faster than table[:, index]
    return ramps.mul_(diff.neg_()).add_(v.add_(0.5)).floor_()


@functools.lru_cache(maxsize=None)
def _hue_ramps(delta: int, swap_rb: bool) -> torch.Tensor:
    """float (3, 181): for table index i (H = i - 30 before wrapping), the HSV ramp of each output channel
    at H' = (H + delta) mod 180: ramp(k) = clamp(min(k, 4 - k), 0, 1), k = (n_c + H' / 30) mod 6, n = 5, 3, 1
    for R, G, B (channels listed in storage order)."""
    hue = (torch.arange(181, dtype=torch.float64) - 30 + delta).remainder(180.0) / 30.0
    offsets = torch.tensor([1.0, 3.0, 5.0] if swap_rb else [5.0, 3.0, 1.0], dtype=torch.float64)[:, None]
    k = (offsets + hue).remainder(6.0)
    return torch.minimum(k, 4.0 - k).clamp(0.0, 1.0).to(torch.float32)


def _randint2() -> bool:
    return bool(torch.randint(0, 2, ()))


def _uniform(lo: float, hi: float) -> float:
    return float(torch.rand((), dtype=torch.float64)) * (hi - lo) + lo


class PhotoMetricDistortion(v2.Transform):
    """The reference's PhotoMetricDistortion on uint8 RGB images (masks pass through).

    Brightness (p 0.5, + U(-32, 32)); mode = randint(2); contrast first if mode == 1 (p 0.5, x U(0.5, 1.5));
    saturation (p 0.5, HSV S x U(0.5, 1.5)); hue (p 0.5, H += randint(-18, 18) i.e. -18..17, mod 180);
    contrast last if mode == 0. Each op clips to [0, 255] and truncates, as the reference's cast to uint8
    does.

    uint8 (3, H, W) in, float32 (3, H, W) holding whole numbers 0..255 out: the ops work in float32 and the
    next step (normalisation) wants float32, so a round trip through uint8 would only cost time.

    The reference runs cv2's RGB<->HSV conversions on its BGR array (recipe §5.1); this is
    reproduced by reading channel 2 as red in the hue op, which amounts to shifting the true hue by the
    opposite amount. Saturation does not depend on the channel order. Both HSV ops are computed directly in
    RGB (`scale_saturation_`, `shift_hue`: much cheaper than converting to HSV and back, and equal to
    cv2's 8-bit round trip within that round trip's own quantisation error; see their docstrings).
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # Drawn in the reference's order so that one seed gives one sequence of decisions.
        brightness = _uniform(-self.brightness_delta, self.brightness_delta) if _randint2() else None
        mode = int(torch.randint(0, 2, ()))
        contrast_first = _uniform(*self.contrast_range) if mode == 1 and _randint2() else None
        saturation = _uniform(*self.saturation_range) if _randint2() else None
        hue = int(torch.randint(-self.hue_delta, self.hue_delta, ())) if _randint2() else None
        contrast_last = _uniform(*self.contrast_range) if mode == 0 and _randint2() else None
        return {
            "brightness": brightness,
            "contrast_first": contrast_first,
            "saturation": saturation,
            "hue": hue,
            "contrast_last": contrast_last,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.dtype != torch.uint8:
            raise TypeError(f"PhotoMetricDistortion expects a uint8 image, got {inpt.dtype}")
        # Planar layout: the resize hands over channels-last data, on which per-channel planes are strided.
        x = inpt.as_subclass(torch.Tensor).to(torch.float32, memory_format=torch.contiguous_format)
        if params["brightness"] is not None:
            x.add_(params["brightness"]).clamp_(0.0, 255.0).floor_()
        if params["contrast_first"] is not None:
            x.mul_(params["contrast_first"]).clamp_(0.0, 255.0).floor_()
        if params["saturation"] is not None:
            scale_saturation_(x, params["saturation"])
        if params["hue"] is not None:
            x = shift_hue(x, params["hue"], swap_rb=True)
        if params["contrast_last"] is not None:
            x.mul_(params["contrast_last"]).clamp_(0.0, 255.0).floor_()
        return tv_tensors.wrap(x, like=inpt)


# --------------------------------------------------------------------------------------------------------
# Pipelines


def _normalize_steps() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=False),
        v2.Normalize(mean=list(MEAN), std=list(STD), inplace=True),  # ToDtype made a fresh tensor
    ]


def _plain(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the tv_tensors wrappers: image float32 (3, h, w), mask int64 (h, w), both contiguous."""
    return (
        image.as_subclass(torch.Tensor).contiguous(),
        mask.as_subclass(torch.Tensor).to(torch.int64).contiguous(),
    )


class TrainTransforms:
    """(image uint8 (3, H, W), mask uint8 (H, W)) -> (image float32 (3, h, w) normalised, mask int64 (h, w)),
    (h, w) = crop_size. A top-level class so that DataLoader workers can pickle it."""

    def __init__(
        self,
        crop_size: tuple[int, int],
        base_size: tuple[int, int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
    ) -> None:
        self.pipeline = v2.Compose(
            [
                RandomRescale(base_size, scale_range),
                CatMaxRatioCrop(crop_size, cat_max_ratio),
                v2.RandomHorizontalFlip(p=0.5),
                PhotoMetricDistortion(),
                *_normalize_steps(),
                CenterPad(crop_size),
            ]
        )

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        return _plain(*self.pipeline(_wrap_image(image), _wrap_mask(mask)))

    def __repr__(self) -> str:
        return f"TrainTransforms({self.pipeline})"


class EvalTransforms:
    """(image uint8 (3, H, W), mask uint8 (H, W)) -> (image float32 (3, H', W') resized keeping the ratio to
    `base_size` and normalised, mask int64 (H, W) at the ORIGINAL size)."""

    def __init__(self, base_size: tuple[int, int]) -> None:
        self.base_size = tuple(base_size)
        self.normalize = v2.Compose(_normalize_steps())

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        image = _wrap_image(image)
        size = keep_ratio_size((int(image.shape[-2]), int(image.shape[-1])), self.base_size)
        resized = F.resize(image, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
        return _plain(self.normalize(resized), _wrap_mask(mask))

    def __repr__(self) -> str:
        return f"EvalTransforms(base_size={self.base_size})"


def _wrap_image(image: torch.Tensor) -> tv_tensors.Image:
    return image if isinstance(image, tv_tensors.Image) else tv_tensors.Image(image)


def _wrap_mask(mask: torch.Tensor) -> tv_tensors.Mask:
    return mask if isinstance(mask, tv_tensors.Mask) else tv_tensors.Mask(mask)


def train_transforms(data_cfg: DataConfig) -> TrainTransforms:
    """The training pipeline of a row's data recipe (crop_size, base_size, scale_range, cat_max_ratio)."""
    return TrainTransforms(data_cfg.crop_size, data_cfg.base_size, data_cfg.scale_range, data_cfg.cat_max_ratio)


def eval_transforms(data_cfg: DataConfig) -> EvalTransforms:
    """The test pipeline of a row's data recipe (keep-ratio resize to base_size, normalise)."""
    return EvalTransforms(data_cfg.base_size)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation for figures: float (3, H, W) or (B, 3, H, W) -> uint8 of the same shape."""
    shape = (3, 1, 1) if image.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(MEAN, dtype=image.dtype, device=image.device).view(shape)
    std = torch.tensor(STD, dtype=image.dtype, device=image.device).view(shape)
    return (image * std + mean).round_().clamp_(0, 255).to(torch.uint8)


__all__ = [
    "MEAN",
    "STD",
    "keep_ratio_size",
    "RandomRescale",
    "CatMaxRatioCrop",
    "crop_is_acceptable",
    "CenterPad",
    "PhotoMetricDistortion",
    "scale_saturation_",
    "shift_hue",
    "TrainTransforms",
    "EvalTransforms",
    "train_transforms",
    "eval_transforms",
    "denormalize",
]
