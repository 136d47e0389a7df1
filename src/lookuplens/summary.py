"""The findings of a run as rows: top (neuron, head) pairs with their evidence.

Used by the CLI's end-of-run table, the report and the dashboard, so each shows the same
ranking: kept pairs of selected neurons first, by score E (when scored), then by how much
of the neuron's input the head writes (mean `direct` attribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lookuplens.store import RunDir


@dataclass(frozen=True)
class PairRow:
    """One row of the summary."""

    layer: int
    neuron: int
    token: str
    head_layer: int
    head: int
    active_rate: float
    mean_direct: float
    ablation_delta_logprob: float | None
    ks_stat: float | None
    explanation: str | None
    score: float | None
    baseline: bool

    @property
    def neuron_name(self) -> str:
        return f"L{self.layer}N{self.neuron}"

    @property
    def head_name(self) -> str:
        return f"L{self.head_layer}H{self.head}"


def _opt(v: object) -> float | None:
    if v is None:
        return None
    f = float(v)  # type: ignore[arg-type]
    return None if np.isnan(f) else f


def top_pairs(run: RunDir, limit: int = 10, include_baseline: bool = False) -> list[PairRow]:
    """The run's top kept pairs (see the module docstring); empty before the attribute stage."""
    if not run.has_table("pairs"):
        return []
    pairs = run.read_df("pairs")
    pairs = pairs[pairs.kept]
    if "baseline" in pairs and not include_baseline:
        pairs = pairs[~pairs.baseline.astype(bool)]
    if pairs.empty:
        return []
    key = ["layer", "neuron", "head_layer", "head"]
    if run.has_table("effects"):
        eff = run.read_df("effects")
        eff = eff[eff.intervention == "head_zero_ablation"]
        if not eff.empty:
            mean = eff.groupby(key).delta_logprob.mean().rename("ablation_dlp")
            pairs = pairs.merge(mean.reset_index(), on=key, how="left")
    if run.has_table("scores"):
        sc = run.read_df("scores").dropna(subset=["head"])
        sc = sc.astype({"head_layer": "int64", "head": "int64"})
        sc = sc.groupby(key).balanced_accuracy.max().rename("score")
        pairs = pairs.merge(sc.reset_index(), on=key, how="left")
    if run.has_table("explanations"):
        ex = run.read_df("explanations").dropna(subset=["head"])
        ex = ex.astype({"head_layer": "int64", "head": "int64"})
        ex = ex.drop_duplicates(key)[[*key, "explanation"]]
        pairs = pairs.merge(ex, on=key, how="left")
    sort_score = pairs["score"].fillna(-1) if "score" in pairs else 0
    pairs = pairs.assign(_s=sort_score).sort_values(
        ["_s", "mean_direct"], ascending=[False, False], kind="stable"
    )
    rows = []
    for r in pairs.head(limit).to_dict("records"):
        expl = r.get("explanation")
        rows.append(
            PairRow(
                layer=int(r["layer"]),
                neuron=int(r["neuron"]),
                token=str(r.get("token", "")),
                head_layer=int(r["head_layer"]),
                head=int(r["head"]),
                active_rate=float(r["active_rate"]),
                mean_direct=float(r.get("mean_direct", np.nan)),
                ablation_delta_logprob=_opt(r.get("ablation_dlp")),
                ks_stat=_opt(r.get("ks_stat")),
                explanation=None
                if expl is None or (isinstance(expl, float) and np.isnan(expl))
                else str(expl),
                score=_opt(r.get("score")),
                baseline=bool(r.get("baseline", False)),
            )
        )
    return rows


def mean_kept_ks(pairs: Any) -> float | None:
    """Mean KS D over the kept pairs of a `pairs` table (a DataFrame); None when none of
    them was KS-tested. Pairs verified only as a neuron's top head are left out."""
    ks = pd.to_numeric(pairs[pairs.kept.astype(bool)].ks_stat, errors="coerce")
    ks = ks[np.isfinite(ks)]
    return float(ks.mean()) if len(ks) else None


def mismatched_group(stats: object, group: str) -> dict[str, Any] | None:
    """The mismatched-explanation control's figures for ``selected`` or ``baseline`` pairs
    from run.json's ``score_stats``; None when the control did not run."""
    mm = stats.get("mismatched") if isinstance(stats, dict) else None
    g = mm.get(group) if isinstance(mm, dict) else None
    return g if isinstance(g, dict) else None


def key_numbers(run: RunDir) -> dict[str, object]:
    """Headline figures of a run (counts, mean E against the baseline, mean KS D)."""
    out: dict[str, object] = {}
    # only the columns needed: on a large model the neurons table has every neuron of the
    # searched layers and the pairs table every (neuron, upstream head)
    if run.has_table("neurons"):
        n = run.scan_table("neurons", ["selected", "baseline"]).read_all().to_pandas()
        out["neurons_selected"] = int(n.selected.sum())
        out["neurons_baseline"] = int(n.baseline.sum())
    if run.has_table("examples"):
        out["examples"] = run.table_rows("examples")
    if run.has_table("pairs"):
        p = run.scan_table("pairs", ["kept", "ks_stat"]).read_all().to_pandas()
        out["pairs"] = len(p)
        out["pairs_kept"] = int(p.kept.sum())
        out["mean_ks_d"] = mean_kept_ks(p)
    stats = run.meta.get("score_stats")
    if isinstance(stats, dict):
        pairs = stats.get("pairs") if isinstance(stats.get("pairs"), dict) else {}
        for group in ("selected", "baseline"):
            g = pairs.get(group) if isinstance(pairs, dict) else None
            if isinstance(g, dict):
                out[f"mean_e_{group}"] = g.get("mean")
                out[f"n_scored_{group}"] = g.get("n")
        control = mismatched_group(stats, "selected")
        if control is not None:
            out["mean_e_mismatched"] = control.get("mean")
    if run.has_table("scores"):
        s = run.read_df("scores")
        if "status" in s.columns:
            pairs_s = s[s.target == "pair"] if "target" in s.columns else s
            out["pair_score_status"] = {
                str(k): int(v) for k, v in pairs_s.status.value_counts().sort_index().items()
            }
    gt = run.meta.get("ground_truth")
    if isinstance(gt, dict):
        out["ground_truth"] = gt
    return out


__all__ = ["PairRow", "key_numbers", "mismatched_group", "top_pairs"]
