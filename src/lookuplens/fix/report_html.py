"""Building blocks of the fix report: number formats, the requirement figure in words,
key-number tiles, table rows, and the before/after figure (inline SVG)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lookuplens.report.markup import Html, esc
from lookuplens.report.tokens import token_pill

__all__ = [
    "dumbbell",
    "kl",
    "num",
    "pct",
    "pill",
    "prob",
    "requirement_figure",
    "requirement_what",
    "rows_table",
    "tail",
    "td",
    "tiles",
]


def prob(x: object) -> str:
    """A probability, 4 decimals (``<0.0001`` for tiny positive values)."""
    if not isinstance(x, (int, float)):
        return "\u2013"
    return "<0.0001" if 0 < x < 5e-5 else f"{x:.4f}"


def kl(x: object) -> str:
    """A KL divergence in nats, 4 decimals."""
    if not isinstance(x, (int, float)):
        return "\u2013"
    return "<0.0001" if 0 < x < 5e-5 else f"{x:.4f}"


def pct(x: object) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "\u2013"


def num(x: object, digits: int = 3) -> str:
    return f"{x:+.{digits}f}" if isinstance(x, (int, float)) else "\u2013"


def requirement_what(fix: dict[str, Any]) -> str:
    """What the requirement figure counts, e.g. ``of p(target) removed``."""
    t = fix["target"]
    if t["goal"] == "decrease":
        if t.get("contrast") is not None:
            return "of the prompts won by the contrast"
        return "of p(target) removed"
    if t.get("contrast") is not None:
        return "of the prompts where the target beats the contrast"
    return "of the prompts with the target on top"


def requirement_figure(fix: dict[str, Any], value: object) -> str:
    """The requirement figure in words, e.g. ``95.2% of p(target) removed``."""
    return f"{pct(value)} {requirement_what(fix)}"


def tiles(items: Sequence[tuple[str, str, str]]) -> Html:
    """Key numbers: (value, label, css class) with value and label as plain text."""
    parts = ['<div class="numbers">']
    for v, k, cls in items:
        parts.append(
            f'<div class="number {esc(cls)}"><div class="v">{esc(v)}</div>'
            f'<div class="k">{esc(k)}</div></div>'
        )
    return Html("".join(parts) + "</div>")


def tail(text: str, n: int = 80) -> Html:
    """The end of a prompt (the part that predicts), the whole text in the title."""
    short = text if len(text) <= n else "\u2026" + text[-n:]
    return Html(f'<span class="ptext" title="{esc(text)}">{esc(short)}</span>')


def td(value: str, cls: str = "num") -> str:
    return f'<td class="{cls}">{value}</td>'


def rows_table(headers: Sequence[str], rows: Sequence[str], cls: str = "") -> Html:
    """A table from escaped header labels and ready-made ``<tr>`` rows."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return Html(
        f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def dumbbell(before: Sequence[float], after: Sequence[float], width: int = 760) -> Html:
    """p(target) per prompt, before (grey) and after (blue) joined by a line; the means on
    the last row. Inline SVG, no script."""
    n = len(before)
    if not n:
        return Html("")
    left, right, top = 56, 16, 22
    row = max(min(12.0, 480.0 / n), 2.0)
    plot_w = width - left - right
    height = int(top + row * (n + 2) + 24)

    def x(p: float) -> float:
        return left + plot_w * min(max(p, 0.0), 1.0)

    parts = [
        f'<svg class="figure dumbbell" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="p(target) per prompt before and after">'
    ]
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{x(t):.1f}" y1="{top - 4}" x2="{x(t):.1f}" y2="{height - 20}" '
            f'stroke="#d1d9e0"/><text x="{x(t):.1f}" y="{height - 6}" font-size="11" '
            f'text-anchor="middle" fill="#59636e">{t:g}</text>'
        )
    parts.append(
        f'<text x="{left}" y="12" font-size="11" fill="#59636e">p(target): '
        f'<tspan fill="#8c959f">\u25cf before</tspan> <tspan fill="#0969da">\u25cf after'
        "</tspan></text>"
    )
    r = max(min(row / 2 - 0.5, 4.0), 1.0)
    mean_b, mean_a = sum(before) / n, sum(after) / n
    rows = [*zip(before, after, strict=True), (mean_b, mean_a)]
    for i, (b, a) in enumerate(rows):
        y = top + row * (i + 0.5) + (row if i == n else 0)
        label = "mean" if i == n else f"#{i + 1}"
        w = 2.5 if i == n else 1.2
        parts.append(
            f"<g><title>{label}: {prob(b)} \u2192 {prob(a)}</title>"
            f'<line x1="{x(b):.1f}" y1="{y:.1f}" x2="{x(a):.1f}" y2="{y:.1f}" '
            f'stroke="#9ec5fe" stroke-width="{w}"/>'
            f'<circle cx="{x(b):.1f}" cy="{y:.1f}" r="{r + (1 if i == n else 0):.1f}" '
            f'fill="#8c959f"/><circle cx="{x(a):.1f}" cy="{y:.1f}" '
            f'r="{r + (1 if i == n else 0):.1f}" fill="#0969da"/></g>'
        )
        if i == n or row >= 10:
            parts.append(
                f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="{11 if i == n else 9}" '
                f'text-anchor="end" fill="#59636e">{label}</text>'
            )
    return Html("".join(parts) + "</svg>")


def pill(token: object, target: str) -> str:
    """A token pill, marked when it is the target."""
    html = str(token_pill(token))
    return html.replace('"tokpill"', '"tokpill is-target"') if token == target else html
