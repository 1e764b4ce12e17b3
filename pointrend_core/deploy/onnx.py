"""ONNX export of a PointRend with its whole adaptive subdivision, and running the exported file in ONNX Runtime.

The graph: input `image` float32 (N, 3, H, W), normalised as the model takes it (`data.transforms`), with N, H
and W dynamic; outputs `logits` (N, C, 4h, 4w), the refined logits of `model(image).logits`, and
`coarse_logits` (N, C, h, w), h = ceil(H / 4), w = ceil(W / 4). Every subdivision step is in the graph as the
model runs it (`ExportForward`): a 2x bilinear Resize, the top-2 gap over classes (TopK), a TopK over the
flattened h*w uncertainty map for k = min(num_points, h*w) -- a Min of the configured point count and the
map's runtime size, so the graph runs at sizes smaller than the point count --, the cell centres computed
from the indices, GridSample of P2 features and coarse logits at them, the point head (1-D convolutions) and
a ScatterElements of the point logits back into the map. Nothing is capped: a table row re-predicts 8196
cells per step, two steps, at any size.

Export uses `torch.onnx.export(dynamo=True)` (torch.export + onnxscript). The row the model was trained as is
stored in the file's metadata (`pointrend_core.row`), so `predict --onnx` needs no other file.

Agreement with torch: the two runtimes round convolutions differently (about 1e-6 relative in float32), so
where two cells' uncertainties are tied within that rounding at the k-th place, one runtime may re-predict
one cell and the other its neighbour; those cells then differ by the point head's correction, elsewhere the
logits agree to float rounding. `check_agreement` measures both (docs/deploy.md).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointrend_core.config import RowConfig
from pointrend_core.deploy.rows import row_from_config, row_to_json
from pointrend_core.files import atomic_write_bytes
from pointrend_core.model.pointrend import PointRend, PointRendOutput
from pointrend_core.model.points import coordinate_dtype, uncertainty

ROW_METADATA = "pointrend_core.row"
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "coarse_logits")
DEFAULT_OPSET = 18
DEFAULT_CHECK_SIZES: tuple[tuple[int, int], ...] = ((37, 53), (255, 321), (1031, 2053))
"""(H, W) validated by `export`: odd, smaller than the point count (37 x 53 -> 40 x 56 = 2240 cells at the
last step), and larger than 1024 x 2048."""


class ExportForward(nn.Module):
    """`model(images)` in eval mode as traceable ops: images (N, 3, H, W) -> (refined logits, coarse logits).

    The same arithmetic as `PointRend.refine` / `subdivide` and `points.uncertain_points_on_grid`, op for op,
    except that the column of a flat index is `index - row * width` instead of `index % width` (the exporter
    has no remainder by a dynamic size); both are exact integer arithmetic, so the results equal the model's
    bit for bit in one process (tests/test_onnx_export.py checks it).
    """

    def __init__(self, model: PointRend) -> None:
        super().__init__()
        self.model = model.eval()
        self.steps = model.cfg.subdivision_steps
        self.num_points = model.cfg.subdivision_num_points

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        fine_features, coarse_logits = self.model.features(images)
        refined = coarse_logits
        for _ in range(self.steps):
            refined = self.subdivide(refined, fine_features, coarse_logits)
        return refined, coarse_logits

    def subdivide(self, logits: Tensor, fine_features: Tensor, coarse_logits: Tensor) -> Tensor:
        upsampled = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
        batch, channels, height, width = upsampled.shape
        flat_uncertainty = uncertainty(upsampled).reshape(batch, height * width)
        indices = flat_uncertainty.topk(min(self.num_points, height * width), dim=1).indices
        rows = torch.div(indices, width, rounding_mode="floor")
        cols = indices - rows * width
        dtype = coordinate_dtype(upsampled)
        x_step, y_step = 1.0 / width, 1.0 / height
        coords = torch.stack([x_step / 2.0 + cols.to(dtype) * x_step, y_step / 2.0 + rows.to(dtype) * y_step], dim=2)
        point_logits = self.model.point_logits(fine_features, coarse_logits, coords).to(upsampled.dtype)
        return (
            upsampled.reshape(batch, channels, height * width)
            .scatter(2, indices.unsqueeze(1).expand(-1, channels, -1), point_logits)
            .reshape(batch, channels, height, width)
        )


def export_onnx(model: PointRend, row: RowConfig, out: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` (left in eval mode) as an ONNX file at `out` (atomically) with `row` in its metadata."""
    import onnx

    forward = ExportForward(model).eval()
    batch, height, width = (torch.export.Dim(name, min=lo, max=hi)
                            for name, lo, hi in (("batch", 1, 64), ("height", 16, 8192), ("width", 16, 8192)))
    example = torch.randn(2, 3, 64, 96)  # batch 2: torch.export specialises a dimension of size 1
    with torch.no_grad():
        program = torch.onnx.export(
            forward, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), dynamic_shapes={"images": {0: batch, 2: height, 3: width}},
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {ROW_METADATA: row_to_json(row)})
    onnx.checker.check_model(proto, full_check=True)
    return atomic_write_bytes(out, proto.SerializeToString())


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(f"device {device!r}: this onnxruntime has no CUDA provider "
                             f"(available: {', '.join(ort.get_available_providers())}); use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An exported PointRend in ONNX Runtime, called like the model in eval mode: `onnx_model(images)` ->
    `PointRendOutput` (float32 torch tensors on the CPU), so `engine.evaluate.predict` runs it unchanged.

    `row` is the row stored in the file by `export_onnx`. `device` "cpu" (CPU provider) or "cuda".
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu") -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist; expected a file written by `export`")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=_providers(device))
        except Exception as error:  # onnxruntime raises its own exception kinds for a bad file
            raise ValueError(f"cannot load ONNX file {path} ({error}); expected a file written by `export`") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if ROW_METADATA not in metadata:
            raise ValueError(f"ONNX file {path} has no {ROW_METADATA!r} metadata; expected a file written by "
                             "`python -m pointrend_core export`")
        self.row = row_from_config(json.loads(metadata[ROW_METADATA]), f"{path} metadata")
        self.path = path

    def __call__(self, images: Tensor) -> PointRendOutput:
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        refined, coarse = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return PointRendOutput(torch.from_numpy(refined), torch.from_numpy(coarse))


@dataclass(frozen=True)
class Agreement:
    """ONNX Runtime against the torch model at one input size, on the refined logits (and the coarse ones).

    `argmax_agreement`: fraction of pixels whose class is the same. `max_abs_diff`: the largest logit
    difference anywhere (large where a near-tied point choice differed). `differing_cells`: fraction of
    logits differing by more than `cell_tolerance` (the cells one runtime re-predicted and the other did not).
    """

    size: tuple[int, int]
    argmax_agreement: float
    max_abs_diff: float
    differing_cells: float
    coarse_max_abs_diff: float
    torch_seconds: float
    onnx_seconds: float

    def describe(self) -> str:
        h, w = self.size
        return (f"{h}x{w}: argmax agreement {100 * self.argmax_agreement:.4f}%, max |logit diff| "
                f"{self.max_abs_diff:.2e} ({100 * self.differing_cells:.4f}% of logits differ by > {CELL_TOLERANCE:g}; "
                f"coarse {self.coarse_max_abs_diff:.2e}); torch {self.torch_seconds:.2f} s, "
                f"onnxruntime {self.onnx_seconds:.2f} s")


CELL_TOLERANCE = 1e-3
"""A logit difference above this is a different point choice, not float rounding (which stays near 1e-5)."""


def check_agreement(model: PointRend, onnx_model: OnnxModel, sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
                    seed: int = 0) -> list[Agreement]:
    """Run `model` (eval mode) and `onnx_model` on one seeded random image (1, 3, H, W) per size; compare."""
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    results = []
    for height, width in sizes:
        image = torch.randn(1, 3, height, width, generator=generator)
        start = time.perf_counter()
        with torch.inference_mode():
            expected = model(image)
        middle = time.perf_counter()
        got = onnx_model(image)
        end = time.perf_counter()
        if got.logits.shape != expected.logits.shape:
            raise ValueError(f"ONNX file {onnx_model.path} gives logits {tuple(got.logits.shape)} at {height}x{width}, "
                             f"the model {tuple(expected.logits.shape)}")
        diff = (got.logits - expected.logits).abs()
        results.append(Agreement(
            size=(height, width),
            argmax_agreement=(got.logits.argmax(1) == expected.logits.argmax(1)).double().mean().item(),
            max_abs_diff=diff.max().item(),
            differing_cells=(diff > CELL_TOLERANCE).double().mean().item(),
            coarse_max_abs_diff=(got.coarse_logits - expected.coarse_logits).abs().max().item(),
            torch_seconds=middle - start,
            onnx_seconds=end - middle,
        ))
    return results


__all__ = ["Agreement", "CELL_TOLERANCE", "DEFAULT_CHECK_SIZES", "DEFAULT_OPSET", "ExportForward", "OnnxModel",
           "ROW_METADATA", "check_agreement", "export_onnx"]
