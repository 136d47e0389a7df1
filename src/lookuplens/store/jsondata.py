"""Plain JSON for run.json: conversion of configs, redaction of secrets, the canonical
form and its hash, and a readable diff of two configs."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from collections.abc import Mapping

__all__ = ["canonical_json", "config_diff", "config_sha256", "redact", "to_jsonable"]

_SECRET_SUFFIXES = ("api_key", "apikey", "token", "secret", "password")


def to_jsonable(obj: object) -> object:
    """Plain JSON data from configs: dataclasses, mappings, sequences, paths, enums, numpy
    scalars. Raises TypeError for anything else."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v) for v in items]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return to_jsonable(item())
    raise TypeError(f"cannot store a {type(obj).__name__} in run.json; convert it to plain data")


def _is_secret(key: str) -> bool:
    return key.lower().endswith(_SECRET_SUFFIXES)


def redact(config: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``config`` without secrets: keys ending in api_key, apikey, token, secret
    or password (case-insensitive) are dropped at every depth, also inside lists."""

    def walk(value: object) -> object:
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items() if not _is_secret(str(k))}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return value

    out = walk(config)
    assert isinstance(out, dict)
    return out


def canonical_json(obj: object) -> str:
    """Compact JSON with sorted keys: equal configs give equal strings."""
    return json.dumps(
        to_jsonable(obj),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def config_sha256(obj: object) -> str:
    """sha256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def _flatten(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict) and obj:
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def config_diff(old: object, new: object, limit: int = 5) -> str:
    a, b = _flatten(old), _flatten(new)
    missing = object()
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            fa = "(unset)" if va is missing else json.dumps(va)
            fb = "(unset)" if vb is missing else json.dumps(vb)
            changes.append(f"{key or '(value)'}: {fa} -> {fb}")
    more = f", and {len(changes) - limit} more" if len(changes) > limit else ""
    return "; ".join(changes[:limit]) + more
