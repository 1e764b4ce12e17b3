"""`Explorer`: the state of one exploration (a model, an image source, the current settings) and its caches, so
that changing the steps or points re-runs only `PointRend.refine`."""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pointrend_core.config import RowConfig, get_row
from pointrend_core.data.datasets import SegmentationDataset
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.model import PointRend
from pointrend_core.model.points import TrainingPoints
from pointrend_core.workbook import figures
from pointrend_core.workbook.analysis import EvalSample, eval_dataset, eval_sample, load_model, run_checkpoint

from pointrend_core.workbook.explorer.views import (
    ExplorerSettings,
    ExplorerView,
    ImageFeatures,
    Pixel,
    PixelReadout,
    ProgressCallback,
    candidate_points,
    default_pixel,
    file_sample,
    image_features,
    pixel_readout,
    refine_view,
    row_of_run,
)

# --------------------------------------------------------------------------------------------------------
# The state: model, image source, settings and caches


class Explorer:
    """A model, the images it is explored on (a validation split, or one prepared image), the current
    `settings`, and caches: features of the last `max_cached_images` images, the last view and candidates.

    Each accessor computes only what the settings it depends on changed: `features()` once per image,
    `view()` when the image, steps or points changed, `candidates()` when the image, N, k, beta or seed did.
    """

    def __init__(
        self,
        model: PointRend,
        row: RowConfig,
        *,
        dataset: SegmentationDataset | None = None,
        sample: EvalSample | None = None,
        settings: ExplorerSettings | None = None,
        max_cached_images: int = 8,
    ) -> None:
        if (dataset is None) == (sample is None):
            raise ValueError("an Explorer needs exactly one image source: a dataset or a sample")
        self.model = model.eval()
        self.row = row
        self.dataset = dataset
        self._sample = sample
        self.classes: tuple[str, ...] = tuple(
            getattr(dataset, "classes", None) or getattr(row.data.dataset, "CLASSES", None)
            or [f"class {i}" for i in range(model.num_classes)]
        )
        palette = getattr(dataset, "palette", None)
        if palette is None:
            palette = getattr(row.data.dataset, "PALETTE", None)
        self.palette = np.asarray(palette if palette is not None else figures.default_palette(model.num_classes),
                                  dtype=np.uint8)[: model.num_classes]
        self.progress: ProgressCallback | None = None
        self._max_cached = max(1, max_cached_images)
        self._features: OrderedDict[int, ImageFeatures] = OrderedDict()
        self._current: tuple[int, EvalSample] | None = None
        self._view: tuple[tuple, ExplorerView] | None = None
        self._candidates: tuple[tuple, TrainingPoints] | None = None
        self._settings = ExplorerSettings.of_model(model.cfg)
        self.update(**(vars(settings) if settings is not None else {}))

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike | None = None,
        *,
        config: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        data_root: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        image_path: str | os.PathLike | None = None,
        label_path: str | os.PathLike | None = None,
        **settings: Any,
    ) -> Explorer:
        """An explorer of a run folder (its row, as recorded, and the checkpoint its run.json evaluated, on
        the split it evaluated at `data_root`, default the recorded root), or of `config` and `checkpoint`
        (None: random weights). `image_path` explores that file instead of the split (`file_sample`).
        `settings` are initial `ExplorerSettings` values (None: the model's own)."""
        if run_dir is None and config is None:
            raise ValueError("pass a run folder (run_dir) or a row name (config) and a checkpoint")
        split = None
        if run_dir is not None:
            row = row_of_run(run_dir, config)
            record = RunFolder(run_dir).read_run()  # None for a run trained but not evaluated
            checkpoint = checkpoint or run_checkpoint(run_dir)
            if record is not None:
                if data_root is None and record.data.root and Path(record.data.root).is_dir():
                    data_root = record.data.root
                split = record.data.split
        else:
            row = get_row(config)
        model = load_model(row, checkpoint, device)
        initial = ExplorerSettings.of_model(model.cfg, **settings)
        if image_path is not None:
            return cls(model, row, sample=file_sample(row, image_path, label_path), settings=initial)
        return cls(model, row, dataset=eval_dataset(row, data_root, split), settings=initial)

    # -- settings --------------------------------------------------------------------------------------

    @property
    def settings(self) -> ExplorerSettings:
        return self._settings

    @property
    def num_images(self) -> int:
        return len(self.dataset) if self.dataset is not None else 1

    def update(self, **changes: Any) -> ExplorerSettings:
        """Replace some settings (validated); a new image resets the pixel to its default."""
        if "pixel" in changes and changes["pixel"] is not None:
            changes["pixel"] = tuple(int(v) for v in changes["pixel"])
        settings = replace(self._settings, **changes)
        if not 0 <= settings.image_index < self.num_images:
            raise IndexError(f"image index {settings.image_index} is outside the {self.num_images} images")
        if settings.image_index != self._settings.image_index and "pixel" not in changes:
            settings = replace(settings, pixel=None)
        self._settings = settings
        return settings

    # -- what the settings give --------------------------------------------------------------------------

    def sample(self) -> EvalSample:
        """The current image (the dataset's item `image_index`, or the one prepared image)."""
        if self.dataset is None:
            return self._sample
        index = self._settings.image_index
        if self._current is None or self._current[0] != index:
            features = self._features.get(index)
            self._current = (index, features.sample if features is not None else eval_sample(self.dataset, index))
        return self._current[1]

    def has_features(self) -> bool:
        """Whether the current image's features are cached (the next view runs only the subdivision)."""
        return self._settings.image_index in self._features

    def features(self) -> ImageFeatures:
        """The current image's features, computed on the first request and cached."""
        index = self._settings.image_index
        if index in self._features:
            self._features.move_to_end(index)
            return self._features[index]
        if self.progress is not None:
            self.progress("features", 0, 1)
        features = image_features(self.model, self.sample())
        if self.progress is not None:
            self.progress("features", 1, 1)
        self._features[index] = features
        while len(self._features) > self._max_cached:
            self._features.popitem(last=False)
        return features

    def view(self) -> ExplorerView:
        """The subdivision with the current steps and points (recomputed only when those or the image change)."""
        s = self._settings
        key = (s.image_index, s.steps, s.num_points)
        if self._view is None or self._view[0] != key:
            features = self.features()
            self._view = (key, refine_view(self.model, features, s.steps, s.num_points, self.row.eval, self.progress))
        return self._view[1]

    def candidates(self) -> TrainingPoints:
        """The training-time selection with the current N, k, beta and seed."""
        s = self._settings
        key = (s.image_index, s.train_num_points, s.oversample_ratio, s.importance_sample_ratio, s.seed)
        if self._candidates is None or self._candidates[0] != key:
            self._candidates = (key, candidate_points(self.features(), s))
        return self._candidates[1]

    def label_size(self) -> tuple[int, int]:
        return tuple(self.sample().gt.shape)

    def pixel(self) -> Pixel:
        """The chosen pixel, or `default_pixel` of the current view."""
        if self._settings.pixel is not None:
            return self._settings.pixel
        return default_pixel(self.view(), self.label_size())

    def readout(self) -> PixelReadout:
        return pixel_readout(self.model, self.features(), self.view(), self.pixel())
