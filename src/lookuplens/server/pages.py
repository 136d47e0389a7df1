"""The dashboard's pages as HTML, built from `RunData` with the static report's helpers.

Everything the tables hold is on the page when it arrives (fast, no model needed); what
needs the model (per-token shading, promoted tokens) is filled in by the page's script
from the JSON API, so a page never waits for the model.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from importlib import resources
from string import Template
from urllib.parse import urlencode

from lookuplens.report.data import finite
from lookuplens.report.details import (
    METHOD_LABELS,
    NEVER_FIRES_BADGE,
    NO_HEAD,
    effects_table,
    explanations_block,
    never_fires,
    on_token_note,
)
from lookuplens.report.markup import Html, esc, fmt, kv, note, table
from lookuplens.report.tokens import token_pill
from lookuplens.server.data import NEURON_SORTS, PAIR_SORTS, RunData
from lookuplens.server.records import Page

__all__ = ["neuron_page", "overview_page", "pair_page", "playground_page"]


def asset(name: str) -> str:
    """A file shipped in ``lookuplens/server/assets/`` (package data)."""
    return resources.files("lookuplens.server").joinpath("assets", name).read_text("utf-8")


def layout(data: RunData, title: str, body: str, page: str) -> str:
    """A full page: header bar with navigation, then `body`."""
    name = esc(data.run.path.name)
    links = [
        ("overview", "/", "Overview"),
        ("neurons", "/#neurons", "Neurons"),
        ("pairs", "/#pairs", "Pairs"),
        ("playground", "/playground", "Playground"),
    ]
    here = ' class="here"'
    nav = "".join(
        f'<a href="{href}"{here if key == page else ""}>{label}</a>' for key, href, label in links
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} \u00b7 lookuplens</title>"
        '<link rel="stylesheet" href="/static/style.css">'
        '<script src="/static/app.js" defer></script></head>'
        f'<body class="dash" data-page="{page}">'
        '<header class="bar"><a class="brand" href="/">lookuplens</a>'
        f'<span class="run" title="{esc(data.run.path)}">run <b>{name}</b></span>'
        f"<nav>{nav}</nav>"
        '<span class="model-status" id="model-status" data-src="/api/model"></span>'
        "</header>"
        f"<main>{body}</main>"
        '<footer class="dash-foot">lookuplens dashboard \u00b7 JSON API: '
        '<a href="/api/openapi.json">/api/openapi.json</a></footer>'
        "</body></html>\n"
    )


# ------------------------------------------------------------------------ overview


def _query(params: Mapping[str, object], **changes: object) -> str:
    merged = {**params, **changes}
    return "?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})


def _sort_header(
    label: str, col: str, prefix: str, params: Mapping[str, object], page: Page, anchor: str
) -> Html:
    order = "asc" if page.sort == col and page.order == "desc" else "desc"
    arrow = ""
    if page.sort == col:
        arrow = " \u25be" if page.order == "desc" else " \u25b4"
    q = _query(params, **{f"{prefix}sort": col, f"{prefix}order": order, f"{prefix}page": 1})
    return Html(
        f'<a class="sort" data-col="{esc(col)}" href="{esc(q)}#{anchor}">{esc(label)}{arrow}</a>'
    )


def _pager(prefix: str, params: Mapping[str, object], page: Page, anchor: str, what: str) -> Html:
    first = (page.page - 1) * page.per_page + 1 if page.total else 0
    last = min(page.page * page.per_page, page.total)
    parts = [f'<div class="pager"><span>{what} {first:,}\u2013{last:,} of {page.total:,}</span>']
    if page.page > 1:
        q = _query(params, **{f"{prefix}page": page.page - 1})
        parts.append(f'<a rel="prev" href="{esc(q)}#{anchor}">\u2190 previous</a>')
    if page.page < page.pages:
        q = _query(params, **{f"{prefix}page": page.page + 1})
        parts.append(f'<a rel="next" href="{esc(q)}#{anchor}">next \u2192</a>')
    parts.append(f"<span>page {page.page} of {page.pages}</span></div>")
    return Html("".join(parts))


def _hidden(params: Mapping[str, object], prefix: str) -> str:
    return "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">'
        for k, v in params.items()
        if not k.startswith(prefix) and v not in (None, "")
    )


def _options(values: Sequence[tuple[str, str]], chosen: object) -> str:
    return "".join(
        f'<option value="{esc(v)}"{" selected" if str(chosen) == v else ""}>{esc(label)}</option>'
        for v, label in values
    )


def _layers(data: RunData) -> list[tuple[str, str]]:
    layers = sorted({int(x) for x in data.neurons.layer})
    return [("", "all layers")] + [(str(x), f"layer {x}") for x in layers]


def neuron_table(data: RunData, page: Page, params: Mapping[str, object]) -> Html:
    """The sortable, filterable, paginated neuron table."""
    cols = [
        ("neuron", "layer"),
        ("token", "token"),
        ("group", "group"),
        ("congruence", "congruence"),
        ("congruence z", "congruence_z"),
        ("mechanism", "mechanism"),
        ("best E", "best_e"),
        ("\u0394log p, neuron zeroed", "effect"),
        ("prompts", "n_examples"),
        ("kept pairs", "n_kept"),
    ]
    assert all(c in NEURON_SORTS for _, c in cols)
    headers: list[str | Html] = [
        _sort_header(label, col, "n", params, page, "neurons") for label, col in cols
    ]
    headers.append("top head")
    rows: list[list[object]] = []
    for r in page.rows:
        link = Html(f'<a href="/neurons/{r["layer"]}/{r["neuron"]}">{esc(r["name"])}</a>')
        rows.append(
            [
                link,
                token_pill(r["token"]),
                Html(f'<span class="badge {esc(r["group"])}">{esc(r["group"])}</span>'),
                r["congruence"],
                r["congruence_z"],
                r["mechanism"],
                r["best_e"],
                r["effect"],
                r["n_examples"],
                r["n_kept"],
                r["top_head"],
            ]
        )
    form = (
        '<form class="filters" method="get" action="/#neurons">'
        + _hidden(params, "n")
        + '<input type="search" name="nq" placeholder="token or L1N5" '
        + f'value="{esc(params.get("nq") or "")}">'
        + f'<select name="nlayer">{_options(_layers(data), params.get("nlayer") or "")}</select>'
        + '<select name="ngroup">'
        + _options(
            [
                ("tracked", "selected + baseline"),
                ("selected", "selected"),
                ("baseline", "random baseline"),
                ("all", "all neurons"),
            ],
            params.get("ngroup") or "tracked",
        )
        + "</select>"
        + f'<input type="hidden" name="nsort" value="{esc(page.sort)}">'
        + f'<input type="hidden" name="norder" value="{esc(page.order)}">'
        + '<button type="submit">Filter</button></form>'
    )
    body = table(headers, rows, cls="data neurons") if rows else note("No neuron matches.")
    return Html(form + _pager("n", params, page, "neurons", "neurons") + body)


def pair_table(data: RunData, page: Page, params: Mapping[str, object]) -> Html:
    """The sortable, filterable, paginated pair table."""
    cols = [
        ("pair", "layer"),
        ("token", "token"),
        ("active rate", "active_rate"),
        ("mean direct", "mean_direct"),
        ("KS D", "ks_stat"),
        ("mechanism", "mechanism"),
        ("E", "e"),
        ("\u0394log p, head ablated", "effect"),
    ]
    assert all(c in PAIR_SORTS for _, c in cols)
    headers: list[str | Html] = [
        _sort_header(label, col, "p", params, page, "pairs") for label, col in cols
    ]
    headers += ["kept", "explanation"]
    rows: list[list[object]] = []
    for r in page.rows:
        href = f"/pairs/{r['layer']}/{r['neuron']}/{r['head_layer']}/{r['head']}"
        link = Html(f'<a href="{href}">{esc(r["head_name"])} \u2192 {esc(r["name"])}</a>')
        expl = r.get("explanation")
        text = str(expl) if isinstance(expl, str) else ""
        short = text if len(text) <= 90 else text[:88] + "\u2026"
        rows.append(
            [
                link,
                token_pill(r["token"]),
                r["active_rate"],
                r["mean_direct"],
                r["ks_stat"],
                r["mechanism"],
                r["e"],
                r["effect"],
                Html("yes" if r["kept"] else "no"),
                Html(f'<span title="{esc(text)}">{esc(short)}</span>') if text else None,
            ]
        )
    form = (
        '<form class="filters" method="get" action="/#pairs">'
        + _hidden(params, "p")
        + '<input type="search" name="pq" placeholder="token, L0H1, L1N5 or words" '
        + f'value="{esc(params.get("pq") or "")}">'
        + f'<select name="player">{_options(_layers(data), params.get("player") or "")}</select>'
        + '<select name="pkept">'
        + _options([("kept", "kept pairs"), ("all", "all pairs")], params.get("pkept") or "kept")
        + "</select>"
        + f'<input type="hidden" name="psort" value="{esc(page.sort)}">'
        + f'<input type="hidden" name="porder" value="{esc(page.order)}">'
        + '<button type="submit">Filter</button></form>'
    )
    body = table(headers, rows, cls="data pairs") if rows else note("No pair matches.")
    return Html(form + _pager("p", params, page, "pairs", "pairs") + body)


def overview_page(data: RunData, neurons: Page, pairs: Page, params: Mapping[str, object]) -> str:
    """Run metadata, the neuron and pair tables, and the E distribution."""
    body = [
        f'<header class="top"><h1>Run {esc(data.run.path.name)}</h1>'
        f"<p>Run directory <code>{esc(data.run.path)}</code></p></header>",
        data.overview_html,
        '<section id="neurons"><h2>Neurons</h2>',
        note(
            "Next-token neurons (selected) and the random baseline. Best E: the highest "
            "explanation score of the neuron or one of its pairs; \u0394log p: mean change in "
            "log p(token) when the neuron is zeroed (the verify stage)."
        ),
        neuron_table(data, neurons, params),
        "</section>",
        '<section id="pairs"><h2>(Neuron, head) pairs</h2>',
        pair_table(data, pairs, params),
        "</section>",
        data.histogram_html,
    ]
    return layout(data, f"run {data.run.path.name}", "".join(body), "overview")


# ------------------------------------------------------------------------ neuron


def _heads_table(data: RunData, layer: int, neuron: int, detail: Mapping[str, object]) -> Html:
    heads = detail["heads"]
    assert isinstance(heads, list)
    if not heads:
        return note("No attributions yet (the attribute stage).")
    methods = list(detail["methods"])  # type: ignore[call-overload]
    headers: list[str | Html] = ["head"]
    headers += [
        Html(f'<span title="{esc(m)}">{esc(METHOD_LABELS.get(m, m))}</span>') for m in methods
    ]
    headers += ["active rate", "kept", "KS D", "KS p", "\u0394log p, ablated", "E", ""]
    rows: list[list[object]] = []
    for h in heads:
        name = esc(h["name"])
        if h["has_pair"]:
            label: object = Html(
                f'<a href="/pairs/{layer}/{neuron}/{h["head_layer"]}/{h["head"]}">{name}</a>'
            )
        else:
            label = h["name"]
        means = h["methods"]
        rows.append(
            [
                label,
                *(finite(means.get(m)) for m in methods),
                h["active_rate"],
                None if h["kept"] is None else Html("yes" if h["kept"] else "no"),
                h["ks_stat"],
                h["ks_pvalue"],
                h["ablation_delta_logprob"],
                h["e"],
                Html(
                    f'<a class="small" href="/playground?layer={layer}&amp;neuron={neuron}'
                    f'&amp;off={h["head_layer"]}.{h["head"]}" '
                    'title="open the playground with this head switched off">switch off</a>'
                ),
            ]
        )
    out = table(headers, rows, cls="sortable data heads")
    n_all = int(detail["n_heads"])  # type: ignore[call-overload]
    if n_all > len(heads):
        out = Html(out + note(f"{n_all - len(heads)} more upstream heads not shown."))
    return Html(
        out
        + note(
            "Mean attribution per method over the neuron's prompts, each method side by side "
            "(click a column to sort); \u0394log p: mean change in log p(token) when the head "
            "is zero-ablated (kept pairs)."
        )
    )


def _example_meta(ex: Mapping[str, object]) -> str:
    parts = []
    if ex.get("kind") == "contrast":
        parts.append("contrast (neuron silent)")
    elif ex.get("rank") is not None:
        parts.append(f"rank {ex['rank']}")
        parts += on_token_note(ex)
    parts.append(f"activation {fmt(ex.get('trimmed_activation'))}")
    if ex.get("split"):
        parts.append(str(ex["split"]))
    if ex.get("doc_id") is not None:
        parts.append(f"doc {ex['doc_id']} @ {ex.get('position')}")
    parts.append(f"example {ex['example_id']}")
    return " \u00b7 ".join(parts)


def _prompt_box(ex: Mapping[str, object], active: bool | None = None, link: str = "") -> str:
    eid = int(ex["example_id"])  # type: ignore[call-overload]
    extra = f' \u00b7 <a href="{esc(link)}">playground</a>' if link else ""
    cls, badge = "prompt", ""
    if active is True:
        cls, badge = "prompt is-active", '<span class="badge active">head active</span> '
    elif active is False:
        badge = '<span class="badge inactive">inactive</span> '
    return (
        f'<div class="{cls}"><div class="pmeta">{badge}{esc(_example_meta(ex))}{extra}</div>'
        f'<div class="toks pending" data-example="{eid}"><span class="mono">'
        f"{esc(ex.get('text', ''))}</span></div></div>"
    )


def neuron_page(data: RunData, layer: int, neuron: int) -> str:
    d = data.neuron_detail(layer, neuron)
    s = d["summary"]
    info = d["info"]
    stats = d["stats"] or {}
    assert isinstance(s, dict) and isinstance(info, dict) and isinstance(stats, dict)
    group = str(s.get("group"))
    head = [
        f'<header class="top"><h1>L{layer}N{neuron} {token_pill(s.get("token"))} '
        f'<span class="badge {esc(group)}">{esc(group)}</span>'
    ]
    if never_fires(stats):
        head.append(" " + NEVER_FIRES_BADGE)
    elif s.get("mechanism"):
        head.append(f' <span class="badge">mechanism: {esc(s["mechanism"])}</span>')
    if s.get("best_e") is not None:
        head.append(f' <span class="badge score">best E {esc(fmt(s["best_e"]))}</span>')
    head.append(
        f'</h1><p><a href="/playground?layer={layer}&amp;neuron={neuron}">Open in the '
        "playground</a></p></header>"
    )
    items = [
        ("token id", info.get("token_id")),
        ("congruence", info.get("congruence")),
        ("congruence z", info.get("congruence_z")),
        ("vocab kurtosis", info.get("vocab_kurtosis")),
        ("vocab skew", info.get("vocab_skew")),
        ("top head (direct)", s.get("top_head")),
    ]
    stat_items = [
        ("activation mean", stats.get("act_mean")),
        ("activation std", stats.get("act_std")),
        ("share positive", stats.get("act_frac_pos")),
        ("activation max", stats.get("act_max")),
        ("prompts", d["n_examples"]),
        ("\u0394log p, neuron zeroed", s.get("effect")),
    ]
    body = [
        "".join(head),
        f'<div class="grid"><div>{kv(items)}</div><div>{kv(stat_items)}</div></div>',
        f'<section class="card"><div id="vocab" class="pending" '
        f'data-src="/api/neurons/{layer}/{neuron}/vocab">'
        '<p class="note">Promoted and suppressed tokens: waiting for the model\u2026</p>'
        "</div></section>",
        '<section class="card"><h2>Top prompts</h2>',
        '<div class="legend"><span><span class="swatch act"></span> positive activation</span>'
        '<span><span class="swatch neg"></span> negative</span><span>scaled to the largest '
        "|activation| below; outlined: the firing token; hover a token for its value</span></div>",
        '<div id="prompts" data-kind="activation" '
        f'data-src="/api/neurons/{layer}/{neuron}/activations">',
    ]
    examples = d["examples"]
    assert isinstance(examples, list)
    if not examples:
        body.append(note("No prompts yet (the scan and examples stages)."))
    for ex in examples:
        link = f"/playground?layer={layer}&neuron={neuron}&example={ex['example_id']}"
        body.append(_prompt_box(ex, link=link))
    body.append("</div>")
    more = int(d["n_examples"]) - len(examples)  # type: ignore[call-overload]
    if more > 0:
        body.append(note(f"{more} more prompts not shown."))
    body.append("</section>")
    body.append('<section class="card"><h2>Upstream heads</h2>')
    body.append(_heads_table(data, layer, neuron, d))
    body.append("</section>")
    body.append('<section class="card"><h2>Interventions on the neuron</h2>')
    body.append(effects_table(d["effects"]))  # type: ignore[arg-type]
    expl = explanations_block(data.lookup, (layer, neuron, NO_HEAD, NO_HEAD), data.primary)
    if expl:
        body.append("<h2>Explanation of the neuron</h2>" + expl)
    body.append("</section>")
    return layout(data, f"L{layer}N{neuron}", "".join(body), "neuron")


# -------------------------------------------------------------------------- pair


def pair_page(data: RunData, layer: int, neuron: int, head_layer: int, head: int) -> str:
    d = data.pair_detail(layer, neuron, head_layer, head)
    s = d["summary"]
    info = d["info"]
    abl = d["ablation"]
    assert isinstance(s, dict) and isinstance(info, dict) and isinstance(abl, dict)
    title = f"L{head_layer}H{head} \u2192 L{layer}N{neuron}"
    head_html = [
        f'<header class="top"><h1>L{head_layer}H{head} \u2192 '
        f'<a href="/neurons/{layer}/{neuron}">L{layer}N{neuron}</a> {token_pill(s.get("token"))}'
    ]
    if d["e"] is not None:
        head_html.append(f' <span class="badge score">E {esc(fmt(d["e"]))}</span>')
    if s.get("baseline"):
        head_html.append(' <span class="badge baseline">baseline neuron</span>')
    if not s.get("kept"):
        head_html.append(' <span class="badge">not kept</span>')
    head_html.append(
        f'</h1><p><a href="/playground?layer={layer}&amp;neuron={neuron}&amp;'
        f'off={head_layer}.{head}">Switch the head off in the playground</a></p></header>'
    )
    items = [
        ("active rate (train)", s.get("active_rate")),
        ("training prompts", s.get("n_train")),
        ("mean direct attribution", s.get("mean_direct")),
        ("KS D", s.get("ks_stat")),
        ("KS p-value", s.get("ks_pvalue")),
    ]
    items2 = [
        ("ablation \u0394log p, all", abl.get("all")),
        ("ablation \u0394log p, head active", abl.get("active")),
        ("ablation \u0394log p, head inactive", abl.get("inactive")),
        ("mechanism", s.get("mechanism")),
    ]
    expl = explanations_block(data.lookup, (layer, neuron, head_layer, head), data.primary)
    body = [
        "".join(head_html),
        f'<div class="grid"><div>{kv(items)}</div><div>{kv(items2)}</div></div>',
        '<section class="card explanation-card"><h2>Explanation and score</h2>',
        expl if expl else note("No explanation yet (the explain and score stages)."),
        "</section>",
        f'<section class="card"><h2>What L{head_layer}H{head} looks up</h2>',
        '<div class="legend"><span><span class="swatch attn"></span> attention from the '
        "firing token (outlined)</span><span>scaled per prompt to the largest weight after the "
        "first token; hover for the value</span></div>",
        f'<div id="prompts" data-kind="attention" '
        f'data-src="/api/pairs/{layer}/{neuron}/{head_layer}/{head}/attention">',
    ]
    for kind in ("active", "inactive"):
        exs = d[kind]
        assert isinstance(exs, list)
        n = d[f"n_{kind}"]
        body.append(f"<h3>Prompts with the head {kind} ({n})</h3>")
        if not exs:
            body.append(note(f"No prompt with the head {kind}."))
        for ex in exs:
            link = (
                f"/playground?layer={layer}&neuron={neuron}&example={ex['example_id']}"
                f"&off={head_layer}.{head}"
            )
            body.append(_prompt_box(ex, kind == "active", link=link))
    body.append("</div></section>")
    return layout(data, title, "".join(body), "pair")


# ----------------------------------------------------------------------- playground


def playground_page(
    data: RunData,
    layer: int | None,
    neuron: int | None,
    prompt: str,
    off: Sequence[tuple[int, int]],
    limits: Mapping[str, object],
) -> str:
    """The playground form; the script runs it against the API and draws the results."""
    if layer is None or neuron is None:
        first = data.neurons[data.neurons.group == "selected"].sort_values(
            "congruence", ascending=False
        )
        if first.empty:
            first = data.neurons
        if not first.empty:
            layer, neuron = int(first.iloc[0].layer), int(first.iloc[0].neuron)
        else:
            layer, neuron = 0, 0
    options = "".join(
        f'<option value="L{int(r.layer)}N{int(r.neuron)}">{esc(r.token)}</option>'
        for r in data.neurons[data.neurons.group != "other"].head(2000).itertuples()
    )
    off_text = ",".join(f"{a}.{b}" for a, b in off)
    body = Template(asset("playground.html")).substitute(
        max_tokens=esc(limits.get("max_prompt_tokens")),
        max_new=esc(limits.get("max_new_tokens")),
        default_new=esc(limits.get("default_new_tokens")),
        max_chars=esc(limits.get("max_prompt_chars")),
        off=esc(off_text),
        prompt=esc(prompt),
        layer=layer,
        neuron=neuron,
        options=options,
    )
    return layout(data, "playground", body, "playground")
