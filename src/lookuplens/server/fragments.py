"""HTML pieces the API returns next to its data, so the pages' script only inserts them:
shaded prompts, vocabulary lists and the "why this token" tree. Built with the static
report's helpers (escaping, token shading), so both look the same; the "why" tree is
`lookuplens.why_html.why_fragment`, which ``lookuplens why --html`` renders too."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lookuplens.report.markup import Html, esc, fmt
from lookuplens.report.tokens import shaded_tokens, token_label
from lookuplens.server.worker import TokenValues
from lookuplens.why import WhyResult
from lookuplens.why_html import why_fragment

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


def why_html(
    result: WhyResult,
    ids: Sequence[int],
    known: Callable[[int, int], bool] = lambda _l, _n: False,
) -> Html:
    """The `lookuplens why` tree (`lookuplens.why_html.why_fragment`, the renderer of
    ``lookuplens why --html`` too), each neuron linked to its page when the run has it
    (`known`), else to the playground."""

    def href(layer: int, neuron: int) -> str:
        if known(layer, neuron):
            return f"/neurons/{layer}/{neuron}"
        return f"/playground?layer={layer}&amp;neuron={neuron}"

    return why_fragment(result, ids, href)
