"""The PointRend semantic segmentor (Kirillov et al., "PointRend: Image Segmentation as Rendering", CVPR 2020),
as built by the sssegmentation model zoo: ResNet-v1c -> FPN -> semantic-FPN coarse head at stride 4 -> point
head on P2 features and coarse logits.

- Training (`model(images, targets)`): returns the two weighted losses. The coarse logits are supervised densely
  (upsampled to the crop); the point head only at importance-sampled points (`sample_training_points`).
- Inference (`model(images)`): adaptive subdivision. Starting from the stride-4 coarse logits, `subdivision_steps`
  times: upsample 2x, find the `subdivision_num_points` most uncertain cells, and replace their logits by the
  point head's prediction from P2 features and the *original* coarse logits at the cell centres.

Parameter names equal those of the released sssegmentation checkpoints (`backbone_net.*`, `fpn_neck.*`,
`scale_heads.*`, `auxiliary_decoder.*`, `fcs.*`, `decoder.*`), so they load with no key mapping.

Shapes: B batch, C classes, input (B, 3, H, W), coarse (B, C, h, w) with h = ceil(H/4), w = ceil(W/4).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointrend_core.config import ModelConfig
from pointrend_core.labels import IGNORE_INDEX
from pointrend_core.model.backbone import ResNetV1c, init_weights
from pointrend_core.model.fpn import FPN
from pointrend_core.model.heads import PointMLP, ScaleHeads, classifier
from pointrend_core.model.points import point_sample, sample_training_points, top2_uncertainty, uncertain_points_on_grid


@dataclass(frozen=True)
class Subdivision:
    """Inference settings of the adaptive subdivision, to override a config's (`ModelConfig.subdivision_*`)."""

    steps: int
    num_points: int
    """Cells re-predicted per step."""


@dataclass
class SubdivisionStep:
    """What one inference subdivision step saw and chose (for figures and analysis).

    logits: (B, C, h, w) the 2x-upsampled prediction before the chosen points were replaced.
    uncertainty: (B, 1, h, w) its uncertainty (second-largest minus largest logit).
    point_indices: (B, n) indices into the flattened h*w grid (row * w + col).
    point_coords: (B, n, 2) (x, y) cell centres in [0, 1].
    """

    logits: Tensor
    uncertainty: Tensor
    point_indices: Tensor
    point_coords: Tensor


@dataclass
class PointRendOutput:
    """Inference output. `logits` (B, C, 4h, 4w) refined; `coarse_logits` (B, C, h, w); `steps` filled only
    when the forward pass was asked to `record_steps` (they hold full-size tensors)."""

    logits: Tensor
    coarse_logits: Tensor
    steps: list[SubdivisionStep] = field(default_factory=list)


class PointRend(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.num_classes < 2:
            raise ValueError(f"PointRend needs at least 2 classes (its uncertainty is a top-2 gap), got {cfg.num_classes}")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.backbone_net = ResNetV1c(cfg.depth, cfg.output_stride)
        self.fpn_neck = FPN(self.backbone_net.out_channels, cfg.fpn_channels)
        self.scale_heads = ScaleHeads(cfg.fpn_channels, cfg.scale_head_channels)
        self.auxiliary_decoder = classifier(cfg.scale_head_channels, cfg.num_classes, dims=2)
        self.fcs = PointMLP(cfg.fpn_channels, cfg.num_classes, cfg.point_head_channels, cfg.num_point_fcs)
        self.decoder = classifier(self.fcs.out_channels, cfg.num_classes, dims=1)
        init_weights(self)
        for head in (self.auxiliary_decoder[1], self.decoder[1]):
            # Small classifier weights start every class near equal odds (initial loss about ln C).
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) -> (P2 features (B, fpn_channels, h, w), coarse logits (B, C, h, w))."""
        pyramid = self.fpn_neck(self.backbone_net(images))
        coarse_logits = self.auxiliary_decoder(self.scale_heads(pyramid))
        return pyramid[0], coarse_logits

    def point_logits(self, fine_features: Tensor, coarse_logits: Tensor, points: Tensor) -> Tensor:
        """Point head at `points` (B, N, 2): P2 features and coarse logits sampled bilinearly -> (B, C, N)."""
        fine = point_sample(fine_features, points)
        coarse = point_sample(coarse_logits, points)
        return self.decoder(self.fcs(fine, coarse))

    def forward(
        self,
        images: Tensor,
        targets: Tensor | None = None,
        *,
        subdivision_steps: int | None = None,
        subdivision_num_points: int | None = None,
        record_steps: bool = False,
    ) -> dict[str, Tensor] | PointRendOutput:
        """With `targets` (B, H, W) int64: the training losses. Without: `PointRendOutput`, refined by
        `refine` with the given inference settings (None: the config's)."""
        fine_features, coarse_logits = self.features(images)
        if targets is not None:
            return self.losses(fine_features, coarse_logits, targets)
        return self.refine(fine_features, coarse_logits, subdivision_steps, subdivision_num_points, record_steps)

    def losses(self, fine_features: Tensor, coarse_logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Weighted losses: {"loss_aux": coarse CE on logits upsampled to the targets' size,
        "loss_point": CE of the point head at importance-sampled points}."""
        cfg = self.cfg
        with torch.no_grad():
            chosen = sample_training_points(
                coarse_logits.detach(), cfg.train_num_points, cfg.oversample_ratio, cfg.importance_sample_ratio
            ).points
        point_logits = self.point_logits(fine_features, coarse_logits, chosen)
        # Nearest sampling of float labels returns exact label values, the ignore label included.
        point_labels = point_sample(targets.unsqueeze(1).float(), chosen, mode="nearest")
        point_labels = point_labels.squeeze(1).long()
        upsampled = F.interpolate(coarse_logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        return {
            "loss_aux": cfg.aux_loss_weight * cross_entropy(upsampled, targets),
            "loss_point": cfg.point_loss_weight * cross_entropy(point_logits, point_labels),
        }

    def refine(
        self,
        fine_features: Tensor,
        coarse_logits: Tensor,
        steps: int | None = None,
        num_points: int | None = None,
        record_steps: bool = False,
    ) -> PointRendOutput:
        """Adaptive subdivision from the stride-4 coarse logits (B, C, h, w): `steps` times 2x (default
        `cfg.subdivision_steps`), re-predicting `num_points` cells per step (default
        `cfg.subdivision_num_points`). 0 steps return the coarse logits as the refined ones."""
        steps = self.cfg.subdivision_steps if steps is None else steps
        num_points = self.cfg.subdivision_num_points if num_points is None else num_points
        if steps < 0 or num_points < 1:
            raise ValueError(f"subdivision needs steps >= 0 and num_points >= 1, got {steps} and {num_points}")
        refined = coarse_logits
        recorded: list[SubdivisionStep] = []
        for _ in range(steps):
            refined, step = self.subdivide(refined, fine_features, coarse_logits, num_points, record=record_steps)
            if record_steps:
                recorded.append(step)
        return PointRendOutput(refined, coarse_logits, recorded)

    def subdivide(
        self, logits: Tensor, fine_features: Tensor, coarse_logits: Tensor, num_points: int, record: bool = True
    ) -> tuple[Tensor, SubdivisionStep]:
        """One subdivision step: logits (B, C, h, w) -> (B, C, 2h, 2w) with the `num_points` most uncertain
        cells re-predicted by the point head. The step's `SubdivisionStep.logits` is the upsampled map before
        the update when `record`; otherwise the update is written into it in place (no copy of the map: the
        fast path at large sizes), and it is the refined map itself."""
        # Contiguous NCHW whatever the input layout: top-k breaks near-ties by memory order, and channels-last
        # would otherwise pick other points than the plain model.
        upsampled = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False).contiguous()
        batch, channels, height, width = upsampled.shape
        with torch.no_grad():  # only chooses cells; top2_uncertainty streams rows (16x faster than topk over C)
            uncertainty_map = top2_uncertainty(upsampled)
        indices, coords = uncertain_points_on_grid(uncertainty_map, num_points)
        # Coarse point features come from the original stride-4 logits, never the refined map (recipe §3.1).
        point_logits = self.point_logits(fine_features, coarse_logits, coords).to(upsampled.dtype)
        refined = upsampled.clone() if record else upsampled
        refined.view(batch, channels, height * width).scatter_(
            2, indices.unsqueeze(1).expand(-1, channels, -1), point_logits
        )
        return refined, SubdivisionStep(upsampled, uncertainty_map, indices, coords)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean softmax cross-entropy over non-ignored elements; logits (B, C, ...) and targets (B, ...).

    Zero (still attached to the graph) when every element is ignored, where the plain mean would be NaN:
    a crop of pure void must not stop a run as if it diverged.
    """
    if not (targets != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


def fuse_for_inference(model: PointRend) -> PointRend:
    """A copy of `model` for inference with every BatchNorm folded into the convolution before it.

    Outputs match the unfused model in eval mode within float rounding (about 1e-5 relative in float32).
    Every BatchNorm kind is folded (BatchNorm2d, SyncBatchNorm, the CPU sync one of distributed training):
    in eval mode each is the same affine map of its running statistics.
    The copy's state dict has no BatchNorm entries: keep the original for saving and loading.
    """
    fused = copy.deepcopy(model).eval()
    for parent in fused.modules():
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            if isinstance(conv, (nn.Conv1d, nn.Conv2d)) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                parent._modules[first] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                parent._modules[second] = nn.Identity()
        # torchvision's residual blocks name their pairs convN/bnN rather than placing them side by side.
        for index in (1, 2, 3):
            conv, bn = getattr(parent, f"conv{index}", None), getattr(parent, f"bn{index}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                setattr(parent, f"conv{index}", torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
                setattr(parent, f"bn{index}", nn.Identity())
    return fused
