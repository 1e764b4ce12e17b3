"""Feature pyramid neck, in the reference's variant: BatchNorm and ReLU after every convolution.

Lateral 1x1 conv-BN-ReLU per level, a top-down pathway that adds each coarser lateral, resized with
nearest-neighbour interpolation to the finer level's size, then a 3x3 conv-BN-ReLU per level (reference
section 2.2). Note the ReLU sits on the laterals *before* the sum, and convolutions have no bias; this
differs from mmseg's default FPN, so its weights do not map 1:1.

Shapes: inputs [C2..C5] (B, c_i, H_i, W_i); outputs [P2..P5] (B, out_channels, H_i, W_i).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pointrend_core.model.backbone import conv_bn_relu


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Sequential(*conv_bn_relu(c, out_channels, 1)) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            nn.Sequential(*conv_bn_relu(out_channels, out_channels, 3)) for _ in in_channels
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            # The legacy "nearest" mode, size-based: the reference's choice (not nearest-exact).
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        return [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
