"""The per-neuron and per-pair sections of the report."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lookuplens.report.compute import ModelViews
from lookuplens.report.data import (
    METHOD_ORDER,
    NeuronPlan,
    PairPlan,
    ReportPlan,
    RunTables,
    finite,
    is_missing,
)
from lookuplens.report.lazy import HeadMeans, MeansByNeuron
from lookuplens.report.markup import Html, esc, fmt, kv, note, table
from lookuplens.report.tokens import TokenText, shaded_tokens, token_label, token_pill

__all__ = ["Lookup", "neuron_section", "pair_section", "prompt_tokens"]

NO_HEAD = -1


def neuron_anchor(layer: int, neuron: int) -> str:
    return f"neuron-L{layer}N{neuron}"


def pair_anchor(layer: int, neuron: int, head_layer: int, head: int) -> str:
    return f"pair-L{layer}N{neuron}-L{head_layer}H{head}"


def _head_key(row: object) -> tuple[int, int]:
    hl, h = getattr(row, "head_layer", None), getattr(row, "head", None)
    if hl is None or h is None or is_missing(hl) or is_missing(h):
        return (NO_HEAD, NO_HEAD)
    return (int(hl), int(h))


@dataclass(frozen=True)
class Lookup:
    """The tables indexed for the sections (built once per report)."""

    examples: Mapping[int, dict[str, object]]
    """example_id -> its row of the examples table (built when asked for)."""
    attributions: Mapping[tuple[int, int], HeadMeans]
    """(layer, neuron) -> (head_layer, head) -> method -> mean attribution (read a neuron
    at a time, `RunTables.by_neuron`)."""
    methods: tuple[str, ...]
    """The attribution methods present, in report order."""
    pairs: Mapping[tuple[int, int], dict[tuple[int, int], dict[str, object]]]
    """(layer, neuron) -> (head_layer, head) -> its row of the pairs table (built a
    neuron at a time)."""
    head_effects: dict[tuple[int, int, int, int], dict[int, float]]
    neuron_effects: dict[tuple[int, int], pd.DataFrame]
    explanations: dict[tuple[int, int, int, int], list[dict[str, object]]]
    scores: dict[tuple[int, int, int, int], list[dict[str, object]]]
    stats: dict[tuple[int, int], dict[str, object]]

    @classmethod
    def build(cls, t: RunTables) -> Lookup:
        examples = ExampleRows(t.get("examples"))
        by_neuron = t.by_neuron if t.present("attributions") else None
        present = set(by_neuron.methods()) if by_neuron is not None else set()
        att = MeansByNeuron(by_neuron)
        methods = [m for m in METHOD_ORDER if m in present]
        methods += sorted(present - set(methods))
        pairs = PairRows(t.get("pairs"))
        head_eff: dict[tuple[int, int, int, int], dict[int, float]] = {}
        neuron_eff: dict[tuple[int, int], pd.DataFrame] = {}
        eff = t.get("effects")
        if eff is not None and not eff.empty:
            has_head = "head" in eff.columns and "head_layer" in eff.columns
            heads = eff[eff.intervention == "head_zero_ablation"]
            if has_head:
                heads = heads[heads["head"].notna()]
                for k, g in heads.groupby(["layer", "neuron", "head_layer", "head"], sort=False):
                    key = (int(k[0]), int(k[1]), int(k[2]), int(k[3]))
                    head_eff[key] = dict(
                        zip(g.example_id.astype(int), g.delta_logprob.astype(float), strict=True)
                    )
            # neuron interventions, and head interventions other than the zero ablation
            # (the cue swaps), listed per head in the neuron's effects table
            other = eff[eff.intervention != "head_zero_ablation"]
            for k, g in other.groupby(["layer", "neuron"], sort=False):
                neuron_eff[(int(k[0]), int(k[1]))] = g
        expl: dict[tuple[int, int, int, int], list[dict[str, object]]] = {}
        et = t.get("explanations")
        if et is not None:
            for r in et.itertuples(index=False):
                key = (int(r.layer), int(r.neuron), *_head_key(r))
                expl.setdefault(key, []).append(r._asdict())
        scores: dict[tuple[int, int, int, int], list[dict[str, object]]] = {}
        st = t.get("scores")
        if st is not None:
            for r in st.itertuples(index=False):
                key = (int(r.layer), int(r.neuron), *_head_key(r))
                scores.setdefault(key, []).append(r._asdict())
        stats: dict[tuple[int, int], dict[str, object]] = {}
        at = t.get("activation_stats")
        if at is not None:
            for r in at.itertuples(index=False):
                stats[(int(r.layer), int(r.neuron))] = r._asdict()
        return cls(examples, att, tuple(methods), pairs, head_eff, neuron_eff, expl, scores, stats)


class ExampleRows(Mapping[int, dict[str, object]]):
    """example_id -> its row of the examples table as a record, built when asked for (a
    run on a large model has tens of thousands of prompts)."""

    def __init__(self, examples: pd.DataFrame | None) -> None:
        self._examples = examples
        self._pos: dict[int, int] = {}
        if examples is not None:
            ids = examples.example_id.to_numpy()
            self._pos = dict(zip(ids.tolist(), range(len(ids)), strict=True))

    def __getitem__(self, example_id: int) -> dict[str, object]:
        i = self._pos[example_id]
        assert self._examples is not None
        return self._examples.iloc[i : i + 1].to_dict("records")[0]

    def __contains__(self, example_id: object) -> bool:
        return example_id in self._pos

    def __iter__(self) -> Iterator[int]:
        return iter(self._pos)

    def __len__(self) -> int:
        return len(self._pos)

    def tokens(self, example_id: int) -> list[int]:
        """The prompt's token ids (`prompt_tokens` of its record)."""
        i = self._pos[example_id]
        assert self._examples is not None
        toks = self._examples.tokens.iat[i]
        return [int(x) for x in toks] if toks is not None else []


class PairRows(Mapping[tuple[int, int], dict[tuple[int, int], dict[str, object]]]):
    """(layer, neuron) -> (head_layer, head) -> its row of the pairs table: a neuron's rows
    become records when first asked for (a run on a large model has hundreds of
    thousands of pairs, most never shown)."""

    def __init__(self, pairs: pd.DataFrame | None) -> None:
        self._pairs = pairs
        self._index: dict[tuple[int, int], np.ndarray] = {}
        if pairs is not None and not pairs.empty:
            for k, idx in pairs.groupby(["layer", "neuron"], sort=False).indices.items():
                self._index[(int(k[0]), int(k[1]))] = idx

    def __getitem__(self, key: tuple[int, int]) -> dict[tuple[int, int], dict[str, object]]:
        idx = self._index[key]
        assert self._pairs is not None
        out: dict[tuple[int, int], dict[str, object]] = {}
        for rec in self._pairs.iloc[idx].to_dict("records"):
            out[(int(rec["head_layer"]), int(rec["head"]))] = rec
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


# ------------------------------------------------------------------------- pieces


def _vocab_list(items: Sequence[tuple[int, float]], decode: TokenText) -> Html:
    spans = [
        f'<span><span class="tokpill" title="id {tid}">{token_label(decode(tid))}</span>'
        f'<span class="val">{esc(fmt(v, 3))}</span></span>'
        for tid, v in items
    ]
    return Html('<div class="toklist">' + "".join(spans) + "</div>")


def prompt_tokens(ex: Mapping[str, object]) -> list[int]:
    """The prompt's token ids (examples.tokens)."""
    toks = ex.get("tokens")
    return [int(x) for x in toks] if toks is not None else []  # type: ignore[attr-defined]


def _prompt(
    ex: Mapping[str, object],
    decode: TokenText | None,
    values: np.ndarray | None,
    scale: float,
    kind: str,
    value_name: str,
    meta: str,
    active: bool | None = None,
) -> Html:
    cls = "prompt"
    badge = ""
    if active is True:
        cls += " is-active"
        badge = '<span class="badge active">head active</span> '
    elif active is False:
        badge = '<span class="badge inactive">inactive</span> '
    ids = prompt_tokens(ex)
    covers = getattr(decode, "covers", None)  # a decoder that may lack some tokens
    if decode is not None and (covers is None or covers(ids)):
        body = shaded_tokens(
            ids,
            decode,
            None if values is None else values.tolist(),
            scale,
            "attn" if kind == "attn" else "act",
            value_name,
        )
    else:
        body = f'<span class="mono">{esc(ex.get("text", ""))}</span>'
    return Html(
        f'<div class="{cls}"><div class="pmeta">{badge}{esc(meta)}</div>'
        f'<div class="toks">{body}</div></div>'
    )


NEVER_FIRES_BADGE = (
    '<span class="badge" title="its largest activation on the scanned corpus is at most 0: '
    'nothing to explain, and its attribution shares are shares of nothing">'
    "never fires on the corpus</span>"
)


def never_fires(stats: Mapping[str, object] | None) -> bool:
    """The neuron's largest activation on the scanned corpus (`activation_stats.act_max`)
    is at most 0: it never fires there (the explain stage's status ``silent``)."""
    top = None if stats is None else finite(stats.get("act_max"))
    return top is not None and top <= 0


def on_token_note(ex: Mapping[str, object]) -> list[str]:
    """The words a prompt header adds for an on-token prompt (`examples.on_token`)."""
    return ["on-token (its token came next)"] if ex.get("on_token") == 1 else []


def _example_meta(ex: Mapping[str, object]) -> str:
    parts = []
    if ex.get("kind") == "contrast":
        parts.append("contrast (neuron silent)")
    elif not is_missing(ex.get("rank")):
        parts.append(f"rank {int(ex['rank'])}")  # type: ignore[call-overload]
        parts += on_token_note(ex)
    parts.append(f"activation {fmt(finite(ex.get('trimmed_activation')), 3)}")
    if not is_missing(ex.get("activation")):
        parts.append(f"untrimmed {fmt(finite(ex.get('activation')), 3)}")
    if ex.get("split"):
        parts.append(str(ex.get("split")))
    if not is_missing(ex.get("doc_id")):
        parts.append(f"doc {int(ex['doc_id'])} @ {int(ex['position'])}")  # type: ignore[call-overload]
    parts.append(f"example {int(ex['example_id'])}")  # type: ignore[call-overload]
    return " \u00b7 ".join(parts)


def _legend(kind: str) -> Html:
    if kind == "act":
        return Html(
            '<div class="legend"><span><span class="swatch act"></span> positive activation'
            '</span><span><span class="swatch neg"></span> negative</span><span>scaled to the '
            "largest |activation| in the prompts below; outlined: the firing token; hover a "
            "token for its value</span></div>"
        )
    return Html(
        '<div class="legend"><span><span class="swatch attn"></span> attention from the last '
        "token</span><span>scaled per prompt to the largest weight after the first token "
        "(the first token, often an attention sink, is clipped); hover for the value</span></div>"
    )


def _status_note(row: Mapping[str, object]) -> str:
    """``status: note`` of a row whose stage did not produce a result, else empty."""
    status = row.get("status")
    text = row.get("note")
    bits = []
    if isinstance(status, str) and status not in ("", "ok"):
        bits.append(status.replace("_", " "))
    if isinstance(text, str) and text:
        bits.append(text)
    return ": ".join(bits)


def explanations_block(
    lookup: Lookup, key: tuple[int, int, int, int], primary: tuple[str, str] | None
) -> Html:
    """Each explainer's explanation of a neuron or pair, with each scorer's score."""
    expl = lookup.explanations.get(key, [])
    scores = lookup.scores.get(key, [])
    if not expl and not scores:
        return Html("")
    parts = []
    explainers = sorted({str(e["explainer"]) for e in expl} | {str(s["explainer"]) for s in scores})
    if primary is not None and primary[0] in explainers:
        explainers.remove(primary[0])
        explainers.insert(0, primary[0])
    for name in explainers:
        parts.append(f"<h4>Explanation ({esc(name)})</h4>")
        mine = [e for e in expl if str(e["explainer"]) == name]
        for e in mine:
            text = e.get("explanation")
            if isinstance(text, str) and text:
                parts.append(f'<blockquote class="explanation">{esc(text)}</blockquote>')
            else:
                why = _status_note(e) or "no explanation was produced"
                parts.append(note(f"No explanation: {why}."))
            info = []
            if isinstance(e.get("llm_model"), str) and e.get("llm_model"):
                info.append(f"model {e['llm_model']}")
            for c in ("prompt_tokens", "completion_tokens"):
                if not is_missing(e.get(c)) and e.get(c):
                    info.append(f"{c.replace('_', ' ')} {fmt(e.get(c))}")
            if info:
                parts.append(f'<div class="pmeta">{esc(" · ".join(info))}</div>')
        if not mine:
            parts.append(note("No explanation text recorded."))
        for s in (s for s in scores if str(s["explainer"]) == name):
            parts.append(_score_block(s))
    return Html("".join(parts))


def _score_block(s: Mapping[str, object]) -> Html:
    def n(c: str) -> int | None:
        v = s.get(c)
        return None if v is None or is_missing(v) else int(v)  # type: ignore[call-overload]

    e = finite(s.get("balanced_accuracy"))
    au = finite(s.get("auroc"))
    head = (
        f'<span class="badge score">E {esc(fmt(e))}</span> '
        f"scorer {esc(s.get('scorer'))}, AUROC {esc(fmt(au))}, {esc(fmt(n('n_test')))} "
        "held-out prompts"
    )
    why = _status_note(s)
    if why:
        head += f" ({esc(why)})"
    cells = [n(c) for c in ("tp", "fn", "fp", "tn")]
    if all(c is None for c in cells):
        return Html(f'<div class="score"><p>{head}</p></div>')
    conf = (
        '<table class="confusion"><thead><tr><th></th><th>predicted active</th>'
        "<th>predicted inactive</th></tr></thead><tbody>"
        f"<tr><th>active</th><td>TP {esc(fmt(n('tp')))}</td><td>FN {esc(fmt(n('fn')))}</td></tr>"
        f"<tr><th>inactive</th><td>FP {esc(fmt(n('fp')))}</td><td>TN {esc(fmt(n('tn')))}</td></tr>"
        "</tbody></table>"
    )
    return Html(f'<div class="score"><p>{head}</p>{conf}</div>')


METHOD_LABELS = {
    "direct": "direct",
    "raw": "raw",
    "zero_ablation": "zero abl.",
    "mean_ablation": "mean abl.",
    "resample_ablation": "resample abl.",
    "attribution_patching": "attr. patching",
    "path_patching": "path patching",
}


def _method_label(method: str) -> Html:
    label = METHOD_LABELS.get(method, method)
    return Html(f'<span title="{esc(method)}">{esc(label)}</span>')


def _heads_table(lookup: Lookup, key: tuple[int, int], plan: ReportPlan, max_heads: int) -> Html:
    att = lookup.attributions.get(key, {})
    pairs = lookup.pairs.get(key, {})
    if not att and not pairs:
        return note("No attributions yet (the attribute stage).")
    methods = list(lookup.methods) if att else []
    heads = list(att) + [h for h in pairs if h not in att]

    def sort_value(h: tuple[int, int]) -> float:
        v = att.get(h, {}).get("direct")
        if v is None:
            v = finite(pairs.get(h, {}).get("mean_direct"))
        return -v if v is not None and math.isfinite(v) else math.inf

    heads.sort(key=lambda h: (sort_value(h), h))
    rows = []
    shown_pairs = plan.pair_keys
    for hl, h in heads[:max_heads]:
        name = f"L{hl}H{h}"
        if (*key, hl, h) in shown_pairs:
            label: object = Html(f'<a href="#{pair_anchor(*key, hl, h)}">{name}</a>')
        else:
            label = name
        means = att.get((hl, h), {})
        row: list[object] = [label, *(means.get(m) for m in methods)]
        pr = pairs.get((hl, h))
        row.append(None if pr is None else finite(pr.get("active_rate")))
        row.append(None if pr is None else Html("yes" if bool(pr.get("kept")) else "no"))
        row.append(None if pr is None else finite(pr.get("ks_stat")))
        row.append(None if pr is None else finite(pr.get("ks_pvalue")))
        eff = lookup.head_effects.get((*key, hl, h))
        row.append(float(np.mean(list(eff.values()))) if eff else None)
        rows.append(row)
    headers: list[str | Html] = ["head", *(_method_label(m) for m in methods)]
    headers += ["active rate", "kept", "KS D", "KS p", "ablation \u0394log p"]
    out = table(headers, rows, cls="sortable")
    more = len(heads) - max_heads
    if more > 0:
        out = Html(
            out + note(f"{more} more upstream heads not shown (by mean direct attribution).")
        )
    return Html(
        out
        + note(
            "Mean attribution per method over the neuron's prompts; ablation "
            "\u0394log p: mean change in log p(token) when the head is zero-ablated "
            "(kept pairs only)."
        )
    )


def effect_groups(eff: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """A neuron's effects rows per intervention, head interventions per head (their
    label names it: ``head_source_swap L0H2``)."""
    if "head" not in eff.columns or "head_layer" not in eff.columns:
        return [(str(k), g) for k, g in eff.groupby("intervention", sort=True)]
    head = eff["head"]
    label = eff.intervention.astype(str).where(
        head.isna(),
        eff.intervention.astype(str)
        + " L"
        + eff.head_layer.fillna(-1).astype(int).astype(str)
        + "H"
        + head.fillna(-1).astype(int).astype(str),
    )
    return [(str(k), g) for k, g in eff.groupby(label, sort=True)]


def effect_summary(eff: pd.DataFrame | None) -> list[dict[str, object]]:
    """Mean effect of each intervention on one neuron (see `effect_groups`), one dict per
    row of the report's and the dashboard's intervention table."""
    if eff is None or eff.empty:
        return []
    rows: list[dict[str, object]] = []
    for name, g in effect_groups(eff):
        row: dict[str, object] = {
            "intervention": name,
            "prompts": len(g),
            "mean_delta_logprob": float(g.delta_logprob.mean()),
            "mean_kl": float(g.kl.mean()),
        }
        for c in ("delta_prob", "delta_activation"):
            row[f"mean_{c}"] = float(g[c].mean()) if c in g.columns else None
        rows.append(row)
    return rows


def effects_table(rows: Sequence[Mapping[str, object]]) -> Html:
    """The intervention table of `effect_summary` rows (report and dashboard)."""
    if not rows:
        return note("No interventions on the neuron yet (the verify stage).")
    keys = (
        "intervention",
        "prompts",
        "mean_delta_logprob",
        "mean_kl",
        "mean_delta_prob",
        "mean_delta_activation",
    )
    return Html(
        table(
            [
                "intervention",
                "prompts",
                "mean \u0394log p",
                "mean KL",
                "mean \u0394p",
                "mean \u0394activation",
            ],
            [[r[k] for k in keys] for r in rows],
            digits=4,
        )
        + (note(SWAP_NOTE) if any(_is_swap(r) for r in rows) else "")
    )


def _is_swap(row: Mapping[str, object]) -> bool:
    name = str(row["intervention"])
    return name == "cue_swap" or name.startswith("head_source_swap")


SWAP_NOTE = (
    "cue_swap (top prompts only): an earlier word that the neuron depends on is swapped for "
    "another word seen in the same slot; head_source_swap LxHy: only head LxHy's output "
    "from that swapped prompt is patched into the clean run."
)


# ----------------------------------------------------------------------- sections


def neuron_section(
    p: NeuronPlan,
    lookup: Lookup,
    plan: ReportPlan,
    views: ModelViews | None,
    decode: TokenText | None,
    max_heads: int,
) -> Html:
    """One neuron: its statistics, vocabulary, top prompts with activation shading,
    upstream heads under every attribution method, and the causal effects."""
    info = p.info
    token = str(info.get("token", ""))
    group = "selected" if bool(info.get("selected")) else "baseline"
    first_pair = next(iter(lookup.pairs.get(p.key, {}).values()), {})
    mech = first_pair.get("mechanism")
    mech = None if is_missing(mech) else str(mech)
    head = [
        f'<section class="card neuron" id="{neuron_anchor(*p.key)}">',
        f"<h3>{p.name} {token_pill(token)} <span class='badge {group}'>{group}</span>",
    ]
    silent = never_fires(lookup.stats.get(p.key))
    if silent:
        head.append(" " + NEVER_FIRES_BADGE)
    elif mech:
        head.append(
            f' <span class="badge" title="how the attribution is spread over heads">'
            f"mechanism: {esc(mech)}</span>"
        )
    head.append("</h3>")
    items: list[tuple[str, object]] = [
        ("congruence", finite(info.get("congruence"))),
        ("congruence z", finite(info.get("congruence_z"))),
        ("vocab kurtosis", finite(info.get("vocab_kurtosis"))),
        ("vocab skew", finite(info.get("vocab_skew"))),
    ]
    target = info.get("target_token_id")
    if not is_missing(target) and int(target) >= 0 and int(target) != int(info.get("token_id", -1)):  # type: ignore[call-overload, arg-type]
        items.append(("target token id", int(target)))  # type: ignore[call-overload]
    if "top1_share" in first_pair:
        items.append(("top head share", finite(first_pair.get("top1_share"))))
    st = lookup.stats.get(p.key)
    stat_items: list[tuple[str, object]] = []
    if st is not None:
        stat_items = [
            ("activation mean", finite(st.get("act_mean"))),
            ("activation std", finite(st.get("act_std"))),
            ("share positive", finite(st.get("act_frac_pos"))),
            ("activation max", finite(st.get("act_max"))),
            ("prompts", p.n_examples),
        ]
    parts = head + ['<div class="grid"><div>', kv(items), "</div>"]
    parts += [
        "<div>",
        kv(stat_items) if stat_items else note("No activation statistics yet."),
        "</div></div>",
    ]
    vocab = views.vocab.get(p.key) if views is not None else None
    if vocab is not None and decode is not None:
        parts.append('<div class="grid"><div><h4>Promoted tokens</h4>')
        parts.append(_vocab_list(vocab.promoted, decode))
        parts.append("</div><div><h4>Suppressed tokens</h4>")
        parts.append(_vocab_list(vocab.suppressed, decode))
        parts.append("</div></div>")
    else:
        parts.append(
            '<p class="note">Top token '
            + token_pill(token)
            + "; the promoted and suppressed tokens need the model.</p>"
        )
    parts.append("<h4>Top prompts</h4>")
    if not p.example_ids:
        parts.append(note("No prompts yet (the scan and examples stages)."))
    else:
        acts = [views.activations.get(i) for i in p.example_ids] if views else []
        vals = [a for a in acts if a is not None and len(a)]
        scale = max((float(np.abs(a).max()) for a in vals), default=0.0)
        if vals:
            parts.append(_legend("act"))
        for i in p.example_ids:
            ex = lookup.examples[i]
            a = views.activations.get(i) if views is not None else None
            parts.append(_prompt(ex, decode, a, scale, "act", "activation", _example_meta(ex)))
        if p.n_examples > len(p.example_ids):
            parts.append(note(f"{p.n_examples - len(p.example_ids)} more prompts not shown."))
    parts.append("<h4>Upstream heads</h4>")
    parts.append(_heads_table(lookup, p.key, plan, max_heads))
    parts.append("<h4>Interventions on the neuron</h4>")
    parts.append(effects_table(effect_summary(lookup.neuron_effects.get(p.key))))
    parts.append(explanations_block(lookup, (*p.key, NO_HEAD, NO_HEAD), plan.primary_scores))
    parts.append("</section>")
    return Html("".join(parts))


def pair_section(
    p: PairPlan,
    lookup: Lookup,
    plan: ReportPlan,
    views: ModelViews | None,
    decode: TokenText | None,
) -> Html:
    """One kept pair: its statistics, explanation and score with the confusion matrix,
    and its prompts with the head's attention from the last token."""
    info = p.info
    token = str(info.get("token", "")) if not is_missing(info.get("token")) else ""
    neuron_link = (
        f'<a href="#{neuron_anchor(p.layer, p.neuron)}">L{p.layer}N{p.neuron}</a>'
        if (p.layer, p.neuron) in plan.neuron_keys
        else f"L{p.layer}N{p.neuron}"
    )
    parts = [
        f'<section class="card pair" id="{pair_anchor(*p.key)}">',
        f"<h3>L{p.head_layer}H{p.head} \u2192 {neuron_link}",
        f" {token_pill(token)}" if token else "",
    ]
    if p.e is not None:
        parts.append(f' <span class="badge score">E {esc(fmt(p.e))}</span>')
    if bool(info.get("baseline")) and not is_missing(info.get("baseline")):
        parts.append(' <span class="badge baseline">baseline neuron</span>')
    parts.append("</h3>")
    eff = lookup.head_effects.get(p.key, {})
    labels_all = p.labels
    d_act = [v for i, v in eff.items() if labels_all.get(i) is True]
    d_in = [v for i, v in eff.items() if labels_all.get(i) is False]
    items: list[tuple[str, object]] = [
        ("active rate (train)", finite(info.get("active_rate"))),
        ("training prompts", None if is_missing(info.get("n_train")) else int(info["n_train"])),  # type: ignore[call-overload]
        ("mean direct attribution", finite(info.get("mean_direct"))),
        ("KS D", finite(info.get("ks_stat"))),
        ("KS p-value", finite(info.get("ks_pvalue"))),
    ]
    items2: list[tuple[str, object]] = [
        ("ablation \u0394log p, all", float(np.mean(list(eff.values()))) if eff else None),
        ("ablation \u0394log p, head active", float(np.mean(d_act)) if d_act else None),
        ("ablation \u0394log p, head inactive", float(np.mean(d_in)) if d_in else None),
        ("mechanism", None if is_missing(info.get("mechanism")) else str(info.get("mechanism"))),
    ]
    parts += ['<div class="grid"><div>', kv(items), "</div><div>", kv(items2), "</div></div>"]
    expl = explanations_block(lookup, p.key, plan.primary_scores)
    parts.append(expl if expl else note("No explanation yet (the explain and score stages)."))
    parts.append(f"<h4>What L{p.head_layer}H{p.head} looks up</h4>")
    if not p.example_ids:
        parts.append(note("No prompts for this neuron."))
    else:
        if views is not None:
            parts.append(_legend("attn"))
        for i, active in zip(p.example_ids, p.active, strict=True):
            ex = lookup.examples[i]
            key = (i, p.head_layer, p.head)
            row = views.attention.get(key) if views is not None else None
            scale = 0.0
            if row is not None and len(row):
                rest = row[1:] if len(row) > 1 else row
                scale = float(rest.max()) if float(rest.max()) > 0 else float(row.max())
            parts.append(
                _prompt(ex, decode, row, scale, "attn", "attention", _example_meta(ex), active)
            )
    parts.append("</section>")
    return Html("".join(parts))
