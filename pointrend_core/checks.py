"""Checks of numeric inputs, shared by every entry point (the CLI, the workbook, the notebooks, the Python
API), so that a bad value gets the same sentence wherever it is given."""

from __future__ import annotations

from typing import Any, Mapping


def positive_int(name: str, value: Any, *, optional: bool = False) -> int | None:
    """`value` as an int >= 1 (None passes when `optional`); ValueError naming `name` otherwise."""
    return _int_at_least(name, value, 1, "a positive integer", optional)


def non_negative_int(name: str, value: Any, *, optional: bool = False) -> int | None:
    """`value` as an int >= 0 (None passes when `optional`); ValueError naming `name` otherwise."""
    return _int_at_least(name, value, 0, "an integer >= 0", optional)


def _int_at_least(name: str, value: Any, low: int, what: str, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}")
    return value


def check_max_images(max_images: Any) -> int | None:
    """The number of images to evaluate: None (all) or a positive integer."""
    return positive_int("max_images", max_images, optional=True)


COUNTS: dict[str, tuple[int, bool]] = {
    "max_iters": (1, True), "max_images": (1, True), "max_eval_images": (1, True), "batch_size": (1, True),
    "checkpoint_every": (1, True), "log_every": (1, False), "gpus": (1, False), "sweep_images": (1, False),
    "workers": (0, True), "seed": (0, False), "num_samples": (0, False), "image_index": (0, False),
}
"""The counts an entry point may take, by the name they have from the CLI to the notebooks: (lowest value,
whether None is allowed)."""


def check_counts(values: Mapping[str, Any]) -> None:
    """ValueError for the first of `values` (name -> value) that `COUNTS` knows and that is out of range."""
    for name, value in values.items():
        if name in COUNTS:
            low, optional = COUNTS[name]
            _int_at_least(name, value, low, "a positive integer" if low == 1 else "an integer >= 0", optional)
