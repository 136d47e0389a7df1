"""Rows as plain JSON data, and a page of a sorted, filtered table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from lookuplens.report.data import is_missing
from lookuplens.report.markup import Html

__all__ = ["Order", "Page", "contains", "first_explanation", "jsonable", "record", "sort_rows"]

Order = Literal["asc", "desc"]


def jsonable(value: object) -> object:
    """Plain JSON data: numpy and pandas scalars unwrapped, NaN and infinities as None,
    arrays as lists, mappings and sequences walked."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Html):
        return str(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        return x if math.isfinite(x) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if is_missing(value):
        return None
    return str(value)


def record(row: Mapping[str, object], drop: Sequence[str] = ()) -> dict[str, object]:
    out = jsonable({k: v for k, v in row.items() if k not in drop and not str(k).startswith("_")})
    assert isinstance(out, dict)
    return out


@dataclass(frozen=True)
class Page:
    """One page of a sorted, filtered table."""

    rows: list[dict[str, object]]
    total: int
    """Rows matching the filter (all pages)."""
    page: int
    per_page: int
    sort: str
    order: Order

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def contains(series: pd.Series, q: str) -> pd.Series:
    return series.fillna("").astype(str).str.lower().str.contains(q, regex=False)


def sort_rows(df: pd.DataFrame, sort: str, order: Order, tie: list[str]) -> pd.DataFrame:
    cols = [sort] + [c for c in tie if c != sort]
    asc = [order == "asc"] + [True] * (len(cols) - 1)
    return df.sort_values(cols, ascending=asc, na_position="last", kind="stable")


def first_explanation(rows: list[dict[str, object]], primary: tuple[str, str] | None) -> str | None:
    texts = [r for r in rows if isinstance(r.get("explanation"), str) and r.get("explanation")]
    if not texts:
        return None
    if primary is not None:
        texts.sort(key=lambda r: r.get("explainer") != primary[0])
    return str(texts[0]["explanation"])
