"""The two heads of PointRend for semantic segmentation.

`ScaleHeads` (Kirillov et al., Panoptic FPN): each pyramid level goes through conv-BN-ReLU blocks, each
followed by a 2x bilinear upsampling until stride 4, and the levels are summed; a 1x1 classifier (built by
the segmentor) turns the sum into the coarse logits at stride 4. `PointMLP` is the PointRend point head
without its classifier: 1x1 Conv1d-BN-ReLU layers over per-point features, with the coarse prediction at
the point concatenated again before every layer and after the last.

Both are `nn.ModuleList`s so that, registered on the segmentor as `scale_heads` and `fcs`, their parameter
names are exactly those of the released checkpoints (`scale_heads.2.2.0.weight`, `fcs.1.1.running_var`).

Shapes: B batch, C classes, N points, (h, w) = (ceil(H/4), ceil(W/4)) for an (H, W) input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointrend_core.model.backbone import conv_bn_relu


class ScaleHeads(nn.ModuleList):
    """Pyramid [P2..P5] (B, in_channels, H_i, W_i) -> merged features (B, head_channels, h, w) at stride 4."""

    def __init__(self, in_channels: int, head_channels: int, feature_strides: tuple[int, ...] = (4, 8, 16, 32)) -> None:
        super().__init__()
        for level, stride in enumerate(feature_strides):
            length = max(1, int(math.log2(stride) - math.log2(feature_strides[0])))
            blocks: list[nn.Module] = []
            for k in range(length):
                blocks.append(nn.Sequential(*conv_bn_relu(in_channels if k == 0 else head_channels, head_channels, 3)))
                if level > 0:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.append(nn.Sequential(*blocks))

    def forward(self, pyramid: list[Tensor]) -> Tensor:
        heads = list(self)
        merged = heads[0](pyramid[0])
        for head, level in zip(heads[1:], pyramid[1:]):
            # A no-op when H, W are multiples of 32; otherwise resamples e.g. 176 -> 171 rows, as the reference.
            merged = merged + F.interpolate(head(level), size=merged.shape[2:], mode="bilinear", align_corners=False)
        return merged


class PointMLP(nn.ModuleList):
    """Fine (B, fine_channels, N) and coarse (B, C, N) point features -> (B, channels + C, N), the input of
    the point classifier."""

    def __init__(self, fine_channels: int, num_classes: int, channels: int = 256, num_fcs: int = 3) -> None:
        super().__init__()
        in_channels = fine_channels
        for _ in range(num_fcs):
            self.append(
                nn.Sequential(
                    nn.Conv1d(in_channels + num_classes, channels, 1, bias=False),
                    nn.BatchNorm1d(channels),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = channels
        self.out_channels = in_channels + num_classes

    def forward(self, fine: Tensor, coarse: Tensor) -> Tensor:
        x = fine
        for fc in self:
            x = fc(torch.cat([x, coarse], dim=1))
        return torch.cat([x, coarse], dim=1)


def classifier(in_channels: int, num_classes: int, dims: int) -> nn.Sequential:
    """1x1 convolution with bias, at index 1 of a Sequential: index 0 stands for the reference's Dropout(p=0),
    so the keys are `decoder.1.*` / `auxiliary_decoder.1.*` as in the released checkpoints."""
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    return nn.Sequential(nn.Identity(), conv(in_channels, num_classes, 1))
