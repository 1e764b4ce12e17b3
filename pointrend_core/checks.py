"""Checks of numeric inputs, shared by every entry point (the CLI, the workbook, the notebooks, the Python
API), so that a bad value gets the same sentence wherever it is given."""

from __future__ import annotations

from typing import Any


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
