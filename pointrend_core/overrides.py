"""`--set section.field=value`: change any field of a row's recipe from the command line, typed and checked.

    --set data.crop_size=384,384 --set data.base_size=1024,768 --set data.scale_range=0.75,1.5
    --set schedule.lr=0.005 --set model.subdivision_num_points=4096 --set eval.flip=true

Sections are the row's `model`, `data`, `schedule` and `eval` (`config.py`). A value is parsed to the field's
own type: int, float, bool (true/false, yes/no, on/off, 1/0), str, a tuple (comma-separated, `384,384` or
`384x384`), one of a Literal's words, or `none` for an optional field. The changed row is validated by the
config classes' own checks, and records its overrides in `RowConfig.overrides` (normalised text, in order),
which every record of its runs carries: a run with overrides is never shown as the published row. The CLI's
shortcut options (`--crop H W`, `--batch-size N`) are spellings of the same overrides.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import replace
from typing import Any, Literal, Sequence

from pointrend_core.config import DataConfig, EvalConfig, ModelConfig, RowConfig, ScheduleConfig

SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "schedule": ScheduleConfig, "eval": EvalConfig}

FIXED = {
    ("data", "dataset"): "the layout comes from --dataset",
    ("model", "num_classes"): "the classes come from the dataset",
}
"""Fields that another option owns, with the reason given when one is set."""

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def fields_of(section: str) -> list[str]:
    """The field names `--set <section>.` accepts."""
    return [f.name for f in dataclasses.fields(SECTIONS[section]) if (section, f.name) not in FIXED]


def parse_override(text: str) -> tuple[str, str, Any]:
    """'data.crop_size=384,384' -> ('data', 'crop_size', (384, 384)); ValueError naming what is wrong."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot:
        raise ValueError(f"--set {text!r}: expected SECTION.FIELD=VALUE with SECTION one of {', '.join(SECTIONS)}")
    if section not in SECTIONS:
        raise ValueError(f"--set {text!r}: unknown section {section!r}; expected one of {', '.join(SECTIONS)}")
    if (section, name) in FIXED:
        raise ValueError(f"--set {text!r}: {section}.{name} cannot be set ({FIXED[(section, name)]})")
    hints = typing.get_type_hints(SECTIONS[section])
    if name not in fields_of(section):
        raise ValueError(f"--set {text!r}: {section} has no field {name!r}; its fields: {', '.join(fields_of(section))}")
    try:
        return section, name, _parse(raw.strip(), hints[name])
    except ValueError as error:
        raise ValueError(f"--set {text!r}: {section}.{name} takes {_describe(hints[name])}; {error}") from None


def apply_overrides(row: RowConfig, overrides: Sequence[str]) -> RowConfig:
    """`row` with every override applied in order (a later one of the same field wins), checked by the
    configs' own validation, and the overrides recorded in `row.overrides`."""
    if not overrides:
        return row
    sections = {name: getattr(row, name) for name in SECTIONS}
    recorded = list(row.overrides)
    for text in overrides:
        section, name, value = parse_override(text)
        try:
            sections[section] = replace(sections[section], **{name: value})
        except (ValueError, TypeError) as error:
            raise ValueError(f"--set {text!r}: {error}") from None
        normalised = f"{section}.{name}={format_value(value)}"
        recorded = [r for r in recorded if not r.startswith(f"{section}.{name}=")] + [normalised]
    try:
        return replace(row, **sections, overrides=tuple(recorded))
    except (ValueError, TypeError) as error:
        raise ValueError(f"--set {', '.join(overrides)}: {error}") from None


def format_value(value: Any) -> str:
    """The text `parse_override` reads back to `value` (tuples comma-separated, None as 'none')."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    return str(value)


def _parse(text: str, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(text, inner)
    if origin is Literal:
        if text not in args:
            raise ValueError(f"got {text!r}")
        return text
    if origin is tuple:
        parts = [p.strip() for p in text.lower().replace("x", ",").split(",") if p.strip()] if text else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"got {len(parts)} value(s) in {text!r}")
        return tuple(_parse(p, a) for p, a in zip(parts, args))
    if hint is bool:
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise ValueError(f"got {text!r}")
    if hint in (int, float):
        try:
            value = hint(text)
        except ValueError:
            raise ValueError(f"got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"got {text!r}")
        return value
    if hint is str:
        return text
    raise ValueError(f"this field's type {hint} cannot be set from text")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join([_describe(a) for a in inner] + ["none"])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        plural = {int: "integers", float: "numbers"}.get(args[0], "values")
        if len(args) == 2 and args[1] is Ellipsis:
            return f"comma-separated {plural}"
        return f"{len(args)} comma-separated {plural}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a text"}.get(hint, str(hint))


__all__ = ["SECTIONS", "apply_overrides", "parse_override", "format_value", "fields_of"]
