"""pointrend_core: PointRend semantic segmentation, reproducing the sssegmentation model-zoo table.

    from pointrend_core import build_model, load_checkpoint
    model = build_model("pointrend_r50_voc")
    load_checkpoint(model, "pointrend_resnet50os32_voc.pth")
    out = model.eval()(images)      # out.logits (B, C, H, W), out.coarse_logits (B, C, H/4, W/4)
"""

from pointrend_core.checkpoints import load_checkpoint, save_checkpoint
from pointrend_core.config import ROWS, RowConfig, get_row
from pointrend_core.model import PointRend, PointRendOutput, build_model, fuse_for_inference

__all__ = [
    "ROWS",
    "RowConfig",
    "get_row",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
    "PointRend",
    "PointRendOutput",
    "fuse_for_inference",
]
