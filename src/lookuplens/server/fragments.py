"""HTML pieces the API returns next to its data, so the pages' script only inserts them:
shaded prompts, vocabulary lists and the "why this token" tree. Built with the static
report's helpers (escaping, token shading), so both look the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lookuplens.report.markup import Html, esc, fmt, kv, table
from lookuplens.report.tokens import shaded_tokens, token_label
from lookuplens.server.worker import TokenValues
from lookuplens.why import WhyResult, curve_text

__all__ = [
    "activation_prompts",
    "attention_prompts",
    "playground_tokens",
    "vocab_html",
    "why_html",
]


def _decoder(ids: Sequence[int], tokens: Sequence[str]) -> dict[int, str]:
    return {int(i): t for i, t in zip(ids, tokens, strict=True)}


def activation_prompts(prompts: Sequence[TokenValues]) -> tuple[float, list[Html]]:
    """Each prompt shaded by the neuron's activation, on one scale (the largest
    |activation| over the prompts); the last token (the firing token) outlined."""
    scale = max((max((abs(v) for v in p.values), default=0.0) for p in prompts), default=0.0)
    out = []
    for p in prompts:
        names = _decoder(p.token_ids, p.tokens)
        out.append(
            Html(
                shaded_tokens(p.token_ids, names.__getitem__, p.values, scale, "act", "activation")
            )
        )
    return scale, out


def attention_prompts(prompts: Sequence[TokenValues]) -> list[Html]:
    """Each prompt shaded by the head's attention from its last token, scaled per prompt
    to the largest weight after the first token (often an attention sink), as the
    report does."""
    out = []
    for p in prompts:
        row = np.asarray(p.values, dtype=np.float64)
        scale = 0.0
        if len(row):
            rest = row[1:] if len(row) > 1 else row
            scale = float(rest.max()) if float(rest.max()) > 0 else float(row.max())
        names = _decoder(p.token_ids, p.tokens).__getitem__
        out.append(Html(shaded_tokens(p.token_ids, names, p.values, scale, "attn", "attention")))
    return out


def playground_tokens(
    ids: Sequence[int], tokens: Sequence[str], values: Sequence[float], scale: float
) -> Html:
    """A typed prompt shaded by the neuron's activation (the chosen token is marked by
    the page's script)."""
    names = _decoder(ids, tokens)
    return Html(
        shaded_tokens(ids, names.__getitem__, values, scale, "act", "activation", mark_last=False)
    )


def vocab_html(vocab: dict[str, list[tuple[int, str, float]]]) -> Html:
    """Promoted and suppressed tokens side by side."""

    def one(items: list[tuple[int, str, float]]) -> str:
        spans = [
            f'<span><span class="tokpill" title="id {tid}">{token_label(text)}</span>'
            f'<span class="val">{esc(fmt(v, 3))}</span></span>'
            for tid, text, v in items
        ]
        return '<div class="toklist">' + "".join(spans) + "</div>"

    return Html(
        '<div class="grid"><div><h4>Promoted tokens</h4>'
        + one(vocab["promoted"])
        + "</div><div><h4>Suppressed tokens</h4>"
        + one(vocab["suppressed"])
        + "</div></div>"
    )


def _pill(text: str) -> Html:
    return Html(f"<span class='tokpill'>{token_label(text)}</span>")


def why_html(
    result: WhyResult,
    ids: Sequence[int],
    known: Callable[[int, int], bool] = lambda _l, _n: False,
) -> Html:
    """The `lookuplens why` tree: top neurons by direct contribution to the target's logit,
    under each the heads that drive it with the tokens they attend to, then the
    ablation check."""
    r = result
    what = f"<span class='tokpill'>{token_label(r.target)}</span>"
    if r.contrast is not None:
        what += f" vs <span class='tokpill'>{token_label(r.contrast)}</span>"
    parts = [
        f"<h3>Why {what} after position {r.position}?</h3>",
        kv(
            [
                ("logit" + (" difference" if r.contrast else ""), r.logit),
                ("probability", r.prob),
                ("top prediction", _pill(r.top_prediction)),
                ("all neurons together", r.neuron_total),
            ]
        ),
    ]
    shown = list(ids[: r.position + 1])
    names = {int(i): t for i, t in zip(ids, r.tokens, strict=False)}
    for nf in r.neurons:
        href = (
            f"/neurons/{nf.layer}/{nf.neuron}"
            if known(nf.layer, nf.neuron)
            else f"/playground?layer={nf.layer}&amp;neuron={nf.neuron}"
        )
        parts.append(
            f'<div class="card why-neuron"><h4><a href="{href}">'
            f"{esc(nf.name)}</a> contributes {esc(fmt(nf.contribution))} "
            f"(activation {esc(fmt(nf.activation))}, top token "
            f"<span class='tokpill'>{token_label(nf.top_token)}</span>)</h4>"
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
        rows: list[list[object]] = [
            [
                a.what,
                a.prob_before,
                a.prob_after,
                Html(f"<span class='tokpill'>{token_label(a.top_before)}</span>"),
                Html(f"<span class='tokpill'>{token_label(a.top_after)}</span>"),
            ]
            for a in r.ablations
        ]
        parts.append("<h4>Causal check</h4>")
        parts.append(
            table(["ablation", "p before", "p after", "top before", "top after"], rows, digits=4)
        )
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
                f"{esc(n.name)} <span class='tokpill'>{token_label(n.top_token)}</span>"
                for n in r.carrying
            )
            + "</p>"
        )
    return Html("".join(parts))
