"""The package's single ignore label (its own module so that the data code can import it without a cycle:
`config.py` imports the dataset classes and re-exports this constant)."""

from __future__ import annotations

IGNORE_INDEX = 255
"""The one ignore label inside the package. Datasets map their own void values to it when loading.

The reference uses -100 throughout; 255 is equivalent because every place that produces or consumes an
ignore value (dataset remap, crop check, padding fill, point labels, both losses, metrics) uses this constant.
255 lets masks stay uint8 through the augmentation pipeline.
"""
