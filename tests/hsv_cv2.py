"""cv2's 8-bit RGB <-> HSV conversions in torch: the plain reading of the reference's photometric distortion,
the oracle that `pointrend_core.data.transforms.scale_saturation_` and `shift_hue` are tested against
(test-only: the package computes the same edits directly in RGB)."""

from __future__ import annotations

import torch


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 255] and truncate, like the reference's `np.clip(...).astype(np.uint8)`."""
    return x.clamp_(0, 255).to(torch.uint8)


def rgb_to_hsv_cv2(
    image: torch.Tensor, swap_rb: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cv2.COLOR_RGB2HSV on uint8 data: (3, H, W) -> (h in [0, 180), s in [0, 255], v in [0, 255]) as float32
    (H, W) tensors holding integers (cv2's 8-bit ranges, each rounded half up).

    `swap_rb=True` reads channel 2 as red and channel 0 as blue, i.e. converts the channel-reversed image
    (the reference's RGB2HSV-on-BGR quirk) without copying it.
    """
    r, g, b = image.to(torch.float32).unbind(0)
    if swap_rb:
        r, b = b, r
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    s = (diff * 255.0).div_(v.clamp(min=1.0)).add_(0.5).floor_()  # v == 0 implies diff == 0, so s = 0
    # Sector by the channel holding the maximum, with cv2's priority R, then G, then B; grey pixels get 0.
    numerator = torch.where(v == g, torch.sub(b, r).add_(diff, alpha=2.0), torch.sub(r, g).add_(diff, alpha=4.0))
    numerator = torch.where(v == r, torch.sub(g, b), numerator)
    h = numerator.mul_(30.0).div_(diff.clamp(min=1.0)).add_(0.5).floor_()
    h = h.add_((h < 0).to(torch.float32).mul_(180.0))  # red sector: negative angles wrap to 150..179
    return h, s, v


_CHANNEL_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def hsv_to_rgb_cv2(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor, swap_rb: bool = False) -> torch.Tensor:
    """cv2.COLOR_HSV2RGB on 8-bit ranges (h in [0, 180), s, v in [0, 255]; float (H, W) each) -> uint8
    (3, H, W), rounding to nearest; `swap_rb=True` writes the result channel-reversed (see `rgb_to_hsv_cv2`).

    Closed form of the six-sector formula: channel c = v - v * s * clamp(min(k, 4 - k), 0, 1) with
    k = (n_c + h / 30) mod 6 and n = (5, 3, 1) for (R, G, B).
    """
    offsets = _CHANNEL_OFFSETS.flip(0) if swap_rb else _CHANNEL_OFFSETS
    k = offsets + (h / 30.0).unsqueeze(0)  # (3, H, W) in [n, n + 6)
    k = k.sub_((k >= 6.0).to(torch.float32).mul_(6.0))  # mod 6 (a float remainder is several times slower)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    rgb = ramp.mul_(v * s / -255.0).add_(v)  # divisions keep exact halves exact
    return _to_uint8(rgb.add_(0.5).floor_())
