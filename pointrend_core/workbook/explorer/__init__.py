"""The interactive explorer of PointRend's decisions on one image (`notebooks/explore.ipynb`).

Three layers, each usable without the next:

1. Pure computation, one view's numbers at a time: `image_features` (backbone, FPN and coarse head, run once
   per image), `refine_view` (the subdivision steps with their timings, the predictions at the label size and
   the per-image scores), `candidate_points` (the training-time selection), `pixel_readout` (one pixel's class
   probabilities and whether each step re-predicted it).
2. `Explorer`: the state, i.e. a model, an image source, the current `ExplorerSettings` (a frozen dataclass,
   replaced by `update`) and caches (features per image, the last view, the last candidates), so that changing
   the steps or points re-runs only `PointRend.refine`.
3. `ExplorerWidget`: ipywidgets 8 controls wired to an `Explorer`; figures are matplotlib `Figure` objects
   rendered to PNG into `ipywidgets.Image`s (no widget backend needed). `snapshot_html` renders the same
   state as static HTML, for a notebook executed by papermill (an HTML report shows no live widget).

Shapes: C classes; (H', W') the resized network input; (H, W) the label, i.e. the original image size;
h0 x w0 the stride-4 coarse grid; step i (1-based) works on h_i x w_i = (2^i h0) x (2^i w0). A pixel is
(row, col) in the label grid, where the scores are computed (as `engine.evaluate.predict` does: logits resized
bilinearly to (H, W), then argmax). The explorer shows one whole-image forward pass: a row evaluated with
sliding windows, several scales or flips is scored here without them.
"""

from __future__ import annotations

from pointrend_core.workbook.explorer.views import (
    ExplorerSettings,
    ExplorerView,
    ImageFeatures,
    MAX_STEPS,
    Pixel,
    PixelReadout,
    ProgressCallback,
    Scores,
    StepPixel,
    candidate_points,
    cell_centre,
    cell_of,
    default_pixel,
    file_sample,
    image_features,
    image_scores,
    label_prediction,
    pixel_of_cell,
    pixel_readout,
    refine_view,
    row_of_run,
)
from pointrend_core.workbook.explorer.state import Explorer
from pointrend_core.workbook.explorer.display import (
    candidates_figure,
    figure_png,
    overview_figure,
    readout_html,
    snapshot_html,
    steps_figure,
    summary_html,
    timing_text,
)
from pointrend_core.workbook.explorer.widget import ExplorerWidget

__all__ = [
    "Explorer",
    "ExplorerSettings",
    "ExplorerView",
    "ExplorerWidget",
    "ImageFeatures",
    "MAX_STEPS",
    "Pixel",
    "PixelReadout",
    "ProgressCallback",
    "Scores",
    "StepPixel",
    "candidate_points",
    "candidates_figure",
    "cell_centre",
    "cell_of",
    "default_pixel",
    "figure_png",
    "file_sample",
    "image_features",
    "image_scores",
    "label_prediction",
    "overview_figure",
    "pixel_of_cell",
    "pixel_readout",
    "readout_html",
    "refine_view",
    "row_of_run",
    "snapshot_html",
    "steps_figure",
    "summary_html",
    "timing_text",
]
