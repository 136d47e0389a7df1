"""The HTML of one `lookuplens why` result: one renderer for the dashboard and the page.

`why_fragment` builds the tree (the neurons that push the token, the heads that switch
each on with the tokens they attend to shaded, then the causal check) with the static
report's helpers; the dashboard's ``/api/why`` returns it (`lookuplens.server.fragments`,
which adds links to the neurons' pages) and `render_why` wraps it into the self-contained
page that ``lookuplens why --html`` writes, styled by the report's stylesheet.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from lookuplens.report.assets import CSS
from lookuplens.report.markup import Html, esc, fmt, kv, table
from lookuplens.report.tokens import shaded_tokens, token_pill
from lookuplens.why import WhyResult, curve_text

__all__ = ["render_why", "why_fragment"]

NeuronHref = Callable[[int, int], str | None]
"""The link of neuron (layer, neuron) in the tree, or None for no link."""

_PAGE_CSS = (
    "body { display: block; }\n"
    "main { margin: 0 auto; }\n"
    ".why-neuron h4 { text-transform: none; letter-spacing: 0; color: var(--fg); "
    "font-size: 15px; }\n"
)


def why_fragment(
    result: WhyResult, ids: Sequence[int], neuron_href: NeuronHref | None = None
) -> Html:
    """The `lookuplens why` tree: top neurons by direct contribution to the target's logit,
    under each the heads that drive it with the tokens they attend to, then the
    ablation check.

    `ids` are the prompt's token ids after BOS (``ids[i]`` is ``result.tokens[i]``); with
    `neuron_href`, each neuron's name links to the page it returns.
    """
    r = result
    what = token_pill(r.target) + (
        f" vs {token_pill(r.contrast)}" if r.contrast is not None else ""
    )
    parts = [
        f"<h3>Why {what} after position {r.position}?</h3>",
        kv(
            [
                ("logit" + (" difference" if r.contrast else ""), r.logit),
                ("probability", r.prob),
                ("top prediction", token_pill(r.top_prediction)),
                ("all neurons together", r.neuron_total),
            ]
        ),
    ]
    shown = list(ids[: r.position + 1])
    names = {int(i): t for i, t in zip(ids, r.tokens, strict=False)}
    for nf in r.neurons:
        href = neuron_href(nf.layer, nf.neuron) if neuron_href is not None else None
        name = f'<a href="{href}">{esc(nf.name)}</a>' if href else esc(nf.name)
        parts.append(
            f'<div class="card why-neuron"><h4>'
            f"{name} contributes {esc(fmt(nf.contribution))} "
            f"(activation {esc(fmt(nf.activation))}, top token "
            f"{token_pill(nf.top_token)})</h4>"
        )
        for h in nf.heads:
            values = [0.0] * len(shown)
            for s in h.sources:
                if 0 <= s.position < len(values):
                    values[s.position] = s.attention
            top = max(values, default=0.0)
            toks = shaded_tokens(
                shown,
                lambda t: names.get(int(t), "?"),
                values,
                top if top > 0 else 1.0,
                "attn",
                "attention",
            )
            parts.append(
                f'<div class="prompt"><div class="pmeta"><b>{esc(h.name)}</b> direct '
                f"{esc(fmt(h.direct))}, zero ablation removes {esc(fmt(h.zero_ablation))}; "
                f"shaded: the {len(h.sources)} tokens it attends to most (hover for the "
                "weight)</div>"
                f'<div class="toks">{toks}</div></div>'
            )
        if not nf.heads:
            parts.append('<p class="note">No upstream heads (an embedding-layer neuron).</p>')
        parts.append("</div>")
    if r.ablations:
        header = ["ablation", "p before", "p after", "top before", "top after"]
        with_diff = any(a.diff_before is not None for a in r.ablations)
        if with_diff:  # a contrast token: the logit difference too
            header += ["difference before", "difference after"]
        rows: list[list[object]] = [
            [
                a.what,
                a.prob_before,
                a.prob_after,
                token_pill(a.top_before),
                token_pill(a.top_after),
                *([a.diff_before, a.diff_after] if with_diff else []),
            ]
            for a in r.ablations
        ]
        parts.append("<h4>Causal check</h4>")
        parts.append(table(header, rows, digits=4))
    if r.curve:
        parts.append(
            '<p class="note">p with the top <i>k</i> ranked neurons zeroed: '
            f"{esc(curve_text(r.curve))}</p>"
        )
    if r.carrying:
        parts.append(
            f'<p class="note">The {len(r.carrying)} neurons that carry it (zeroed together '
            "they bring p to the share above): "
            + ", ".join(
                f"{esc(n.name)} {token_pill(n.top_token)} ({esc(fmt(n.contribution))})"
                for n in r.carrying
            )
            + "</p>"
        )
    return Html("".join(parts))


def render_why(result: WhyResult, ids: Sequence[int]) -> str:
    """The tree of `lookuplens why` (`why_fragment`) as one self-contained HTML page, with
    the report's stylesheet inlined; no script, nothing fetched."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lookuplens why: {html.escape(repr(result.target))}</title>"
        f"<style>{CSS}{_PAGE_CSS}</style></head>"
        f"<body><main>{why_fragment(result, ids)}</main></body></html>\n"
    )
