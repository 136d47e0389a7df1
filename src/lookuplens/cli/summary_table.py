"""The end-of-run summary: key numbers, headline findings, top pairs, where the report is."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def print_summary(run: Any) -> None:
    """The end-of-run table: key numbers, top pairs, where the report is."""
    from rich.table import Table

    from lookuplens.summary import key_numbers, top_pairs

    out = Console()
    k = key_numbers(run)
    bits = []
    if "neurons_selected" in k:
        bits.append(f"{k['neurons_selected']} next-token neurons (+{k['neurons_baseline']} random)")
    if "pairs_kept" in k:
        bits.append(f"{k['pairs_kept']} of {k['pairs']} (neuron, head) pairs kept")
    if k.get("mean_ks_d") is not None:
        bits.append(f"mean KS D {k['mean_ks_d']:.3f}")
    if k.get("mean_e_selected") is not None:
        base = k.get("mean_e_baseline")
        bits.append(
            f"mean E {k['mean_e_selected']:.3f}"
            + (f" vs {base:.3f} for random neurons" if base is not None else "")
            + (
                f", {k['mean_e_mismatched']:.3f} with another neuron's explanation"
                if k.get("mean_e_mismatched") is not None
                else ""
            )
        )
    status = k.get("pair_score_status")
    if isinstance(status, dict) and any(s != "ok" for s in status):
        why = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in status.items() if s != "ok")
        bits.append(f"{status.get('ok', 0)} pair explanations scored, not scored: {why}")
    if bits:
        out.print("; ".join(bits), highlight=False)
    if run.has_table("findings"):
        f = run.read_df("findings")
        f = f[~f.baseline]
        shown = "; ".join(
            f"L{r.layer}N{r.neuron} {r.token!r} <- L{r.head_layer}H{r.head} reading "
            f"{r.cue!r} ({r.median_share_removed:.0%} of the activation)"
            for r in f.head(3).itertuples()
        )
        out.print(
            f"{len(f)} headline findings (next-token neuron, head, cue) pass the cue-swap "
            "test" + (f": {shown}" if shown else ""),
            highlight=False,
        )
    gt = k.get("ground_truth")
    if isinstance(gt, dict) and "precision" in gt:

        def fmt(v: object) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        out.print(
            f"ground truth: precision {fmt(gt['precision'])}, recall {fmt(gt['recall'])} of "
            f"the headline findings against the planted look-ups' cue-reading heads "
            f"({gt.get('n_predicted')} findings on planted targets, "
            f"{gt.get('n_ground_truth')} true pairs; "
            "a head is cue-reading when patching it from a cue-swapped run moves the neuron)",
            highlight=False,
        )
        entries = list((gt.get("neuron_explanations") or {}).values())
        explained = [v for v in entries if v.get("explanation") is not None]
        if explained:
            named = sum(bool(v.get("names_a_cue")) for v in explained)
            part = [v for v in explained if v.get("takes_part")]
            silent = sum(v.get("status") == "silent" for v in entries)
            out.print(
                f"ground truth: {named} of the {len(explained)} explained next-token neurons "
                f"of planted targets ({sum(bool(v.get('names_a_cue')) for v in part)} of "
                f"the {len(part)} that fire on the planted predictions) are explained by a "
                "cue word planted for their target"
                + (f"; {silent} more never fire on the corpus (status silent)" if silent else ""),
                highlight=False,
            )
    rows = top_pairs(run, limit=10)
    if rows:
        t = Table(title="top (neuron, head) pairs")
        cols = ("#", "neuron", "token", "head", "active", "direct", "abl dlogp", "KS D", "E")
        for col in cols:
            t.add_column(col, no_wrap=True, max_width=10 if col == "token" else None)
        for i, r in enumerate(rows, 1):
            t.add_row(
                str(i),
                r.neuron_name,
                repr(r.token),
                r.head_name,
                f"{r.active_rate:.2f}",
                f"{r.mean_direct:+.3f}",
                "" if r.ablation_delta_logprob is None else f"{r.ablation_delta_logprob:+.3f}",
                "" if r.ks_stat is None else f"{r.ks_stat:.2f}",
                "" if r.score is None else f"{r.score:.2f}",
            )
        out.print(t)
        for i, r in enumerate(rows, 1):
            if r.explanation:
                out.print(
                    f"  {i}. {r.neuron_name} <- {r.head_name}: {r.explanation}",
                    highlight=False,
                    soft_wrap=False,
                )
    report = run.path / "report.html"
    if report.is_file():
        out.print(f"report: {report}", highlight=False)
    out.print(f"run directory: {run.path}", highlight=False)
