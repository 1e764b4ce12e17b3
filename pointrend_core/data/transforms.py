"""The recipe's training and test pipelines (recipe §5.1 and §5.2, `docs/reference-recipe.md`) on (image, mask)
pairs, equal value for value to the reference's.

Inputs are what the datasets return: image uint8 (3, H, W) RGB (a `tv_tensors.Image` or plain tensor; the
decoders store it channels-last, so its (H, W, 3) view costs nothing), mask uint8 (H, W) with void =
IGNORE_INDEX. Every step runs on (H, W, 3) uint8 numpy arrays with the OpenCV calls and flags the reference
uses, so the pixels are the reference's own:

* resize: `cv2.resize` INTER_LINEAR for images, INTER_NEAREST for masks, to (int(w s + 0.5), int(h s + 0.5));
* photometric distortion: `photometric.py` (the reference's float32 casts, clips, truncations and its
  cv2 HSV conversions on the channel-reversed array);
* normalisation: the reference's `cv2.subtract(image, mean)` then `cv2.multiply(image, 1 / std)` on float32,
  tabulated once for the 256 values of each channel and applied per plane with `cv2.LUT` straight into the
  (3, h, w) output (the same numbers, as each output depends on one uint8 value; torch's (x - mean) / std
  is 1 ulp off on about a quarter of them).

Train, in order: `RandomRescale` -> `CatMaxRatioCrop` -> horizontal flip (p 0.5) -> `PhotoMetricDistortion`
-> normalise -> centred pad (or crop, see below) to crop_size -> (image float32 (3, h, w), mask int64 (h, w)).
Test: keep-ratio resize to `base_size` -> normalise; the mask is returned untouched at the original size
(int64), because metrics are computed at the original resolution.

All randomness comes from torch's global generator, drawn in the reference's order (scale; crop positions;
flip; photometric decisions), so `torch.manual_seed(s)` before a call makes that sample reproducible (the
trainer seeds per sample).

When the last of the 10 crop tries holds no valid pixel the reference keeps the sample uncropped, and its
padding step then centre-crops it (negative pads); so does this pipeline, in the same place (after the flip
and the distortion), so even that rare case gives the reference's pixels. Deliberate differences
(`docs/reference-recipe.md` §10): the training output is always `crop_size`, where the reference swaps it
for images whose orientation disagrees with the crop (never the case for the six rows); images one pixel
wide are normalised, where the reference's in-place OpenCV calls leave them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info

from pointrend_core.data.photometric import PhotoMetricDistortion
from pointrend_core.labels import IGNORE_INDEX

if TYPE_CHECKING:
    from pointrend_core.config import DataConfig

MEAN = (123.675, 116.28, 103.53)
"""Per-channel mean, RGB order, 0-255 scale (ImageNet statistics, as in the reference)."""
STD = (58.395, 57.12, 57.375)
"""Per-channel standard deviation, RGB order, 0-255 scale."""


# --------------------------------------------------------------------------------------------------------
# Arrays in and out


def image_array(image: torch.Tensor) -> np.ndarray:
    """uint8 (3, H, W) tensor -> uint8 (H, W, 3) numpy array: a view when the tensor is stored channels-last
    (what the decoders give), a copy otherwise."""
    if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 RGB image (3, H, W), got {image.dtype} {tuple(image.shape)}")
    return np.ascontiguousarray(image.as_subclass(torch.Tensor).permute(1, 2, 0).numpy())


def mask_array(mask: torch.Tensor) -> np.ndarray:
    """uint8 (H, W) tensor -> contiguous uint8 (H, W) numpy array (a view when contiguous)."""
    if mask.dim() != 2 or mask.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 mask (H, W), got {mask.dtype} {tuple(mask.shape)}")
    return np.ascontiguousarray(mask.as_subclass(torch.Tensor).numpy())


def _normalize_tables() -> tuple[np.ndarray, ...]:
    """Three float32 (1, 256) tables, R, G, B: entry v of table c is what the reference's Normalize makes of
    value v in channel c (its own cv2 calls, run on the 256 values; RGB order, as after its BGR2RGB)."""
    values = np.repeat(np.arange(256, dtype=np.float32)[None, :, None], 3, axis=2)  # (1, 256, 3)
    cv2.subtract(values, np.float64(np.array(MEAN).reshape(1, -1)), values)
    cv2.multiply(values, 1 / np.float64(np.array(STD).reshape(1, -1)), values)
    return tuple(np.ascontiguousarray(values[:, :, c]) for c in range(3))


_NORMALIZE = _normalize_tables()


def _normalize_into(image: np.ndarray, out: np.ndarray) -> None:
    """Write the normalised planes of uint8 (h, w, 3) RGB into float32 (3, h, w) `out` (may be a window of a
    larger array): one table look-up per value, straight into the planar layout the network takes."""
    for plane, table, dst in zip(cv2.split(image), _NORMALIZE, out):
        result = cv2.LUT(plane, table, dst=dst)
        if result is not dst:  # OpenCV could not write into the view (it always can for these layouts)
            dst[...] = result


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) RGB -> float32 (3, h, w) contiguous tensor, (v - mean) / std as the reference
    computes it."""
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    _normalize_into(image, out)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------------------
# Sizes and resizing


def keep_ratio_size(size: tuple[int, int], target: tuple[float, float]) -> tuple[int, int]:
    """The reference's keep-ratio resize: (h, w) -> (h', w') with s = min(long_t / long, short_t / short).

    `target` is (long side, short side) and may be fractional scale products truncated by the caller.
    Rounds half up like the reference (`int(x * s + 0.5)`): VOC 375x500 with target (2048, 512) -> (512, 683).
    """
    h, w = size
    scale = min(max(target) / max(h, w), min(target) / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _check_size(source: tuple[int, ...], size: tuple[int, int]) -> None:
    if min(size) < 1:
        raise ValueError(
            f"an image of {source[1]}x{source[0]} (WxH) resizes to {size[1]}x{size[0]}; expected an aspect ratio "
            "that leaves both sides at least 1 pixel at the recipe's size"
        )


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, C) -> (h, w, C) with `cv2.resize(..., INTER_LINEAR)` (the reference's image resize;
    channel-wise, so RGB or BGR order gives the same values). The input itself at its own size."""
    if image.shape[:2] == tuple(size):
        return image  # cv2.resize would copy it unchanged
    _check_size(image.shape, size)
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) -> (h, w) with `cv2.resize(..., INTER_NEAREST)` (the reference's label resize)."""
    if mask.shape == tuple(size):
        return mask
    _check_size(mask.shape, size)
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


@dataclass(frozen=True)
class RandomRescale:
    """Keep-ratio resize to `base_size` (long, short) times r ~ U[scale_range) (recipe §5.1, step 1):
    target = (int(long * r), int(short * r)), then `keep_ratio_size`."""

    base_size: tuple[int, int]
    scale_range: tuple[float, float]

    def draw_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The output (h, w) for an input of `size` (h, w); draws r from torch's global generator."""
        lo, hi = self.scale_range
        r = float(torch.rand((), dtype=torch.float64)) * (hi - lo) + lo
        return keep_ratio_size(size, (int(self.base_size[0] * r), int(self.base_size[1] * r)))


# --------------------------------------------------------------------------------------------------------
# Crop and pad


def crop_is_acceptable(mask: np.ndarray, cat_max_ratio: float, ignore_index: int = IGNORE_INDEX) -> bool:
    """The reference's crop test on a uint8 mask (h, w): more than one non-ignored label value, and the most
    frequent one covers less than `cat_max_ratio` of the non-ignored pixels."""
    if mask.size < 2**24:  # OpenCV's histogram (3x faster than bincount) counts in float32: exact below 2^24
        counts = cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        counts = np.bincount(mask.reshape(-1), minlength=256)
    counts[ignore_index] = 0
    return int(np.count_nonzero(counts)) > 1 and int(counts.max()) < cat_max_ratio * int(counts.sum())


@dataclass(frozen=True)
class CatMaxRatioCrop:
    """Random crop of `crop_size` (h, w) (or the whole side when the image is smaller), retried up to
    `max_tries` times until `crop_is_acceptable` (recipe §5.1, step 2); after that the last try is kept,
    unless it holds no valid pixel: then the reference keeps the sample uncropped (`draw` returns None)."""

    crop_size: tuple[int, int]
    cat_max_ratio: float = 0.75
    max_tries: int = 10
    ignore_index: int = IGNORE_INDEX

    def draw(self, mask: np.ndarray) -> tuple[int, int, int, int] | None:
        """(top, left, height, width) of the crop of uint8 mask (H, W), or None for "keep it uncropped";
        positions drawn from torch's global generator (top, then left, per try)."""
        h, w = mask.shape
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        for _ in range(self.max_tries):
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
            crop = mask[top : top + ch, left : left + cw]
            if self.cat_max_ratio >= 1.0 or crop_is_acceptable(crop, self.cat_max_ratio, self.ignore_index):
                break
        else:
            if not (crop != self.ignore_index).any():
                return None
        return top, left, ch, cw


def centred_span(length: int, out_length: int) -> tuple[int, int, int]:
    """The reference's centred padding along one axis, as (start in the input, start in the output, length
    copied): (out_length - length) // 2 before, the rest after, negative amounts cropping (F.pad's rule).
    100 -> 128: (0, 14, 100); 601 -> 512: (45, 0, 512) (45 rows off the top, 44 off the bottom)."""
    before = (out_length - length) // 2
    return (0, before, length) if before >= 0 else (-before, 0, out_length)


def normalize_and_pad(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise uint8 (h, w, 3) RGB and centre it with its uint8 mask (h, w) in `size` (H, W) (recipe §5.1,
    steps 5 and 6): the image padded with 0 after normalisation, the mask with IGNORE_INDEX, larger sides
    centre-cropped (`centred_span`) -> (float32 (3, H, W), int64 (H, W)). Only the kept pixels are normalised,
    which gives the same values as normalising first."""
    (ys, yo, hh), (xs, xo, ww) = centred_span(mask.shape[0], size[0]), centred_span(mask.shape[1], size[1])
    padded = (hh, ww) != tuple(size)
    out_image = (np.zeros if padded else np.empty)((3, *size), dtype=np.float32)
    _normalize_into(image[ys : ys + hh, xs : xs + ww], out_image[:, yo : yo + hh, xo : xo + ww])
    out_mask = torch.full(size, IGNORE_INDEX, dtype=torch.int64)
    out_mask[yo : yo + hh, xo : xo + ww] = torch.from_numpy(mask[ys : ys + hh, xs : xs + ww])
    return torch.from_numpy(out_image), out_mask


# --------------------------------------------------------------------------------------------------------
# Pipelines


_opencv_threads_set = False


def _single_threaded_opencv_in_workers() -> None:
    """In a DataLoader worker process, turn OpenCV's own thread pool off (once per process).

    Workers are the parallelism already: an OpenCV pool per worker would oversubscribe the cores that the
    other workers and the training process need, and a pool inherited through fork from a parent that had
    used it can hang. The main process (workers=0, a notebook) keeps OpenCV's default.
    """
    global _opencv_threads_set
    if not _opencv_threads_set and get_worker_info() is not None:
        cv2.setNumThreads(0)
        _opencv_threads_set = True


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
        self.crop_size = tuple(crop_size)
        self.rescale = RandomRescale(tuple(base_size), tuple(scale_range))
        self.crop = CatMaxRatioCrop(self.crop_size, cat_max_ratio)
        self.distort = PhotoMetricDistortion()

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _single_threaded_opencv_in_workers()
        pixels, labels = image_array(image), mask_array(mask)
        size = self.rescale.draw_size(labels.shape)
        pixels, labels = resize_image(pixels, size), resize_mask(labels, size)
        window = self.crop.draw(labels)
        if window is not None:  # None: the reference's uncropped fallback, centre-cropped by `normalize_and_pad`
            top, left, h, w = window
            pixels, labels = pixels[top : top + h, left : left + w], labels[top : top + h, left : left + w]
        if float(torch.rand(1)) < 0.5:  # the flip draw of torchvision's RandomHorizontalFlip, as before
            pixels, labels = cv2.flip(pixels, 1), np.ascontiguousarray(labels[:, ::-1])
        pixels = self.distort(pixels, self.distort.draw())
        return normalize_and_pad(pixels, labels, self.crop_size)

    def __repr__(self) -> str:
        return f"TrainTransforms({self.rescale}, {self.crop}, flip p=0.5, {self.distort}, pad to {self.crop_size})"


class EvalTransforms:
    """(image uint8 (3, H, W), mask uint8 (H, W)) -> (image float32 (3, H', W') resized keeping the ratio to
    `base_size` and normalised, mask int64 (H, W) at the ORIGINAL size)."""

    def __init__(self, base_size: tuple[int, int]) -> None:
        self.base_size = tuple(base_size)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _single_threaded_opencv_in_workers()
        pixels = image_array(image)
        pixels = resize_image(pixels, keep_ratio_size(pixels.shape[:2], self.base_size))
        return normalize(pixels), mask.as_subclass(torch.Tensor).to(torch.int64).contiguous()

    def __repr__(self) -> str:
        return f"EvalTransforms(base_size={self.base_size})"


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
    "image_array",
    "mask_array",
    "normalize",
    "keep_ratio_size",
    "resize_image",
    "resize_mask",
    "RandomRescale",
    "CatMaxRatioCrop",
    "crop_is_acceptable",
    "centred_span",
    "normalize_and_pad",
    "TrainTransforms",
    "EvalTransforms",
    "train_transforms",
    "eval_transforms",
    "denormalize",
]
