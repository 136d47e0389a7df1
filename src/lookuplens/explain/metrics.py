"""Balanced accuracy, AUROC, thresholds, and the statistics of a scores table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def balanced_accuracy(self) -> float | None:
        """(TPR + TNR) / 2; ``None`` when either class is absent."""
        if self.tp + self.fn == 0 or self.tn + self.fp == 0:
            return None
        return 0.5 * (self.tp / (self.tp + self.fn) + self.tn / (self.tn + self.fp))


def confusion(predicted: Sequence[bool], actual: Sequence[bool]) -> Confusion:
    p = np.asarray(predicted, dtype=bool)
    a = np.asarray(actual, dtype=bool)
    if p.shape != a.shape:
        raise ValueError(f"{len(p)} predictions for {len(a)} labels")
    return Confusion(
        int((p & a).sum()), int((p & ~a).sum()), int((~p & ~a).sum()), int((~p & a).sum())
    )


def auroc(scores: Sequence[float], actual: Sequence[bool]) -> float | None:
    """Area under the ROC curve (ties count half); ``None`` when a class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(actual, dtype=bool)
    n_pos, n_neg = int(a.sum()), int((~a).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(s)
    return float((ranks[a].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_threshold(scores: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """The threshold t maximising the balanced accuracy of ``score > t``, and that accuracy.

    Candidates are midpoints between distinct scores and one below the lowest; the lowest
    maximising candidate wins. With one class, or one distinct score, the accuracy is 0.5.
    """
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(actual, dtype=bool)
    uniq = np.unique(s)
    cands = np.concatenate([[uniq[0] - 1.0], (uniq[:-1] + uniq[1:]) / 2]) if len(uniq) else [0.0]
    n_pos, n_neg = max(int(a.sum()), 1), max(int((~a).sum()), 1)
    pred = s[None, :] > np.asarray(cands)[:, None]
    tpr = (pred & a).sum(axis=1) / n_pos
    tnr = (~pred & ~a).sum(axis=1) / n_neg
    ba = 0.5 * (tpr + tnr)
    if not a.any() or a.all():
        ba = np.full(len(cands), 0.5)
    j = int(np.argmax(ba))
    return float(cands[j]), float(ba[j])


def _clean(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(values: Sequence[float], good_threshold: float = 0.8) -> dict[str, object]:
    """Mean, sample std, median, skewness with scipy's skewness test (n >= 8), and the
    share at or above `good_threshold` of a list of scores. JSON-serialisable."""
    e = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(e)
    out: dict[str, object] = {
        "n": n,
        "mean": _clean(e.mean()) if n else None,
        "std": _clean(e.std(ddof=1)) if n > 1 else None,
        "median": _clean(float(np.median(e))) if n else None,
        "skew": None,
        "skewtest_statistic": None,
        "skewtest_pvalue": None,
        f"share_ge_{good_threshold:g}": _clean(float((e >= good_threshold).mean())) if n else None,
    }
    if n > 2 and e.std() > 0:
        out["skew"] = _clean(float(stats.skew(e)))
    if n >= 8 and e.std() > 0:
        test = stats.skewtest(e)
        out["skewtest_statistic"] = _clean(float(test.statistic))
        out["skewtest_pvalue"] = _clean(float(test.pvalue))
    return out


def score_statistics(
    scores: pa.Table, good_threshold: float = 0.8, controls: pa.Table | None = None
) -> dict[str, object]:
    """Statistics of a scores table of one explainer and scorer, JSON-serialisable.

    For pair rows and neuron rows (``head`` null) separately, and within each for the
    selected neurons and the random baseline: the balanced accuracy E's `summarize`, the
    mean AUROC where graded, and how many rows have no score (by status). Also the
    status counts and the LLM usage of the whole table. With `controls` (rows of the
    mismatched-explanation control) and at least one of them: ``mismatched``, per group,
    `summarize` of the control's E, and on the pairs scored both ways the mean of own E
    minus mismatched E with a Wilcoxon signed-rank test.
    """
    cols = scores.to_pydict()
    combos = sorted({(a, b) for a, b in zip(cols["explainer"], cols["scorer"], strict=True)})
    if len(combos) > 1:
        raise ValueError(
            f"scores of several explainer/scorer combinations {combos}; filter the table to "
            "one before computing statistics"
        )
    n = scores.num_rows
    status = cols.get("status", ["ok"] * n)
    out: dict[str, object] = {
        "explainer": combos[0][0] if combos else None,
        "scorer": combos[0][1] if combos else None,
        "good_threshold": good_threshold,
    }
    for kind in ("pairs", "neurons"):
        section: dict[str, object] = {}
        for group in ("selected", "baseline"):
            rows = [
                i
                for i in range(n)
                if (cols["head"][i] is None) == (kind == "neurons")
                and bool(cols["baseline"][i]) == (group == "baseline")
            ]
            e = [cols["balanced_accuracy"][i] for i in rows]
            au = [cols["auroc"][i] for i in rows if cols["auroc"][i] is not None]
            unscored: dict[str, int] = {}
            for i in rows:
                if cols["balanced_accuracy"][i] is None:
                    unscored[str(status[i])] = unscored.get(str(status[i]), 0) + 1
            section[group] = {
                "rows": len(rows),
                **summarize([v for v in e if v is not None], good_threshold),
                "mean_auroc": _clean(float(np.mean(au))) if au else None,
                "n_auroc": len(au),
                "unscored": unscored,
            }
        out[kind] = section
    counts: dict[str, int] = {}
    for s in status:
        counts[str(s)] = counts.get(str(s), 0) + 1
    out["status"] = counts
    usage: dict[str, object] = {}
    for c in ("requests", "cached_requests", "prompt_tokens", "completion_tokens"):
        if c in cols:
            usage[c] = int(sum(v or 0 for v in cols[c]))
    scored_pairs = [i for i in range(n) if cols["head"][i] is not None and status[i] == "ok"]
    if "prompt_tokens" in cols:
        usage["prompt_tokens_per_scored_pair"] = (
            _clean(float(np.mean([cols["prompt_tokens"][i] for i in scored_pairs])))
            if scored_pairs
            else None
        )
    out["usage"] = usage
    if controls is not None and controls.num_rows:
        out["mismatched"] = _mismatched_stats(cols, controls.to_pydict(), good_threshold)
    return out


def _mismatched_stats(
    cols: dict[str, list[Any]], ctl: dict[str, list[Any]], good_threshold: float
) -> dict[str, object]:
    keys = ("layer", "neuron", "head_layer", "head")
    own = {
        tuple(cols[k][i] for k in keys): cols["balanced_accuracy"][i]
        for i in range(len(cols["layer"]))
        if cols["head"][i] is not None and cols["balanced_accuracy"][i] is not None
    }
    out: dict[str, object] = {}
    for group in ("selected", "baseline"):
        rows = [
            i
            for i in range(len(ctl["layer"]))
            if bool(ctl["baseline"][i]) == (group == "baseline")
            and ctl["balanced_accuracy"][i] is not None
        ]
        e = [float(ctl["balanced_accuracy"][i]) for i in rows]
        diffs = [
            float(own[k]) - float(ctl["balanced_accuracy"][i])
            for i in rows
            if (k := tuple(ctl[c][i] for c in keys)) in own
        ]
        section: dict[str, object] = {
            **summarize(e, good_threshold),
            "paired_n": len(diffs),
            "own_minus_mismatched": _clean(float(np.mean(diffs))) if diffs else None,
            "wilcoxon_pvalue": None,
        }
        if len(diffs) >= 8 and any(d != 0 for d in diffs):
            section["wilcoxon_pvalue"] = _clean(float(stats.wilcoxon(diffs).pvalue))
        out[group] = section
    return out
