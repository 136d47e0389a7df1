"""The measured sections of the fix report: before and after, side effects, the naive
edits, the candidates.

Every value comes from ``fix.json`` (see `lookuplens.fix.run`); text is escaped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from lookuplens.fix.report_html import (
    dumbbell,
    kl,
    num,
    pct,
    pill,
    prob,
    requirement_what,
    rows_table,
    tail,
    td,
    tiles,
)
from lookuplens.report.markup import Html, esc, note
from lookuplens.report.tokens import token_label, token_pill

__all__ = [
    "before_after_section",
    "candidates_section",
    "naive_section",
    "side_effects_section",
]

MAX_CANDIDATES = 40
"""Candidates listed; the rest are counted."""


def _prompt_rows(
    texts: Sequence[str], before: dict[str, Any], after: dict[str, Any], target: str
) -> Html:
    contrast = before.get("logit_diff") is not None and after.get("logit_diff") is not None
    headers = ["#", "prompt (end)", "p before", "p after", "\u0394p", "top before", "top after"]
    if contrast:
        headers[5:5] = ["logit diff before", "after"]
    rows = []
    for i, text in enumerate(texts):
        b, a = before["prob"][i], after["prob"][i]
        cells = [
            td(str(i + 1)),
            td(tail(text), "ptd"),
            td(prob(b)),
            td(prob(a)),
            td(num(a - b, 4)),
        ]
        if contrast:
            cells += [td(num(before["logit_diff"][i], 2)), td(num(after["logit_diff"][i], 2))]
        cells += [td(pill(before["top"][i], target), ""), td(pill(after["top"][i], target), "")]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return rows_table(headers, rows, "prompts")


def _repeats(texts: Sequence[str], tops: Sequence[str]) -> int:
    """Prompts whose top prediction repeats their last word (``wished for`` -> `` for``)."""
    n = 0
    for text, top in zip(texts, tops, strict=True):
        words = text.split()
        n += bool(words) and top.startswith(" ") and top.strip() == words[-1]
    return n


def _tops(texts: Sequence[str], after: dict[str, Any], n: int = 8) -> Html:
    tops = [str(t) for t in after.get("top", [])]
    counts = Counter(tops)
    items = ", ".join(f"{token_label(t)} \u00d7{c}" for t, c in counts.most_common(n))
    more = f" and {len(counts) - n} more" if len(counts) > n else ""
    out = (
        f'<p class="note-plain">Top predictions after the edit: <span class="mono">{items}'
        f"</span>{esc(more)}.</p>"
    )
    rep = _repeats(texts, tops)
    if rep:
        out += (
            f'<p class="warn">On {rep} of {len(tops)} prompts the new top prediction repeats '
            "the prompt\u2019s last word (as in \u201cwished for for\u201d): check that what "
            "replaces the target is acceptable.</p>"
        )
    return Html(out)


def before_after_section(fix: dict[str, Any]) -> Html:
    before, after = fix["before"]["target"], fix["after"]["target"]
    goal, token = fix["target"]["goal"], str(fix["target"]["token"])
    out = ['<section id="before-after"><h2>Before and after</h2>']
    check = fix.get("check_prompts")
    if check:
        b, a = check["before"]["mean_prob"], check["after"]["mean_prob"]
        if goal == "decrease":
            figure = f"{pct(check['prob_removed'])} of p(target) removed"
        else:
            figure = f"p(target) \u00d7{a / max(b, 1e-300):.2f}"
        wins = ""
        cb, ca = check["before"].get("contrast_wins"), check["after"].get("contrast_wins")
        if cb is not None and ca is not None and cb and ca:
            wins = (
                f"; the contrast token wins on {pct(sum(cb) / len(cb))} of them before, "
                f"{pct(sum(ca) / len(ca))} after"
            )
        low = (
            goal == "decrease"
            and fix["target"].get("contrast") is None
            and check["prob_removed"] < fix["target"]["require"]
        )
        req = pct(fix["target"]["require"])
        vs = (
            f" The requirement ({req}) was checked on the prompts the fix was chosen on"
            + (f"; here it falls short of {req}." if low else ".")
            if goal == "decrease" and fix["target"].get("contrast") is None
            else ""
        )
        out.append(
            f'<div class="card check{" low" if low else ""}"><h3>Held-out check: '
            f"{esc(figure)}</h3><p>On {len(check['prompts'])} prompts of the same look-up "
            "that were never used to choose the fix: mean p(target) "
            f"<b>{prob(b)}</b> before, <b>{prob(a)}</b> after{esc(wins)}.{esc(vs)} This is "
            "the honest generalisation figure; the figures below are on the prompts the fix "
            "was chosen on.</p></div>"
        )
    else:
        out.append(
            note(
                "No held-out check prompts were given (--check-prompts): the figures below "
                "are on the prompts the fix was chosen on, so they may flatter it."
            )
        )
    out.append(
        tiles(
            [
                (prob(before["mean_prob"]), "mean p(target) before", ""),
                (prob(after["mean_prob"]), "mean p(target) after", ""),
                (pct(fix["after"]["achieved"]), requirement_what(fix), ""),
                (str(len(fix["prompts"])), "prompts", ""),
            ]
        )
    )
    out.append(dumbbell(before["prob"], after["prob"]))
    out.append(_tops(fix["prompts"], after))
    out.append(_prompt_rows(fix["prompts"], before, after, token))
    if check:
        out.append(
            f"<details><summary>The {len(check['prompts'])} held-out check prompts</summary>"
            + dumbbell(check["before"]["prob"], check["after"]["prob"])
            + _prompt_rows(check["prompts"], check["before"], check["after"], token)
            + "</details>"
        )
    return Html("".join(out) + "</section>")


def side_effects_section(fix: dict[str, Any]) -> Html:
    s, inputs = fix["after"]["side_effects"], fix["inputs"]
    max_kl = fix["target"]["max_kl"]
    over = "over" if s["kl"] > max_kl else "good"
    out = [
        '<section id="side-effects"><h2>Side effects</h2>',
        tiles(
            [
                (kl(s["kl"]), f"mean KL without the target, budget {kl(max_kl)}", over),
                (kl(s["kl_all"]), "plain KL (target included)", ""),
                (kl(s["kl_p95"]), "95th percentile KL", ""),
                (num(s["loss_change"], 4), "loss change (nats/token)", ""),
            ]
        ),
        '<p class="note-plain">KL(original \u2016 edited) on '
        f"{int(inputs['side_tokens']):,} tokens of held-out text (<code>"
        f"{esc(inputs['corpus'])}</code>, {int(inputs.get('side_sequences') or 0):,} "
        "sequences). The budgeted figure compares the next-token distributions over every "
        "token but the target (and the contrast token), renormalised, at every position: "
        "moving probability into or out of the target is the point of the fix, what the "
        "model predicts instead is a side effect. The plain KL over every token is shown "
        "beside it; the original model predicts the target at "
        f"{int(inputs['side_on_target_tokens']):,} of the positions. Loss: "
        f"{fix['before'].get('loss', 0):.4f} \u2192 {s['loss']:.4f} nats/token.</p>",
    ]
    acc0, acc1 = fix["before"].get("controls_accuracy"), fix["after"].get("controls_accuracy")
    controls = fix.get("controls") or []
    if acc0 is None or acc1 is None or not controls:
        out.append(note("No control prompts were given (--controls)."))
        return Html("".join(out) + "</section>")
    out.append(f"<h3>Controls ({len(controls)} prompts whose answer must not change)</h3>")
    out.append(
        tiles(
            [
                (pct(acc0), "accuracy before", ""),
                (pct(acc1), "accuracy after", "over" if acc1 < acc0 else "good"),
            ]
        )
    )
    ba, aa = fix["before"]["controls_answers"], fix["after"]["controls_answers"]
    rows = []
    for i, (c, b, a) in enumerate(zip(controls, ba, aa, strict=True)):
        if b != a:
            rows.append(
                f"<tr>{td(str(i + 1))}{td(tail(c['prompt']), 'ptd')}"
                f"{td(token_pill(c['expected']), '')}{td(token_pill(b), '')}"
                f"{td(token_pill(a), '')}</tr>"
            )
    if rows:
        out.append(f"<h4>{len(rows)} control(s) whose answer changed</h4>")
        out.append(rows_table(["#", "prompt (end)", "expected", "before", "after"], rows))
    else:
        out.append('<p class="note-plain">No control changed its answer.</p>')
    return Html("".join(out) + "</section>")


def _ratio(r: float) -> str:
    if r >= 1:
        return f"{r:.1f}\u00d7 (the naive edit costs more)"
    return f"{r:.3f}\u00d7 (the naive edit costs {1 / r:.1f}\u00d7 less)"


def naive_section(fix: dict[str, Any]) -> Html:
    out = [
        '<section id="naive"><h2>Against the naive edits</h2>',
        '<p class="note-plain">Zeroing (or scaling) a whole head or neuron, compared with '
        "the fix at the same effect: the stronger of the two is scaled back until both "
        "change the target score equally, then their side effects (mean KL per token) are "
        "compared. The ratio is naive KL / fix KL. The \u201calone\u201d columns show the "
        "naive edit at full strength: whether it could do the job at all.</p>",
    ]
    naive = fix.get("naive") or []
    if not naive:
        out.append(note("No naive edit was compared (none differs from the fix, or --no-naive)."))
        return Html("".join(out) + "</section>")
    headers = [
        "naive edit",
        "alone: effect",
        "alone: requirement figure",
        "alone: KL",
        "alone: controls",
        "compared at effect",
        "naive KL",
        "fix KL",
        "KL ratio",
    ]
    rows = []
    for r in naive:
        full = r.get("full") or {}
        cells = [
            td(f'<span class="mono nowrap">{esc(r["edit"]["name"])}</span>', ""),
            td(num(full.get("effect"))),
            td(pct(full.get("achieved"))),
            td(kl((full.get("side_effects") or {}).get("kl"))),
            td(pct(full.get("controls_accuracy"))),
        ]
        nm, fm = r.get("naive_matched"), r.get("fix_matched")
        if nm is None or fm is None:
            cells.append(
                '<td colspan="4" class="na">no effect in the goal\'s direction to compare</td>'
            )
        else:
            ratio = r.get("kl_ratio")
            cells += [
                td(num(r["at_effect"])),
                td(kl(nm["side_effects"]["kl"])),
                td(kl(fm["side_effects"]["kl"])),
                td(
                    esc(
                        _ratio(float(ratio))
                        if ratio is not None
                        else "\u2013 (the fix\u2019s KL is 0)"
                    )
                ),
            ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    out.append(rows_table(headers, rows))
    return Html("".join(out) + "</section>")


def _yes(v: object) -> str:
    return '<span class="badge yes">yes</span>' if v else '<span class="badge no">no</span>'


def candidates_section(fix: dict[str, Any]) -> Html:
    cands = sorted(fix.get("candidates") or [], key=lambda c: int(c.get("rank") or 0))
    chosen = fix["chosen"]["name"]
    out = [
        '<section id="candidates"><h2>Candidates that lost</h2>',
        f'<p class="note-plain">Every candidate was applied and measured ({len(cands)} in all). '
        "Ranking: within the budget and meeting the requirement, smallest KL first; then "
        "within the budget, largest effect first; then over the budget. Effect: the change "
        "of the target score in the goal's direction.</p>",
    ]
    rows = []
    for c in cands[:MAX_CANDIDATES]:
        name = str(c["name"])
        short = name if len(name) <= 64 else name[:61] + "\u2026"
        is_chosen = name == chosen
        badge = ' <span class="badge selected">chosen</span>' if is_chosen else ""
        rows.append(
            f'<tr class="{"chosen" if is_chosen else ""}">{td(str(c["rank"]))}'
            f'<td><span class="mono" title="{esc(name)}">{esc(short)}</span>{badge}</td>'
            f"{td(esc(c['origin']), '')}{td(str(len(c['edits'])))}{td(num(c['effect']))}"
            f"{td(pct(c['achieved']))}{td(_yes(c['meets_requirement']), '')}"
            f"{td(_yes(c['within_budget']), '')}{td(kl(c['side_effects']['kl']))}"
            f"{td(pct(c.get('controls_accuracy')))}</tr>"
        )
    headers = [
        "rank",
        "name",
        "origin",
        "edits",
        "effect",
        "requirement figure",
        "meets",
        "within budget",
        "KL",
        "controls",
    ]
    out.append(rows_table(headers, rows, "candidates"))
    if len(cands) > MAX_CANDIDATES:
        out.append(note(f"{len(cands) - MAX_CANDIDATES} more candidates are in fix.json."))
    return Html("".join(out) + "</section>")
