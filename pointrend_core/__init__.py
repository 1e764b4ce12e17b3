"""pointrend_core: PointRend semantic segmentation, reproducing the sssegmentation model-zoo table.

    from pointrend_core import build_model, load_checkpoint
    model = build_model("pointrend_r50_voc")
    load_checkpoint(model, "pointrend_resnet50os32_voc.pth")
    out = model.eval()(images)      # out.logits (B, C, H, W), out.coarse_logits (B, C, H/4, W/4)
    fast = prepare_for_inference(model, precision="bf16")   # the same outputs, faster (docs/inference.md)
    masks = Predictor.from_run("runs/demo").predict(image)  # class indices at the image's size (docs/deploy.md)

The layers, bottom to top (each imports only those before it): `labels`, `files`, `checks`, `interrupts` ->
`data` -> `config`, `overrides` -> `model`, `checkpoints` -> `engine` -> `deploy`, `workbook`.
docs/architecture.md draws the data flow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ROWS": "pointrend_core.config",
    "RowConfig": "pointrend_core.config",
    "get_row": "pointrend_core.config",
    "build_model": "pointrend_core.model",
    "PointRend": "pointrend_core.model",
    "PointRendOutput": "pointrend_core.model",
    "fuse_for_inference": "pointrend_core.model",
    "prepare_for_inference": "pointrend_core.model.inference",
    "InferenceModel": "pointrend_core.model.inference",
    "load_checkpoint": "pointrend_core.checkpoints",
    "save_checkpoint": "pointrend_core.checkpoints",
    "Predictor": "pointrend_core.deploy",
    "RunFolder": "pointrend_core.engine.run_folder",
    "apply_overrides": "pointrend_core.overrides",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import pointrend_core.labels` (or the CLI's --help) does not load
    # torch, torchvision and PIL through this file.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pointrend_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
