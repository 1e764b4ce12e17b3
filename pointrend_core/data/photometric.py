"""The reference's photometric distortion (recipe §5.1, step 4) on uint8 (H, W, 3) RGB arrays, value for value.

Per op, in the reference's order: brightness (p 0.5, + U(-32, 32)); mode = randint(2); contrast first if
mode == 1 (p 0.5, x U(0.5, 1.5)); saturation (p 0.5, HSV S x U(0.5, 1.5)); hue (p 0.5, H += randint(-18, 18),
i.e. -18..17, mod 180); contrast last if mode == 0.

How each op equals the reference's:
* Brightness, contrast and the S scaling are the reference's `convert`: float32(v) * alpha + beta (numpy
  float32 arithmetic: the Python-float factors act as float32), clipped to [0, 255], truncated to uint8. The
  result depends on the uint8 value alone, so it is computed once for all 256 values (`convert_table`) and
  applied with `cv2.LUT`: the same numbers, one table look-up per pixel.
* The HSV edits go through OpenCV's own 8-bit conversions. The reference holds BGR arrays and converts
  them with COLOR_RGB2HSV / COLOR_HSV2RGB, so its "red" is the blue channel (recipe §9). This package holds
  RGB arrays: COLOR_BGR2HSV / COLOR_HSV2BGR on them read and write the same channel as "red" (OpenCV
  implements both codes with one routine and a swapped channel index), which gives the reference's numbers
  without reversing the array twice.
* Saturation and hue are two separate HSV round trips, as in the reference (merging them would round
  differently).

Randomness comes from torch's global generator (`PhotoMetricDistortion.draw`), so `torch.manual_seed(s)`
fixes a sample's decisions; the draws are made in the reference's order.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of the distortion: each op's factor, or None when that op is skipped."""

    brightness: float | None = None
    """Added to every value (the reference's beta)."""
    contrast_first: float | None = None
    """Contrast factor applied after brightness (mode 1)."""
    saturation: float | None = None
    """Factor on cv2's 8-bit HSV saturation."""
    hue: int | None = None
    """Shift of cv2's 8-bit hue (units of 2 degrees), mod 180."""
    contrast_last: float | None = None
    """Contrast factor applied after the HSV edits (mode 0)."""


def convert_table(alpha: float = 1, beta: float = 0) -> np.ndarray:
    """The reference's `convert` for every uint8 value: uint8 (256,) with entry v = trunc(clip(float32(v) *
    alpha + beta, 0, 255)), computed with the reference's own numpy expression and defaults."""
    values = np.arange(256, dtype=np.uint8).astype(np.float32) * alpha + beta
    return np.clip(values, 0, 255).astype(np.uint8)


def hue_table(delta: int) -> np.ndarray:
    """uint8 (256,): the reference's hue edit (h as int + delta) mod 180 for every 8-bit hue value h."""
    return ((np.arange(256, dtype=np.int64) + delta) % 180).astype(np.uint8)


_IDENTITY = np.arange(256, dtype=np.uint8)


def _edit_hsv_channel(image: np.ndarray, channel: int, table: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> HSV as the reference computes it on its BGR copy, channel `channel` (0 = H,
    1 = S) mapped through `table`, -> back to RGB uint8 (H, W, 3), a new array."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)  # on RGB data: the reference's RGB2HSV on BGR data
    tables = np.stack([table if c == channel else _IDENTITY for c in range(3)], axis=-1)[None]  # (1, 256, 3)
    cv2.LUT(hsv, tables, dst=hsv)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _randint2() -> bool:
    return bool(torch.randint(0, 2, ()))


def _uniform(lo: float, hi: float) -> float:
    return float(torch.rand((), dtype=torch.float64)) * (hi - lo) + lo


@dataclass(frozen=True)
class PhotoMetricDistortion:
    """The reference's PhotoMetricDistortion with its defaults (see the module docstring)."""

    brightness_delta: int = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    def draw(self) -> PhotometricParams:
        """Draw the ops' decisions and factors from torch's global generator, in the reference's order."""
        brightness = _uniform(-self.brightness_delta, self.brightness_delta) if _randint2() else None
        mode = int(torch.randint(0, 2, ()))
        contrast_first = _uniform(*self.contrast_range) if mode == 1 and _randint2() else None
        saturation = _uniform(*self.saturation_range) if _randint2() else None
        hue = int(torch.randint(-self.hue_delta, self.hue_delta, ())) if _randint2() else None
        contrast_last = _uniform(*self.contrast_range) if mode == 0 and _randint2() else None
        return PhotometricParams(brightness, contrast_first, saturation, hue, contrast_last)

    def __call__(self, image: np.ndarray, params: PhotometricParams) -> np.ndarray:
        """uint8 (H, W, 3) RGB -> uint8 (H, W, 3) RGB distorted by `params` (`image` itself when every op is
        skipped, otherwise a new array; `image` is never written)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"photometric distortion expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        # Consecutive value-wise ops compose into one table (table2[table1] = the two ops in turn).
        pending: np.ndarray | None = None
        if params.brightness is not None:
            pending = convert_table(beta=params.brightness)
        if params.contrast_first is not None:
            pending = _then(pending, convert_table(alpha=params.contrast_first))
        if params.saturation is not None or params.hue is not None:
            image, pending = _apply(image, pending), None
        if params.saturation is not None:
            image = _edit_hsv_channel(image, 1, convert_table(alpha=params.saturation))
        if params.hue is not None:
            image = _edit_hsv_channel(image, 0, hue_table(params.hue))
        if params.contrast_last is not None:
            pending = _then(pending, convert_table(alpha=params.contrast_last))
        return _apply(image, pending)


def _then(first: np.ndarray | None, second: np.ndarray) -> np.ndarray:
    return second if first is None else second[first]


def _apply(image: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    return image if table is None else cv2.LUT(image, table)


__all__ = ["PhotometricParams", "PhotoMetricDistortion", "convert_table", "hue_table"]
