"""`ExplorerWidget`: ipywidgets 8 controls wired to an `Explorer`; figures are rendered to PNG into
`ipywidgets.Image`s, so no widget backend for matplotlib is needed."""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as w
from IPython.display import display
from matplotlib.figure import Figure

from pointrend_core.workbook.explorer.display import (
    candidates_figure,
    figure_png,
    overview_figure,
    readout_html,
    steps_figure,
    summary_html,
    timing_text,
)
from pointrend_core.workbook.explorer.state import Explorer
from pointrend_core.workbook.explorer.views import MAX_STEPS



def _controls(w: Any, explorer: Explorer) -> dict[str, Any]:
    """The widgets that choose each setting, at the explorer's current values; slider ranges cover the
    model's own settings several times over (points up to 4x the row's, at least 16384)."""
    s, cfg = explorer.settings, explorer.model.cfg
    height, width = explorer.label_size()
    slider = dict(continuous_update=False, style={"description_width": "9em"}, layout=w.Layout(width="26em"))
    max_points = max(16384, 4 * cfg.subdivision_num_points, s.num_points)
    max_train_points = max(4 * cfg.train_num_points, s.train_num_points)
    return {
        "image": w.IntSlider(s.image_index, 0, max(explorer.num_images - 1, 0), description="image",
                             disabled=explorer.num_images < 2, **slider),
        "steps": w.IntSlider(s.steps, 0, max(MAX_STEPS, s.steps), description="subdivision steps", **slider),
        "num_points": w.IntSlider(s.num_points, 1, max_points, description="points per step", **slider),
        "train_num_points": w.IntSlider(s.train_num_points, 1, max_train_points, description="training N", **slider),
        "oversample_ratio": w.FloatSlider(s.oversample_ratio, min=1.0, max=max(10.0, s.oversample_ratio), step=0.5,
                                          description="oversample k", **slider),
        "importance_sample_ratio": w.FloatSlider(s.importance_sample_ratio, min=0.0, max=1.0, step=0.05,
                                                 description="importance β", **slider),
        "seed": w.BoundedIntText(s.seed, min=0, max=2**31 - 1, description="seed", style=slider["style"],
                                 layout=w.Layout(width="16em")),
        "row": w.IntSlider(0, 0, height - 1, description="pixel row", **slider),
        "col": w.IntSlider(0, 0, width - 1, description="pixel col", **slider),
    }


class ExplorerWidget:
    """ipywidgets controls and views of an `Explorer`. Display it (or its `.widget`) in a notebook.

    Controls (`controls[name]`): image (validation index), steps, points, N, k, beta, seed, pixel row and col.
    Views: `images["overview" | "steps" | "candidates"]` (PNG), `summary`, `readout`, `timing` (HTML), and
    `progress`. A change re-renders only what depends on it; `figures` holds the last drawn `Figure`s and
    `last_seconds` the wall time of the last update (computation and drawing), for tests and for the reader.
    """

    def __init__(self, explorer: Explorer, dpi: int = 85) -> None:
        self.explorer = explorer
        self.dpi = dpi
        self.controls: dict[str, Any] = _controls(w, explorer)
        for name, control in self.controls.items():
            control.add_class(f"pr-explorer-{name.replace('_', '-')}")
        self.images = {name: w.Image(format="png", layout=w.Layout(max_width="100%", align_self="flex-start"))
                       for name in ("overview", "steps", "candidates")}
        self.summary, self.readout, self.timing, self.status = w.HTML(), w.HTML(), w.HTML(), w.HTML()
        self.progress = w.IntProgress(0, 0, 1, description="", layout=w.Layout(width="16em"))
        for name in ("summary", "readout", "timing", "status"):
            getattr(self, name).add_class(f"pr-explorer-{name}")
        self.figures: dict[str, Figure] = {}
        self.last_seconds = 0.0
        self._syncing = False
        self.widget = self._layout(w)
        self._wire()
        explorer.progress = self._report
        self.refresh()

    # -- layout and wiring ----------------------------------------------------------------------------

    def _layout(self, w: Any) -> Any:
        c = self.controls
        inference = w.VBox([w.HTML("<b>inference</b>"), c["image"], c["steps"], c["num_points"]])
        training = w.VBox([w.HTML("<b>training-time candidates</b>"), c["train_num_points"], c["oversample_ratio"],
                           c["importance_sample_ratio"], c["seed"]])
        pixel = w.VBox([w.HTML("<b>pixel</b>"), c["row"], c["col"]])
        header = w.HBox([inference, training, pixel])
        status = w.HBox([self.progress, self.status])
        return w.VBox([
            header, status, self.summary, self.timing, self.images["overview"], self.images["steps"],
            self.readout, w.HTML("<b>Training-time point selection</b> (N, k, β above)"), self.images["candidates"],
        ])

    def _wire(self) -> None:
        for name in ("steps", "num_points", "train_num_points", "oversample_ratio", "importance_sample_ratio", "seed"):
            self.controls[name].observe(lambda change, n=name: self._changed(n, change), names="value")
        self.controls["image"].observe(lambda change: self._changed("image_index", change), names="value")
        for name in ("row", "col"):
            self.controls[name].observe(lambda change: self._pixel_changed(), names="value")

    def _ipython_display_(self) -> None:
        display(self.widget)

    # -- updates ----------------------------------------------------------------------------------------

    _DEPENDS = {
        "image_index": {"overview", "steps", "candidates", "readout"},
        "steps": {"overview", "steps", "readout"},
        "num_points": {"overview", "steps", "readout"},
        "train_num_points": {"candidates"},
        "oversample_ratio": {"candidates"},
        "importance_sample_ratio": {"candidates"},
        "seed": {"candidates"},
        "pixel": {"overview", "steps", "readout"},
    }

    def _changed(self, setting: str, change: dict[str, Any]) -> None:
        if not self._syncing:
            self._apply({setting: change["new"]}, self._DEPENDS[setting])

    def _pixel_changed(self) -> None:
        if not self._syncing:
            self._apply({"pixel": (self.controls["row"].value, self.controls["col"].value)}, self._DEPENDS["pixel"])

    def _apply(self, changes: dict[str, Any], parts: set[str]) -> None:
        """Update the settings and redraw; an error is shown in the status line (a widget callback's
        exception would otherwise only reach the browser's log)."""
        try:
            self.explorer.update(**changes)
            self.refresh(parts)
        except Exception as err:  # noqa: BLE001 - shown to the user, who can change the setting back
            message = html.escape(f"{type(err).__name__}: {err}")
            self.status.value = f"<span style='color: #b00'>{message}</span>"
            raise

    def _report(self, what: str, done: int, total: int) -> None:
        self.progress.max, self.progress.value = max(total, 1), done
        self.status.value = ("computing the backbone, FPN and coarse head…" if what == "features" and done < total
                             else f"subdivision step {done} of {total} done" if what == "step" else "")

    def _sync_pixel_controls(self) -> None:
        """Slider ranges follow the image's label size; their values follow the (possibly default) pixel."""
        height, width = self.explorer.label_size()
        row, col = self.explorer.pixel()
        self._syncing = True
        try:
            for name, size, value in (("row", height, row), ("col", width, col)):
                control = self.controls[name]
                if control.max != size - 1:
                    control.value = min(control.value, size - 1)
                    control.max = size - 1
                control.value = value
        finally:
            self._syncing = False

    def refresh(self, parts: set[str] | None = None) -> None:
        """Recompute and redraw `parts` (default: all) of "overview", "steps", "candidates", "readout"."""
        parts = parts or {"overview", "steps", "candidates", "readout"}
        start = time.perf_counter()
        explorer = self.explorer
        cached = explorer.has_features()
        features, view = explorer.features(), explorer.view()
        self._sync_pixel_controls()
        sample, pixel = features.sample, explorer.pixel()
        computed = time.perf_counter()
        self.status.value = "drawing…"
        draw = {
            "overview": lambda: overview_figure(sample, view, pixel, explorer.palette, explorer.classes),
            "steps": lambda: steps_figure(sample, view, pixel, explorer.palette),
            "candidates": lambda: candidates_figure(sample, features, explorer.candidates(), explorer.palette,
                                                    explorer.classes),
        }
        for name in sorted(parts & set(draw)):
            self.figures[name] = draw[name]()
            self.images[name].value = figure_png(self.figures[name], self.dpi)
        if "readout" in parts:
            self.readout.value = readout_html(explorer.readout(), explorer.classes)
        self.summary.value = summary_html(view, features)
        end = time.perf_counter()
        self.last_seconds = end - start
        timing = timing_text(view, features, cached, end - computed)
        self.timing.value = f"{timing} · update {self.last_seconds:.2f} s"
        self.status.value = "ready"


__all__ = ["ExplorerWidget"]
