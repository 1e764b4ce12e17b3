"""The PointRend network: `build_model(row)` gives the segmentor of a table row."""

from __future__ import annotations

from pointrend_core.config import RowConfig, get_row
from pointrend_core.model.pointrend import PointRend, PointRendOutput, Subdivision, SubdivisionStep, fuse_for_inference


def build_model(row: str | RowConfig) -> PointRend:
    """The randomly initialised segmentor of a table row, given by name (`"pointrend_r50_voc"`) or config."""
    cfg = get_row(row) if isinstance(row, str) else row
    return PointRend(cfg.model)


__all__ = ["build_model", "PointRend", "PointRendOutput", "Subdivision", "SubdivisionStep", "fuse_for_inference"]
