"""Settings with a closed set of values, checked from their ``Literal`` type.

A config field typed ``Literal["a", "b"]`` (or a tuple, or ``None``-able, of one) names
its choices once, in the type; `choices_of` reads them back and `check_choices` checks a
config instance against them, so that a bad value is refused where the config is built
(from the command line, a TOML file or Python) with the list of what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, Literal, Union


def choices_of(hint: Any) -> tuple[tuple[object, ...], bool] | None:
    """``(choices, is_sequence)`` of a ``Literal`` hint, also inside ``tuple[..., ...]`` or
    ``X | None``; None when the hint is not a closed set."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return typing.get_args(hint), False
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is not type(None):
                found = choices_of(arg)
                if found is not None:
                    return found
        return None
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            inner = choices_of(args[0])
            if inner is not None:
                return inner[0], True
    return None


@cache
def field_choices(cls: type) -> dict[str, tuple[tuple[object, ...], bool]]:
    """The closed-set fields of a dataclass, by name."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        found = choices_of(hints[f.name])
        if found is not None:
            out[f.name] = found
    return out


def bad_choice(value: object, choices: tuple[object, ...], is_sequence: bool) -> object | None:
    """The first value outside `choices` (None when all are allowed; None itself is)."""
    if value is None:
        return None
    values = value if is_sequence and isinstance(value, list | tuple) else (value,)
    for v in values:
        if v not in choices:
            return v
    return None


def check_value(name: str, value: object, cls: type, shown: str | None = None) -> None:
    """Raise ``ValueError`` when `value` is not a choice of field `name` of `cls`; the
    message names the setting `shown` (default: `name`), e.g. a command-line flag."""
    found = field_choices(cls).get(name)
    if found is None:
        return
    bad = bad_choice(value, *found)
    if bad is not None:
        allowed = ", ".join(str(c) for c in found[0])
        raise ValueError(f"{shown or name} must be one of {allowed}; got {bad!r}")


def check_choices(obj: object) -> None:
    """Check every closed-set field of a dataclass instance (call from ``__post_init__``)."""
    cls: type = type(obj)
    for name in field_choices(cls):
        check_value(name, getattr(obj, name), cls)
