"""Using a trained model: `Predictor` (images -> masks at their own size), `predict_files` (the `predict`
command), `export_onnx` / `OnnxModel` (an ONNX graph with every subdivision point, run in ONNX Runtime).
docs/deploy.md describes the outputs, the ONNX graph and the measured agreement and speed.

Layering: deploy sits above `engine` (it reuses `engine.evaluate.predict` and the run records) and below the
CLI; nothing in the package imports it.
"""

from __future__ import annotations

from pointrend_core.deploy.folder import PredictSummary, predict_files
from pointrend_core.deploy.onnx import OnnxModel, check_agreement, export_onnx
from pointrend_core.deploy.predictor import Predictor, load_predictor
from pointrend_core.deploy.rows import palette_for, row_from_config

__all__ = ["OnnxModel", "PredictSummary", "Predictor", "check_agreement", "export_onnx", "load_predictor",
           "palette_for", "predict_files", "row_from_config"]
