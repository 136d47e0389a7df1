"""Figures as SVG text (no plotting library): a grouped histogram."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Series", "histogram_svg"]

_SVG_NS = "http://www.w3.org/2000/svg"


@dataclass(frozen=True)
class Series:
    """One group of values in a histogram."""

    label: str
    values: tuple[float, ...]
    colour: str
    """A CSS colour (``#rrggbb``)."""


def _nice_step(top: float, ticks: int = 5) -> float:
    raw = max(top, 1.0) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(max(m * mag, 1.0))
    return float(10 * mag)


def histogram_svg(
    series: Sequence[Series],
    title: str,
    xlabel: str,
    lo: float = 0.0,
    hi: float = 1.0,
    bins: int = 20,
    reference: float | None = 0.5,
    standalone: bool = False,
    width: int = 640,
    height: int = 300,
) -> str:
    """A histogram of each series' values in `bins` equal bins over [lo, hi] (values
    outside are clipped into the end bins), bars of the series side by side in each bin,
    a dashed line at each series' mean and a dotted one at `reference` (chance).

    `standalone` adds the SVG namespace for a file of its own; inline SVG in HTML
    needs none (and then the page holds no URL at all).
    """
    if not hi > lo or bins < 1:
        raise ValueError("need hi > lo and at least one bin")
    ml, mr, mt, mb = 48, 16, 40, 64
    pw, ph = width - ml - mr, height - mt - mb
    edges = np.linspace(lo, hi, bins + 1)
    counts = []
    for s in series:
        v = np.clip(np.asarray(s.values, dtype=np.float64), lo, hi)
        c, _ = np.histogram(v, bins=edges)
        counts.append(c)
    top = max([int(c.max()) for c in counts if len(c)] + [1])
    step = _nice_step(top)
    ymax = step * math.ceil(top / step)

    def x(v: float) -> float:
        return ml + (v - lo) / (hi - lo) * pw

    def y(c: float) -> float:
        return mt + ph - c / ymax * ph

    ns = f' xmlns="{_SVG_NS}"' if standalone else ""
    out = [
        f'<svg{ns} class="figure" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{html.escape(title, quote=True)}" '
        'font-family="system-ui, sans-serif" font-size="11">',
        f"<title>{html.escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{ml}" y="18" font-size="13" font-weight="600" fill="#222">'
        f"{html.escape(title)}</text>",
    ]
    # grid and y axis
    tick = 0.0
    while tick <= ymax + 1e-9:
        yy = y(tick)
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e6e6e6"/>')
        out.append(
            f'<text x="{ml - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#555">{tick:g}</text>'
        )
        tick += step
    out.append(
        f'<text x="14" y="{mt + ph / 2:.1f}" transform="rotate(-90 14 {mt + ph / 2:.1f})" '
        'text-anchor="middle" fill="#555">count</text>'
    )
    # bars
    k = max(len(series), 1)
    bw = pw / bins
    inner = bw * 0.84 / k
    for si, (s, c) in enumerate(zip(series, counts, strict=True)):
        for b in range(bins):
            if c[b] == 0:
                continue
            bx = x(edges[b]) + bw * 0.08 + si * inner
            by = y(c[b])
            label = f"{s.label}: {int(c[b])} in [{edges[b]:.2f}, {edges[b + 1]:.2f})"
            out.append(
                f'<rect x="{bx:.1f}" y="{by:.1f}" width="{inner:.1f}" '
                f'height="{mt + ph - by:.1f}" fill="{s.colour}">'
                f"<title>{html.escape(label)}</title></rect>"
            )
    # x axis
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="#333"/>')
    for i in range(5):
        tv = lo + (hi - lo) * i / 4
        out.append(
            f'<line x1="{x(tv):.1f}" x2="{x(tv):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" '
            'stroke="#333"/>'
        )
        out.append(
            f'<text x="{x(tv):.1f}" y="{mt + ph + 16}" text-anchor="middle" fill="#555">'
            f"{tv:g}</text>"
        )
    out.append(
        f'<text x="{ml + pw / 2:.1f}" y="{mt + ph + 32}" text-anchor="middle" fill="#555">'
        f"{html.escape(xlabel)}</text>"
    )
    if reference is not None and lo <= reference <= hi:
        out.append(
            f'<line x1="{x(reference):.1f}" x2="{x(reference):.1f}" y1="{mt}" '
            f'y2="{mt + ph}" stroke="#888" stroke-dasharray="2 3"/>'
        )
    # means and legend
    lx = float(ml)
    for s in series:
        vals = [v for v in s.values if math.isfinite(v)]
        mean = sum(vals) / len(vals) if vals else None
        if mean is not None:
            out.append(
                f'<line x1="{x(min(max(mean, lo), hi)):.1f}" x2="{x(min(max(mean, lo), hi)):.1f}" '
                f'y1="{mt}" y2="{mt + ph}" stroke="{s.colour}" stroke-width="2" '
                'stroke-dasharray="6 3"/>'
            )
        text = f"{s.label} (n={len(vals)}" + (f", mean {mean:.3f})" if mean is not None else ")")
        out.append(
            f'<rect x="{lx:.1f}" y="{height - 16}" width="10" height="10" fill="{s.colour}"/>'
        )
        out.append(
            f'<text x="{lx + 14:.1f}" y="{height - 7}" fill="#222">{html.escape(text)}</text>'
        )
        lx += 24 + 6.2 * len(text)
    out.append("</svg>")
    return "".join(out)
