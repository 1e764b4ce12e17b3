"""ResNet-v1c backbone: a ResNet with a deep 3x3 stem, returning the four stage outputs.

v1c (Bag of Tricks for Image Classification, He et al. 2019, "ResNet-C") replaces the 7x7 stem convolution by
three 3x3 convolutions (32, 32, 64 channels). The residual stages are torchvision's own `BasicBlock` and
`Bottleneck` (stride on the 3x3 convolution), so the parameter names are those of torchvision and of the
open-mmlab `resnet*_v1c` ImageNet files: `stem.{0,1,3,4,6,7}`, `layerL.j.convN`, `layerL.j.bnN`,
`layerL.0.downsample.{0,1}`.

Output stride 32 is the published model. Output stride 16 or 8 replaces the stride of the last one or two
stages by dilation; as in torchvision and mmseg (`contract_dilation`), the first block of a dilated stage keeps
the previous dilation.

Shapes: input (B, 3, H, W); outputs C2..C5 with strides 4, 8, 16, 32 (at output stride 32), spatial size
ceil(H / 4) at stride 4 and ceil(./2) per further strided stage.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

# depth -> (block, blocks per stage)
ARCHITECTURES: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}

# output stride -> (stride, dilation) for stages 2, 3, 4 (stage 1 always has stride 1)
_STRIDES_AND_DILATIONS: dict[int, tuple[tuple[int, int], ...]] = {
    32: ((2, 1), (2, 1), (2, 1)),
    16: ((2, 1), (2, 1), (1, 2)),
    8: ((2, 1), (1, 2), (1, 4)),
}


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> list[nn.Module]:
    """Conv (no bias) + BatchNorm + ReLU as a flat list, for building Sequentials with reference indices."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _dilate(block: nn.Module, dilation: int) -> None:
    """Give a residual block's 3x3 convolutions `dilation` (and matching padding)."""
    for conv in block.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation, dilation)


def make_stage(
    block: type[BasicBlock] | type[Bottleneck],
    in_channels: int,
    planes: int,
    num_blocks: int,
    stride: int,
    dilation: int,
    first_dilation: int,
) -> nn.Sequential:
    """One residual stage; block 0 changes stride/channels through a 1x1 conv + BN shortcut."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
        )
    blocks = [block(in_channels, planes, stride, downsample)]
    blocks += [block(out_channels, planes) for _ in range(1, num_blocks)]
    for index, residual in enumerate(blocks):
        d = first_dilation if index == 0 else dilation
        if d > 1:
            _dilate(residual, d)
    return nn.Sequential(*blocks)


class ResNetV1c(nn.Module):
    """ResNet-v1c trunk (no pooling head). `forward` returns [C2, C3, C4, C5]."""

    def __init__(self, depth: int = 50, output_stride: int = 32) -> None:
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        if output_stride not in _STRIDES_AND_DILATIONS:
            raise ValueError(f"output_stride must be one of {sorted(_STRIDES_AND_DILATIONS)}, got {output_stride}")
        block, counts = ARCHITECTURES[depth]
        self.depth = depth
        self.stem = nn.Sequential(
            *conv_bn_relu(3, 32, 3, stride=2), *conv_bn_relu(32, 32, 3), *conv_bn_relu(32, 64, 3)
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stage_settings = ((1, 1),) + _STRIDES_AND_DILATIONS[output_stride]
        in_channels, previous_dilation = 64, 1
        self.out_channels: list[int] = []
        for index, ((stride, dilation), planes, num_blocks) in enumerate(zip(stage_settings, (64, 128, 256, 512), counts)):
            stage = make_stage(block, in_channels, planes, num_blocks, stride, dilation, previous_dilation)
            self.add_module(f"layer{index + 1}", stage)
            in_channels = planes * block.expansion
            previous_dilation = dilation
            self.out_channels.append(in_channels)
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.stem(x))
        outputs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            outputs.append(x)
        return outputs


def init_weights(module: nn.Module) -> None:
    """He-normal (fan_out) convolutions and unit/zero BatchNorm, as torchvision initialises ResNets."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
