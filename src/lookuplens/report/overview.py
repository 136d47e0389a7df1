"""The report's first sections: the run overview and the E histogram."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lookuplens.report.data import (
    METHOD_ORDER,
    REPORT_TABLES,
    ReportPlan,
    RunTables,
    finite,
    neuron_rows,
    pair_rows,
)
from lookuplens.report.markup import Html, esc, generic, kv, note, numbers, table
from lookuplens.report.svg import Series, histogram_svg
from lookuplens.store import DERIVED_TABLES, STAGE_TABLES, STAGES
from lookuplens.summary import mean_kept_ks, mismatched_group

__all__ = ["Figure", "e_histogram_section", "overview_section"]

SELECTED_COLOUR = "#2563eb"
BASELINE_COLOUR = "#9ca3af"


@dataclass(frozen=True)
class Figure:
    """A figure saved next to the report (``figures/NAME``)."""

    name: str
    svg: str


def _dict(obj: object) -> dict[str, object]:
    return obj if isinstance(obj, dict) else {}


def _mean(values: pd.Series) -> float | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def _e_by_group(t: RunTables, plan: ReportPlan, kind: str) -> tuple[float | None, float | None]:
    """Mean E of the selected and of the baseline rows about pairs or about neurons."""
    scores = t.get("scores")
    if scores is None or plan.primary_scores is None:
        return None, None
    s = pair_rows(scores) if kind == "pairs" else neuron_rows(scores)
    s = s[(s.explainer == plan.primary_scores[0]) & (s.scorer == plan.primary_scores[1])]
    base = s.baseline.astype(bool)
    return _mean(s.balanced_accuracy[~base]), _mean(s.balanced_accuracy[base])


def _key_numbers(t: RunTables, plan: ReportPlan) -> Html:
    items: list[tuple[str, object]] = []
    neurons = t.get("neurons")
    if neurons is not None:
        items.append(("next-token neurons selected", int(neurons.selected.sum())))
        items.append(("baseline neurons", int(neurons.baseline.sum())))
        items.append(("neurons searched", len(neurons)))
    examples = t.get("examples")
    if examples is not None:
        items.append(("prompts (examples)", len(examples)))
    pairs = t.get("pairs")
    if pairs is not None:
        items.append(("pairs kept", f"{int(pairs.kept.sum()):,} of {len(pairs):,}"))
        ks = mean_kept_ks(pairs)
        if ks is not None:
            items.append(("mean KS D (kept pairs)", ks))
    for kind in ("pairs", "neurons"):
        e_sel, e_base = _e_by_group(t, plan, kind)
        if e_sel is not None or e_base is not None:
            items.append((f"mean E, selected {kind}", e_sel))
            items.append((f"mean E, baseline {kind}", e_base))
            if kind == "pairs":
                g = mismatched_group(t.meta.get("score_stats"), "selected")
                if g is not None and g.get("mean") is not None:
                    items.append(
                        ("mean E, selected pairs, another neuron's explanation", g["mean"])
                    )
    if not items:
        return note("No tables yet.")
    return numbers(items)


def _stages(t: RunTables) -> Html:
    stages = _dict(t.meta.get("stages"))
    rows: list[list[object]] = []
    for stage in STAGES:
        if stage == "report":
            continue
        info = _dict(stages.get(stage))
        tables = [x for x in STAGE_TABLES[stage] if "." not in x and x not in DERIVED_TABLES]
        marks = []
        for name in tables:
            if name in REPORT_TABLES:
                ok = t.present(name)
            else:  # tables the report does not read (firings, score_controls)
                ok = (t.path / f"{name}.parquet").is_file()
            mark = "(unreadable)" if name in t.problems else "\u2713" if ok else "\u2717"
            marks.append(f"{name} {mark}")
        if stage in stages:
            status = "done"
        elif all(t.present(n) for n in tables if n != "firings"):
            status = "tables only"
        else:
            status = "not run"
        rows.append(
            [stage, status, finite(info.get("seconds")), info.get("completed_at"), ", ".join(marks)]
        )
    return table(["stage", "status", "seconds", "completed", "tables"], rows, digits=2)


def _agreement(meta: dict[str, object]) -> Html:
    agreement = _dict(meta.get("method_agreement"))
    if not agreement:
        return note("No method agreement yet (the verify stage records it).")
    methods = [m for m in METHOD_ORDER if m in agreement]
    methods += sorted(m for m in agreement if m not in methods)
    head = "".join(f"<th>{esc(m)}</th>" for m in methods)
    rows = []
    for a in methods:
        cells = []
        for b in methods:
            v = finite(_dict(agreement.get(a)).get(b))
            if v is None:
                cells.append("<td>\u2013</td>")
            else:
                cls = ' class="negv"' if v < 0 else ""
                cells.append(f'<td{cls} style="--a:{min(abs(v), 1):.2f}">{v:.2f}</td>')
        rows.append(f"<tr><th>{esc(a)}</th>{''.join(cells)}</tr>")
    return Html(
        '<div class="scroll"><table class="matrix"><thead><tr><th></th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def overview_section(t: RunTables, plan: ReportPlan, model_note: str) -> Html:
    """Model, corpus, key numbers, stages, versions, method agreement, ground truth."""
    meta = t.meta
    model = _dict(meta.get("model"))
    corpus = _dict(meta.get("corpus"))
    model_items: list[tuple[str, object]] = [
        (k, model.get(k))
        for k in (
            "name",
            "architecture",
            "model_type",
            "n_layers",
            "n_heads",
            "d_model",
            "d_mlp",
            "d_vocab",
        )
        if k in model
    ]
    if model.get("path") and model.get("path") != model.get("name"):
        model_items.insert(1, ("path", model.get("path")))
    fp = corpus.get("fingerprint")
    corpus_items: list[tuple[str, object]] = [
        ("source", corpus.get("source")),
        ("documents", corpus.get("documents")),
        ("tokens", corpus.get("tokens")),
        ("fingerprint", fp[:12] if isinstance(fp, str) else fp),
    ]
    parts = ['<section id="overview"><h2>Run overview</h2>', _key_numbers(t, plan)]
    missing = t.missing_stages()
    if missing:
        parts.append(
            note(
                f"Stages not run yet: {', '.join(missing)}. The sections that need them are "
                "left out or marked.",
                warn=True,
            )
        )
    for name, why in t.problems.items():
        parts.append(note(f"Table {name} could not be read and is left out: {why}", warn=True))
    if model_note:
        parts.append(note(model_note))
    parts.append('<div class="grid">')
    parts.append(
        "<div><h4>Model</h4>"
        + (kv(model_items) if model_items else note("No model recorded yet."))
        + "</div>"
    )
    parts.append(
        "<div><h4>Corpus</h4>"
        + (kv(corpus_items) if corpus else note("No corpus recorded yet (the scan stage)."))
        + "</div>"
    )
    versions = _dict(meta.get("versions"))
    run_items: list[tuple[str, object]] = [
        ("created", meta.get("created_at")),
        ("seed", meta.get("seed")),
        ("format version", meta.get("format_version")),
    ]
    run_items += [(k, v) for k, v in versions.items()]
    parts.append("<div><h4>Run and versions</h4>" + kv(run_items) + "</div>")
    parts.append("</div>")
    parts.append("<h4>Stages</h4>" + _stages(t))
    parts.append("<h4>Attribution method agreement (Spearman)</h4>" + _agreement(meta))
    gt = meta.get("ground_truth")
    if gt is not None:
        parts.append(
            '<h4 id="ground-truth">Ground truth: planted (neuron token, cue head) pairs</h4>'
            + generic(gt)
        )
    config = meta.get("config")
    if config is not None:
        text = json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True)
        parts.append(
            f"<details><summary>Full configuration</summary><pre>{esc(text)}</pre></details>"
        )
    parts.append("</section>")
    return Html("".join(parts))


def _e_values(s: pd.DataFrame) -> tuple[list[float], list[float]]:
    base = s.baseline.astype(bool)
    sel_e = [x for x in (finite(v) for v in s.balanced_accuracy[~base]) if x is not None]
    base_e = [x for x in (finite(v) for v in s.balanced_accuracy[base]) if x is not None]
    return sel_e, base_e


def _unscored(s: pd.DataFrame) -> str:
    missing = s[s.balanced_accuracy.isna()]
    if missing.empty:
        return "0"
    if "status" not in missing.columns:
        return str(len(missing))
    counts = missing.status.fillna("unknown").astype(str).value_counts()
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def e_histogram_section(t: RunTables) -> tuple[Html, list[Figure]]:
    """Histograms of E (balanced accuracy), selected against baseline, for pairs (and for
    neurons alone when scored), one per explainer and scorer. The first is also saved as
    ``figures/e_histogram.svg`` (pairs; neurons when no pair is scored)."""
    head = '<section id="scores"><h2>Explanation scores (E)</h2>'
    scores = t.get("scores")
    if scores is None:
        return Html(
            head + note("No scores yet: run the explain and score stages.") + "</section>"
        ), []
    if scores.empty:
        return Html(head + note("The scores table is empty.") + "</section>"), []
    combos = scores.groupby(["explainer", "scorer"]).size().reset_index(name="n")
    combos = combos.sort_values(["n", "explainer", "scorer"], ascending=[False, True, True])
    parts = [head]
    figures: list[Figure] = []
    summary: list[list[object]] = []
    used: set[str] = set()
    for c in combos.itertuples(index=False):
        rows = scores[(scores.explainer == c.explainer) & (scores.scorer == c.scorer)]
        for kind, s in (("pairs", pair_rows(rows)), ("neurons", neuron_rows(rows))):
            if s.empty:
                continue
            sel_e, base_e = _e_values(s)
            au = pd.to_numeric(s.auroc, errors="coerce")
            summary.append(
                [
                    str(c.explainer),
                    str(c.scorer),
                    kind,
                    len(s),
                    float(np.mean(sel_e)) if sel_e else None,
                    float(np.mean(base_e)) if base_e else None,
                    float(au.mean()) if au.notna().any() else None,
                    _unscored(s),
                ]
            )
            if not sel_e and not base_e:
                continue
            series = [Series("selected", tuple(sel_e), SELECTED_COLOUR)]
            if base_e or s.baseline.astype(bool).any():
                series.append(Series("random baseline", tuple(base_e), BASELINE_COLOUR))
            title = f"E of {kind}: explainer {c.explainer}, scorer {c.scorer}"
            xlabel = "balanced accuracy E (dotted: chance 0.5; dashed: means)"
            parts.append(histogram_svg(series, title, xlabel))
            name = "e_histogram.svg"
            if name in used:
                name = f"e_histogram-{kind}-{_slug(c.explainer)}-{_slug(c.scorer)}.svg"
            used.add(name)
            figures.append(Figure(name, histogram_svg(series, title, xlabel, standalone=True)))
    if not figures:
        parts.append(note("No row of the scores table has an E yet."))
    parts.append(
        table(
            [
                "explainer",
                "scorer",
                "about",
                "rows",
                "mean E selected",
                "mean E baseline",
                "mean AUROC",
                "unscored",
            ],
            summary,
        )
    )
    stats = t.meta.get("score_stats")
    mismatched = _mismatched_line(stats)
    if mismatched:
        parts.append(note(mismatched))
    if stats is not None:
        parts.append(
            "<details><summary>Score statistics (run.json)</summary>"
            + generic(stats)
            + "</details>"
        )
    parts.append("</section>")
    return Html("".join(parts)), figures


def _mismatched_line(stats: object) -> str | None:
    """One sentence on the mismatched-explanation control from run.json's score_stats."""
    bits = []
    for group, label in (("selected", "selected"), ("baseline", "random baseline")):
        g = mismatched_group(stats, group)
        if g is None or g.get("mean") is None:
            continue
        bit = f"{label} {g['mean']:.3f} (n={g.get('n')}"
        if g.get("own_minus_mismatched") is not None:
            bit += f"; their own explanation scores {g['own_minus_mismatched']:+.3f} more"
            if g.get("wilcoxon_pvalue") is not None:
                bit += f", Wilcoxon p={g['wilcoxon_pvalue']:.2g}"
        bits.append(bit + ")")
    if not bits:
        return None
    return (
        "Control: each pair scored with the explanation of a pair of another neuron (drawn "
        "from the same group), on its own held-out prompts: mean E " + "; ".join(bits) + ". "
        "Near 0.5 means an explanation says something specific to its pair."
    )


def _slug(text: object) -> str:
    out = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))
    return out[:40] or "x"
