"""Small HTML building blocks: escaping, number formatting, tables, key-value lists.

Text is escaped unless it is wrapped in `Html` (markup the report built itself).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

__all__ = ["Html", "cell", "esc", "fmt", "generic", "kv", "note", "numbers", "table"]


class Html(str):
    """A string of markup, inserted as it is (every other value is escaped)."""


def esc(value: object) -> str:
    """`value` as escaped text."""
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 3) -> str:
    """Numbers for people: ``-`` for missing, thousands separators, 3 significant
    decimals, scientific notation for tiny values."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()  # type: ignore[union-attr]
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "\u2013"
        if math.isinf(value):
            return "\u221e" if value > 0 else "\u2212\u221e"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10 ** (-digits):
            return f"{value:.{digits}f}"
        return f"{value:.2e}"
    return str(value)


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return hasattr(value, "item") and getattr(value, "ndim", 1) == 0 and not isinstance(value, str)


def cell(value: object, digits: int = 3) -> str:
    """A value ready for a table cell."""
    if isinstance(value, Html):
        return str(value)
    return esc(fmt(value, digits))


def table(
    headers: Sequence[str | Html],
    rows: Sequence[Sequence[object]],
    cls: str = "",
    digits: int = 3,
) -> Html:
    """A table; numeric cells are right-aligned and carry their exact value in ``data-v``
    (for sorting). `cls` ``sortable`` lets the optional script sort by a column."""
    numeric = [
        bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]
    out = [f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>']
    for h, num in zip(headers, numeric, strict=True):
        cls_attr = ' class="num"' if num else ""
        out.append(f"<th{cls_attr}>{cell(h)}</th>")
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>")
        for v, num in zip(r, numeric, strict=True):
            if num and v is not None and not isinstance(v, Html):
                x = float(v)  # type: ignore[arg-type]
                dv = f' data-v="{x!r}"' if math.isfinite(x) else ""
                out.append(f'<td class="num"{dv}>{cell(v, digits)}</td>')
            else:
                out.append(f"<td>{cell(v, digits)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return Html("".join(out))


def kv(items: Sequence[tuple[str, object]], digits: int = 3) -> Html:
    """A definition list of (label, value) rows."""
    parts = ['<dl class="kv">']
    for k, v in items:
        parts.append(f"<dt>{esc(k)}</dt><dd>{cell(v, digits)}</dd>")
    parts.append("</dl>")
    return Html("".join(parts))


def numbers(items: Sequence[tuple[str, object]]) -> Html:
    """Key numbers as tiles."""
    parts = ['<div class="numbers">']
    for k, v in items:
        parts.append(
            f'<div class="number"><div class="v">{cell(v)}</div><div class="k">{esc(k)}</div></div>'
        )
    parts.append("</div>")
    return Html("".join(parts))


def note(text: str, warn: bool = False) -> Html:
    """A muted remark (or a highlighted warning)."""
    return Html(f'<p class="{"warn" if warn else "note"}">{esc(text)}</p>')


def _compact(value: object) -> object:
    """A nested value for a table cell: ``k: v, ...`` for a mapping, joined for a list."""
    if isinstance(value, Mapping):
        if not value:
            return None
        return ", ".join(f"{k}: {fmt(_compact(v))}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(fmt(_compact(v)) for v in value) if value else None
    return value


def _columns(records: Sequence[Mapping[str, object]]) -> list[str]:
    cols: list[str] = []
    for r in records:
        for c in r:
            if str(c) not in cols:
                cols.append(str(c))
    return cols


def _records_table(labels: Sequence[str] | None, records: Sequence[Mapping[str, object]]) -> Html:
    cols = _columns(records)
    rows = [[_compact(r.get(c)) for c in cols] for r in records]
    if labels is None:
        return table(cols, rows)
    return table(["", *cols], [[lab, *row] for lab, row in zip(labels, rows, strict=True)])


def generic(obj: object) -> Html:
    """Any JSON-like value as HTML. A mapping of mappings (or of mappings of mappings)
    becomes a table with a row per inner mapping; a list of mappings a table; other
    mappings a key-value list (nested values rendered the same way); a list of scalars
    text."""
    if isinstance(obj, Mapping):
        if not obj:
            return Html("<em>empty</em>")
        values = list(obj.values())
        if all(isinstance(v, Mapping) and v for v in values):
            inner = [x for v in values for x in v.values()]  # type: ignore[union-attr]
            if all(isinstance(x, Mapping) and x for x in inner):
                labels = [f"{k} \u00b7 {k2}" for k, v in obj.items() for k2 in v]  # type: ignore[union-attr]
                return _records_table(labels, inner)  # type: ignore[arg-type]
            if not any(
                isinstance(x, Mapping) and any(isinstance(y, Mapping) for y in x.values())
                for x in inner
            ):
                return _records_table([str(k) for k in obj], values)  # type: ignore[arg-type]
        items = []
        for k, v in obj.items():
            items.append((str(k), generic(v) if isinstance(v, (Mapping, list)) else v))
        return kv(items)
    if isinstance(obj, list):
        if obj and all(isinstance(v, Mapping) for v in obj):
            return _records_table(None, obj)
        return Html(esc(", ".join(fmt(_compact(v)) for v in obj)) if obj else "<em>none</em>")
    return Html(cell(obj))
