"""The offline report of a fix: one self-contained page for whoever signs off the edit.

`render_fix_report` turns what ``fix.json`` holds (built by `lookuplens.fix.run`) into
HTML: the verdict, what changed in the weights, why (the evidence chain), before and
after on the prompts (and the held-out check prompts), the side effects, the comparison
with the naive edits, and the candidates that lost. Nothing is loaded from the network
(inline CSS and SVG, no script; a Content-Security-Policy forbids any fetch); every text
from the inputs is escaped. The stylesheet is the run report's (`report.assets.CSS`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from lookuplens.fix.report_html import kl, pct, prob, requirement_figure, requirement_what, tiles
from lookuplens.fix.report_parts import (
    before_after_section,
    candidates_section,
    naive_section,
    side_effects_section,
)
from lookuplens.report.assets import CSS
from lookuplens.report.markup import Html, esc, generic, note
from lookuplens.report.tokens import token_pill

__all__ = ["render_fix_report"]

DASH = "\u2013"

KINDS = {
    "path": "a rank-one change of the head\u2019s output weights (rank two for gated MLPs): "
    "what the head writes along the neuron\u2019s input direction is removed (scale 0) or "
    "multiplied by the scale, at every position and on every input; the rest of the "
    "head\u2019s output is untouched.",
    "neuron": "the neuron\u2019s output weights (its row of W_out) are multiplied by the "
    "scale: at 0 it no longer writes anything into the residual stream.",
    "head": "the head\u2019s output projection is multiplied by the scale (the attention "
    "output bias, shared by all heads, stays).",
    "logit": "a rank-one change of the neuron\u2019s output weights: what it writes along the "
    "target\u2019s logit direction (the target\u2019s unembedding against its alternatives: "
    "the contrast token, or what the model predicts instead on the prompts) is removed "
    "(scale 0), scaled, or reversed (a negative scale); the rest of its output is "
    "untouched, so it moves probability between the target and its alternatives where the "
    "neuron fires.",
}

EXTRA_CSS = """
.verdict { border-radius: 8px; padding: 12px 16px; margin: 14px 0; font-size: 16px;
  border: 1px solid; }
.verdict.ok { background: #dafbe1; border-color: #4ac26b; }
.verdict.bad { background: #ffebe9; border-color: #ff8182; }
.verdict .line { font-size: 19px; font-weight: 600; margin-bottom: 4px; }
.fixname { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12px; overflow-wrap: anywhere; color: var(--muted); margin: 4px 0 0; }
.number.over { background: #ffebe9; }
.number.good { background: #dafbe1; }
.card.check { border-color: #4ac26b; border-width: 2px; }
.card.check h3 { font-size: 19px; }
.note-plain { margin: 6px 0; }
section > h3 { margin-top: 20px; }
td.ptd { max-width: 560px; overflow-wrap: anywhere; line-height: 1.35; }
.numbers { grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); }
.number .v { font-size: 18px; white-space: nowrap; }
.card.check.low { border-color: #ff8182; background: #ffebe9; }
.tokpill.is-target { background: #fff8c5; border-color: #d4a72c; }
.nowrap, table.prompts th { white-space: nowrap; }
td.na { color: var(--muted); font-style: italic; }
tr.chosen td { background: #dafbe1; }
.badge.yes { background: #dafbe1; color: #116329; }
.badge.no { background: #ffebe9; color: #a40e26; }
ul.kinds { margin: 6px 0; padding-left: 20px; }
svg.dumbbell { display: block; margin: 8px 0; }
details > summary { cursor: pointer; margin: 8px 0; font-weight: 600; }
"""

SECTIONS = [
    ("verdict", "Verdict"),
    ("changed", "What changed"),
    ("why", "Why"),
    ("before-after", "Before and after"),
    ("side-effects", "Side effects"),
    ("naive", "Against the naive edits"),
    ("candidates", "Candidates that lost"),
    ("load", "Load the model"),
]


def _within_budget(fix: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(within the budget, KL within, controls within) for the exported model."""
    after, before = fix["after"], fix["before"]
    kl_ok = float(after["side_effects"]["kl"]) <= float(fix["target"]["max_kl"])
    acc0, acc1 = before.get("controls_accuracy"), after.get("controls_accuracy")
    drop = float((fix.get("settings") or {}).get("max_control_drop", 0.0))
    controls_ok = acc0 is None or acc1 is None or acc1 >= acc0 - drop - 1e-12
    return kl_ok and controls_ok, kl_ok, controls_ok


def _summary(edits: list[dict[str, Any]]) -> str:
    counts = Counter(str(e["kind"]) for e in edits)
    return " + ".join(f"{n} {k} edit{'s' if n > 1 else ''}" for k, n in counts.items())


def _header(fix: dict[str, Any]) -> Html:
    t, chosen, after = fix["target"], fix["chosen"], fix["after"]
    meets = bool(after["meets_requirement"])
    within, kl_ok, controls_ok = _within_budget(fix)
    contrast = (
        Html(f"{token_pill(t['contrast'])} (logit difference against it)")
        if t.get("contrast") is not None
        else Html("none")
    )
    budget = f"mean KL \u2264 {kl(t['max_kl'])} nats per held-out token"
    drop = (fix.get("settings") or {}).get("max_control_drop")
    if fix["before"].get("controls_accuracy") is not None and drop is not None:
        budget += (
            "; no control may lose its answer"
            if not drop
            else f"; the controls' accuracy may drop by at most {pct(drop)}"
        )
    rows = [
        ("model", Html(f"<code>{esc(fix['model'])}</code> ({esc(fix.get('model_type', '?'))})")),
        ("target token", Html(f"{token_pill(t['token'])} (id {esc(t['id'])})")),
        ("contrast", contrast),
        ("goal", Html(f"{esc(t['goal'])} the target")),
        ("requirement", Html(esc(t["requirement"]))),
        ("budget", Html(esc(budget))),
    ]
    kv = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in rows)
    ok = meets and within
    req = "meets the requirement" if meets else "does NOT meet the requirement"
    bud = "within the budget" if within else "OVER the budget"
    why_over = []
    if not kl_ok:
        why_over.append("the KL is above the budget")
    if not controls_ok:
        why_over.append("the controls' accuracy fell too far")
    s = after["side_effects"]
    reload_diff = (fix.get("reload_check") or {}).get("max_abs_prob_diff")
    mark = "\u2714" if ok else "\u2718"
    line = f"{mark} The chosen fix {req} and is {bud}."
    detail = (
        f"{requirement_figure(fix, after['achieved'])} (needed {pct(t['require'])}); "
        f"mean KL {kl(s['kl'])} (budget {kl(t['max_kl'])})"
        + (f"; {', '.join(why_over)}" if why_over else "")
        + ". Measured on the exported model after saving and reloading it; the largest "
        f"difference of p(target) from the in-memory edit: {prob(reload_diff)}."
    )
    verdict = (
        f'<div class="verdict {"ok" if ok else "bad"}"><div class="line">{esc(line)}</div>'
        f"<div><b>{esc(_summary(chosen['edits']))}</b> (ranked {esc(chosen.get('rank'))} of "
        f"{len(fix.get('candidates') or [])} candidates). {esc(detail)}</div>"
        f'<p class="fixname" title="the fix\'s full name">{esc(chosen["name"])}</p></div>'
    )
    if isinstance(reload_diff, (int, float)) and reload_diff > 1e-3:
        verdict += note(
            f"The reloaded model's p(target) differs from the measured edit by up to "
            f"{prob(reload_diff)}: the figures on this page are the reloaded model's.",
            warn=True,
        )
    check = fix.get("check_prompts")
    items = [
        (
            f"{prob(fix['before']['target']['mean_prob'])} \u2192 "
            f"{prob(after['target']['mean_prob'])}",
            "mean p(target) on the prompts",
            "",
        ),
        (pct(after["achieved"]), requirement_what(fix), "good" if meets else "over"),
    ]
    if check and t["goal"] == "decrease":
        good = "good" if check["prob_removed"] >= t["require"] else "over"
        items.append((pct(check["prob_removed"]), "p(target) removed, held-out check", good))
    items.append((kl(s["kl"]), "mean KL per token", "good" if kl_ok else "over"))
    if after.get("controls_accuracy") is not None:
        items.append(
            (
                f"{pct(fix['before']['controls_accuracy'])} \u2192 "
                f"{pct(after['controls_accuracy'])}",
                "controls accuracy",
                "good" if controls_ok else "over",
            )
        )
    title = f"lookuplens fix: {t['goal']} \u201c{t['token']}\u201d on {fix['model']}"
    return Html(
        f'<header class="top" id="verdict"><h1>{esc(title)}</h1></header>'
        f'<dl class="kv">{kv}</dl>{verdict}{tiles(items)}'
    )


def _edit_effect(e: dict[str, Any]) -> str:
    head = f"L{e.get('head_layer')}H{e.get('head')}"
    neuron = f"L{e.get('layer')}N{e.get('neuron')}"
    scale = float(e["scale"])
    how = "removed" if scale == 0 else f"\u00d7{scale:g}"
    if e["kind"] == "path":
        return f"what {head} writes into {neuron}'s input: {how}"
    if e["kind"] == "neuron":
        return f"{neuron}'s output: {how}"
    if e["kind"] == "logit":
        how = "reversed, " + how if scale < 0 else how
        return f"{neuron}'s push towards {e.get('token_text') or e.get('token')!r}: {how}"
    return f"{head}'s output: {how}"


def _changed(fix: dict[str, Any]) -> Html:
    edits = fix["chosen"]["edits"]
    kinds = [k for k in KINDS if any(e["kind"] == k for e in edits)]
    rows = []
    for i, e in enumerate(edits, 1):
        neuron = f"L{e['layer']}N{e['neuron']}" if e.get("layer") is not None else "\u2013"
        head = f"L{e['head_layer']}H{e['head']}" if e.get("head_layer") is not None else "\u2013"
        rows.append(
            f'<tr><td class="num">{i}</td><td>{esc(e["kind"])}</td>'
            f'<td class="mono">{esc(neuron)}</td><td class="mono">{esc(head)}</td>'
            f'<td class="num">{float(e["scale"]):g}</td>'
            f"<td>{esc(_edit_effect(e))}</td></tr>"
        )
    expl = "".join(f"<li><b>{esc(k)}</b>: {esc(KINDS[k])}</li>" for k in kinds)
    return Html(
        '<section id="changed"><h2>What changed</h2>'
        f'<p class="note-plain">{len(edits)} weight edit(s), each a change of the model\u2019s '
        "own parameters (no hooks): the exported model runs anywhere plain transformers runs."
        f'</p><ul class="kinds">{expl}</ul>'
        '<div class="scroll"><table><thead><tr><th>#</th><th>kind</th><th>neuron</th>'
        "<th>head</th><th>scale</th><th>what it does</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div></section>"
    )


def _why(fix: dict[str, Any]) -> Html:
    ev = fix.get("evidence") or {}
    t = fix["target"]
    edited_n: dict[tuple[int, int], list[str]] = {}
    for e in fix["chosen"]["edits"]:
        if e.get("layer") is not None:
            what = {"neuron": "neuron", "logit": "logit"}.get(
                str(e["kind"]), f"path from L{e.get('head_layer')}H{e.get('head')}"
            )
            edited_n.setdefault((int(e["layer"]), int(e["neuron"])), []).append(what)
    what = "logit difference against the contrast" if t.get("contrast") else "logit"
    out = [
        '<section id="why"><h2>Why: the evidence</h2>',
        f'<p class="note-plain">{esc(ev.get("prompts_decomposed", 0))} of '
        f"{len(fix['prompts'])} prompts were decomposed (lookuplens why): each neuron\u2019s "
        f"direct contribution to the target\u2019s {esc(what)}, averaged over those prompts "
        "(0 where it was not among the top neurons), and the heads that drive it (mean "
        "direct attribution of its activation). These neurons and heads gave the "
        "candidate edits.</p>",
    ]
    rows = []
    for n in ev.get("neurons") or []:
        key = (int(n["layer"]), int(n["neuron"]))
        heads = ", ".join(
            f"L{h['head_layer']}H{h['head']} ({float(h['mean_direct']):.3f})" for h in n["heads"]
        )
        rows.append(
            f'<tr><td class="mono">L{key[0]}N{key[1]}</td><td>{token_pill(n["top_token"])}</td>'
            f'<td class="num">{float(n["mean_contribution"]):+.3f}</td>'
            f'<td class="num">{float(n.get("mean_activation") or 0):.3f}</td>'
            f'<td class="num">{pct(n.get("top_share"))}</td>'
            f'<td class="mono">{esc(heads or DASH)}</td>'
            f"<td>{esc(', '.join(edited_n.get(key, [])) or DASH)}</td></tr>"
        )
    if rows:
        out.append(
            '<div class="scroll"><table><thead><tr><th>neuron</th><th>top token</th>'
            "<th>mean contribution</th><th>mean activation</th><th>among the top on</th>"
            "<th>driving heads (mean direct)</th><th>edited by the fix</th></tr></thead>"
            "<tbody>" + "".join(rows) + "</tbody></table></div>"
        )
    else:
        out.append(note("No neuron evidence was recorded (the edits were given, not proposed)."))
    findings = ev.get("run_findings") or []
    if findings:
        out.append(f"<h3>Findings of the run ({len(findings)}) that added candidates</h3>")
        out.append(generic(findings))
    else:
        out.append(note("No run findings were used (no --run, or none matched)."))
    return Html("".join(out) + "</section>")


def _footer(fix: dict[str, Any]) -> Html:
    from lookuplens import __version__

    model_dir = (fix.get("reload_check") or {}).get("model_dir", "model")
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f'model = AutoModelForCausalLM.from_pretrained("DIR/{model_dir}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("DIR/{model_dir}")'
    )
    inputs = fix.get("inputs") or {}
    files = [
        (k, inputs.get(k))
        for k in ("prompts_file", "controls_file", "check_prompts_file", "run_dir")
        if inputs.get(k)
    ]
    settings = ", ".join(f"{k}={v}" for k, v in (fix.get("settings") or {}).items())
    listed = "".join(f"<dt>{esc(k)}</dt><dd><code>{esc(v)}</code></dd>" for k, v in files)
    return Html(
        '<section id="load"><h2>Load the edited model</h2>'
        "<p>DIR is the folder holding this page and fix.json; the edited weights are in "
        f"<code>DIR/{esc(model_dir)}</code>:</p><pre>{esc(code)}</pre>"
        f'<dl class="kv">{listed}<dt>settings</dt><dd><code>{esc(settings)}</code></dd></dl>'
        "</section>"
        f"<footer>fix.json format {esc(fix.get('format', '?'))}; page by lookuplens "
        f"{esc(__version__)}. The page is self-contained: it loads nothing from the network."
        "</footer>"
    )


def render_fix_report(fix: dict[str, Any]) -> str:
    """The report page of `fix` (what ``fix.json`` holds, with ``after`` and
    ``reload_check`` filled in by the export)."""
    title = f"lookuplens fix: \u201c{fix['target']['token']}\u201d on {fix['model']}"
    csp = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    nav = "".join(f'<li><a href="#{a}">{esc(label)}</a></li>' for a, label in SECTIONS)
    body = [
        _header(fix),
        _changed(fix),
        _why(fix),
        before_after_section(fix),
        side_effects_section(fix),
        naive_section(fix),
        candidates_section(fix),
        _footer(fix),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}{EXTRA_CSS}</style></head><body>"
        '<nav class="toc" aria-label="Contents"><h2>Contents</h2><ul>'
        f"{nav}</ul></nav><main>" + "".join(body) + "</main></body></html>\n"
    )
