"""A small self-contained HTML page for one `lookuplens why` result."""

from __future__ import annotations

import html

from lookuplens.why import WhyResult, curve_text, diff_change


def _tok(t: str) -> str:
    return html.escape(t.replace(" ", "\u00b7").replace("\n", "\u21b5"))


def render_why(r: WhyResult) -> str:
    """The tree of `lookuplens why` as one HTML page, with attention shading per head."""
    what = html.escape(repr(r.target)) + (
        f" vs {html.escape(repr(r.contrast))}" if r.contrast else ""
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lookuplens why</title>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}code,.t{font-family:ui-monospace,monospace}"
        ".t{display:inline-block;padding:1px 2px;border-radius:3px}li{margin:.3rem 0}"
        ".n{color:#075985}.h{color:#86198f}</style>",
        "</head><body>",
        f"<h1>Why {what}?</h1>",
        f"<p>Logit {r.logit:+.3f}, p = {r.prob:.3f}; top prediction "
        f"<code>{html.escape(repr(r.top_prediction))}</code>. All neurons together "
        f"contribute {r.neuron_total:+.3f}.</p><ul>",
    ]
    for nf in r.neurons:
        parts.append(
            f"<li><b class='n'>{nf.name}</b> contributes {nf.contribution:+.3f} "
            f"(activation {nf.activation:.3f}, top token "
            f"<code>{html.escape(repr(nf.top_token))}</code>)<ul>"
        )
        for h in nf.heads:
            att = {s.position: s.attention for s in h.sources}
            toks = "".join(
                f"<span class='t' title='attention {att.get(i, 0):.2f}' style='background:"
                f"rgba(192,38,211,{min(1.0, att.get(i, 0)):.2f})'>{_tok(t)}</span>"
                for i, t in enumerate(r.tokens[: r.position + 1])
            )
            parts.append(
                f"<li><b class='h'>{h.name}</b> direct {h.direct:+.3f}, ablation "
                f"removes {h.zero_ablation:+.3f}<br>{toks}</li>"
            )
        parts.append("</ul></li>")
    parts.append("</ul><h2>Causal check</h2><ul>")
    for a in r.ablations:
        parts.append(
            f"<li>{html.escape(a.what)}: p {a.prob_before:.3f} &rarr; "
            f"{a.prob_after:.3f}; top prediction "
            f"<code>{html.escape(repr(a.top_before))}</code> &rarr; "
            f"<code>{html.escape(repr(a.top_after))}</code>{html.escape(diff_change(a))}</li>"
        )
    parts.append("</ul>")
    if r.curve:
        parts.append(
            f"<p>p with the top <i>k</i> ranked neurons zeroed: {html.escape(curve_text(r.curve))}"
            "</p>"
        )
    if r.carrying:
        parts.append(
            f"<p>The {len(r.carrying)} neurons that carry it: "
            + ", ".join(
                f"<b class='n'>{n.name}</b> (<code>{html.escape(repr(n.top_token))}</code>, "
                f"{n.contribution:+.2f})"
                for n in r.carrying
            )
            + "</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
