"""The dashboard and the report on an 8B-sized run directory: resident memory and latency.

    .venv/bin/python bench/bench_dashboard.py                      # 20M attribution rows
    .venv/bin/python bench/bench_dashboard.py --rows 200000        # a small one
    .venv/bin/python bench/bench_dashboard.py --baseline-src DIR   # also time another
                                                                   # checkout's src/ (eager)

1. Writes a synthetic but schema-valid run directory under /tmp, shaped like a run on a
   Llama-3-8B-sized model (32 layers x 32 heads, d_mlp 14336, vocabulary 128256): every
   neuron of the 32 layers in ``neurons``, tracked neurons spread over the layers with 40
   top and 10 contrast prompts each, ``direct`` and ``attribution_patching`` for every
   upstream head of every prompt plus ``zero_ablation`` for 16 candidate heads per
   prompt, the labels, every (neuron, upstream head) pair, effects, explanations, scores,
   score controls, findings and the ``views`` table, through the store's own writers (the
   large tables a neuron at a time with `RunDir.write_table_chunks`, so the generator
   stays small). ``--rows`` sets the attribution rows (the tracked neurons follow);
   ``--unsorted`` writes attributions and labels as before 2026-12-05 (unsorted, 1M-row
   row groups, no ``attribution_means``), the old-format fallback.
2. Starts ``lookuplens serve`` on it in a subprocess (loopback, no token; the model is
   never loaded: every page reads the views table) and prints its resident memory
   (VmRSS, VmHWM of /proc/PID/status) once it answers, then requests the overview, neuron
   and pair pages and every JSON route they call, for several neurons and pairs (each
   first request is cold: the server caches responses), and prints each route's median
   and max latency, cold and cached, and the memory after.
3. Runs ``lookuplens report --no-model`` on it and prints its peak memory and time.
4. With ``--baseline-src DIR``, steps 2-3 again with ``PYTHONPATH=DIR`` (e.g. the
   ``src/`` of a checkout before the lazy reading); a server that does not answer within
   ``--timeout`` seconds or dies is reported with the peak memory it reached.

The run directory is deleted at the end (``--keep`` keeps it). Targets: the server under
1 GB resident and every page under 1 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

N_LAYERS, N_HEADS, D_MLP, VOCAB, BOS = 32, 32, 14336, 128256, 128000
TOP, CONTRAST, CANDIDATES, DRIVERS, VIEW = 40, 10, 16, 2, 12
METHODS = ("attribution_patching", "direct", "zero_ablation")  # sorted, as in the files


def rows_per_neuron(layer: int) -> int:
    n_up = (layer + 1) * N_HEADS
    return (TOP + CONTRAST) * (2 * n_up + CANDIDATES)


def tracked_neurons(rows: int, seed: int) -> list[tuple[int, int]]:
    """Neurons spread evenly over the layers until their attribution rows reach `rows`."""
    rng = np.random.default_rng(seed)
    per_layer = [rng.permutation(D_MLP) for _ in range(N_LAYERS)]
    keys: list[tuple[int, int]] = []
    total, i = 0, 0
    while total < rows:
        layer = i % N_LAYERS
        keys.append((layer, int(per_layer[layer][i // N_LAYERS])))
        total += rows_per_neuron(layer)
        i += 1
    return sorted(keys)


def _nanmean(x: np.ndarray) -> np.ndarray:
    n = (~np.isnan(x)).sum(axis=0)
    return np.where(n > 0, np.nansum(x, axis=0) / np.maximum(n, 1), np.nan)


class Neuron:
    """One tracked neuron's made-up prompts and attributions (deterministic per neuron)."""

    def __init__(self, layer: int, neuron: int, first_id: int, baseline: bool, seed: int):
        rng = np.random.default_rng([seed, layer, neuron])
        self.layer, self.neuron, self.baseline = layer, neuron, baseline
        n_ex = TOP + CONTRAST
        self.ids = np.arange(first_id, first_id + n_ex, dtype=np.int64)
        self.kind = np.array(["top"] * TOP + ["contrast"] * CONTRAST)
        self.rank = np.r_[np.arange(TOP), np.full(CONTRAST, -1)]
        self.split = np.where(rng.random(n_ex) < 0.66, "train", "test")
        self.n_up = (layer + 1) * N_HEADS
        self.drivers = rng.choice(self.n_up, size=DRIVERS, replace=False)
        on = rng.random((n_ex, DRIVERS)) < 0.5
        on[TOP:] = False  # contrast prompts: the neuron is silent
        direct = rng.normal(0.0, 0.02, size=(n_ex, self.n_up))
        for j, d in enumerate(self.drivers):
            direct[:, d] = np.where(
                on[:, j], rng.normal(1.0, 0.2, n_ex), rng.normal(0.05, 0.05, n_ex)
            )
        self.direct = direct
        self.patching = direct + rng.normal(0.0, 0.05, size=direct.shape)
        cand = np.argsort(-direct, axis=1)[:, :CANDIDATES]
        self.candidate = np.zeros_like(direct, dtype=bool)
        np.put_along_axis(self.candidate, cand, True, axis=1)
        self.zero = np.where(
            self.candidate, 0.9 * direct + rng.normal(0, 0.02, direct.shape), np.nan
        )
        self.active = self.candidate & (self.zero > 0.5)
        self.lengths = rng.integers(16, 129, size=n_ex)
        self.tokens = [
            np.r_[BOS, rng.integers(1000, 120000, size=int(k) - 1)].astype(np.int64)
            for k in self.lengths
        ]
        self.rng = rng

    def head_cols(self) -> tuple[np.ndarray, np.ndarray]:
        idx = np.arange(self.n_up)
        return idx // N_HEADS, idx % N_HEADS

    def attributions(self, order: str = "sorted") -> pa.Table:
        """Rows sorted by (example_id, head_layer, head, method), as the store writes them
        (``order="method"``: by method first, as the attribute stage wrote before)."""
        n_ex, n_up = self.direct.shape
        hl, h = self.head_cols()
        vals = np.stack([self.patching, self.direct, self.zero], axis=2)  # [ex, head, method]
        keep = ~np.isnan(vals)
        if order == "method":
            vals, keep = vals.transpose(2, 0, 1), keep.transpose(2, 0, 1)
            ex_i = np.broadcast_to(np.arange(n_ex)[None, :, None], vals.shape)
            head_i = np.broadcast_to(np.arange(n_up)[None, None, :], vals.shape)
            m_i = np.broadcast_to(np.arange(3)[:, None, None], vals.shape)
        else:
            ex_i = np.broadcast_to(np.arange(n_ex)[:, None, None], vals.shape)
            head_i = np.broadcast_to(np.arange(n_up)[None, :, None], vals.shape)
            m_i = np.broadcast_to(np.arange(3)[None, None, :], vals.shape)
        ex_i, head_i, m_i, v = ex_i[keep], head_i[keep], m_i[keep], vals[keep]
        n = len(v)
        return pa.table(
            {
                "example_id": self.ids[ex_i],
                "layer": np.full(n, self.layer, np.int64),
                "neuron": np.full(n, self.neuron, np.int64),
                "head_layer": hl[head_i].astype(np.int64),
                "head": h[head_i].astype(np.int64),
                "method": pa.DictionaryArray.from_arrays(
                    pa.array(m_i.astype(np.int32)), pa.array(list(METHODS))
                ),
                "value": v.astype(np.float64),
            }
        )

    def labels(self) -> pa.Table:
        n_ex, n_up = self.direct.shape
        hl, h = self.head_cols()
        return pa.table(
            {
                "example_id": np.repeat(self.ids, n_up),
                "layer": np.full(n_ex * n_up, self.layer, np.int64),
                "neuron": np.full(n_ex * n_up, self.neuron, np.int64),
                "head_layer": np.tile(hl, n_ex).astype(np.int64),
                "head": np.tile(h, n_ex).astype(np.int64),
                "active": self.active.reshape(-1),
                "split": np.repeat(self.split, n_up),
                "candidate": self.candidate.reshape(-1),
            }
        )

    def pairs(self, token: str) -> pd.DataFrame:
        hl, h = self.head_cols()
        train = self.split == "train"
        rate = self.active[train].mean(axis=0)
        top = self.kind == "top"
        mean_direct = self.direct[top].mean(axis=0)
        pos = np.clip(mean_direct, 0, None)
        share = np.sort(pos)[::-1] / max(pos.sum(), 1e-9)
        mech = "single" if share[0] >= 0.5 else ("few" if share[:3].sum() >= 0.6 else "distributed")
        kept = (rate >= 0.25) & (rate <= 0.75)
        tested = kept.copy()
        tested[np.argsort(-mean_direct)[:3]] = True
        ks = np.where(tested, self.rng.uniform(0.2, 0.9, self.n_up), np.nan)
        return pd.DataFrame(
            {
                "layer": self.layer,
                "neuron": self.neuron,
                "head_layer": hl.astype(np.int64),
                "head": h.astype(np.int64),
                "active_rate": rate,
                "n_train": int(train.sum()),
                "kept": kept,
                "ks_stat": ks,
                "ks_pvalue": np.where(tested, self.rng.uniform(0, 0.05, self.n_up), np.nan),
                "mechanism": mech,
                "active_rate_all": self.active.mean(axis=0),
                "top1_share": share[0],
                "top3_share": share[:3].sum(),
                "mean_direct": mean_direct,
                "mean_zero_ablation": _nanmean(np.where(top[:, None], self.zero, np.nan)),
                "baseline": self.baseline,
                "token": token,
                "ks_n_active": np.where(tested, self.active.sum(axis=0), 0),
                "ks_n_inactive": np.where(tested, (~self.active).sum(axis=0), 0),
            }
        )

    def examples(self) -> pd.DataFrame:
        n_ex = len(self.ids)
        act = np.where(
            self.kind == "top", self.rng.uniform(2, 8, n_ex), self.rng.uniform(-0.2, 0.1, n_ex)
        )
        return pd.DataFrame(
            {
                "example_id": self.ids,
                "layer": self.layer,
                "neuron": self.neuron,
                "rank": self.rank,
                "doc_id": self.rng.integers(0, 2_000_000, n_ex),
                "position": self.rng.integers(20, 2000, n_ex),
                "activation": act * 1.05,
                "start": self.rng.integers(0, 1800, n_ex),
                "tokens": self.tokens,
                "text": [" ".join(f"w{t}" for t in tok[1:]) for tok in self.tokens],
                "trimmed_activation": act,
                "split": self.split,
                "n_tokens": self.lengths,
                "kind": self.kind,
                "read_position": np.where(self.kind == "top", self.rng.integers(0, 16, n_ex), -1),
            }
        )

    def effects(self) -> pd.DataFrame:
        """Neuron interventions on every prompt, the zero ablation of the top three heads
        and cue swaps on a third of the top prompts."""
        top3 = np.argsort(-self.direct[self.kind == "top"].mean(axis=0))[:3]
        parts = []
        for name in ("neuron_zero", "neuron_mean", "neuron_scale_2"):
            parts.append(pd.DataFrame({"example_id": self.ids, "intervention": name}))
        for head in top3:
            parts.append(
                pd.DataFrame(
                    {
                        "example_id": self.ids,
                        "intervention": "head_zero_ablation",
                        "head_layer": head // N_HEADS,
                        "head": head % N_HEADS,
                    }
                )
            )
        swap = self.ids[: TOP // 3]
        for name in ("cue_swap", "head_source_swap"):
            parts.append(
                pd.DataFrame(
                    {
                        "example_id": swap,
                        "intervention": name,
                        "head_layer": top3[0] // N_HEADS if name != "cue_swap" else np.nan,
                        "head": top3[0] % N_HEADS if name != "cue_swap" else np.nan,
                        "swap_position": self.rng.integers(1, 16, len(swap)),
                        "swap_token_id": self.rng.integers(1000, 120000, len(swap)),
                    }
                )
            )
        df = pd.concat(parts, ignore_index=True)
        n = len(df)
        df["layer"], df["neuron"] = self.layer, self.neuron
        df["delta_logprob"] = self.rng.normal(-0.5, 0.5, n)
        df["kl"] = self.rng.uniform(0, 0.2, n)
        df["delta_prob"] = self.rng.normal(0, 0.01, n)
        df["delta_activation"] = self.rng.normal(-1, 0.5, n)
        return df

    def display_ids(self) -> list[int]:
        """Top prompts by rank, then the contrast prompts (`report.data.display_order`)."""
        return [int(i) for i in self.ids]

    def views(
        self, kept_heads: list[int], token_text: dict[int, str]
    ) -> Iterator[dict[str, object]]:
        """The views rows the report stage stores: activations of the first prompts,
        attention of each kept pair's first active and inactive prompts, the vocabulary."""
        order = self.display_ids()
        by_id = {int(i): t for i, t in zip(self.ids, self.tokens, strict=True)}
        pos = {int(i): k for k, i in enumerate(self.ids)}

        def row(
            kind: str, head: tuple[int, int] | None, ex: int | None, ids: list[int]
        ) -> dict[str, Any]:
            for t in ids:
                token_text.setdefault(t, f" w{t}")
            return {
                "kind": kind,
                "layer": self.layer,
                "neuron": self.neuron,
                "head_layer": None if head is None else head[0],
                "head": None if head is None else head[1],
                "example_id": ex,
                "token_ids": ids,
                "tokens": [token_text[t] for t in ids],
                "values": self.rng.uniform(0, 1, len(ids)).tolist(),
            }

        for i in order[:VIEW]:
            yield row("activation", None, i, by_id[i].tolist())
        for head in sorted(kept_heads):
            act = [i for i in order if self.active[pos[i], head]][:VIEW]
            inact = [i for i in order if not self.active[pos[i], head]][:VIEW]
            for i in act + inact:
                yield row("attention", (head // N_HEADS, head % N_HEADS), i, by_id[i].tolist())
        for kind in ("promoted", "suppressed"):
            ids = self.rng.choice(VOCAB, size=10, replace=False).tolist()
            yield row(kind, None, None, ids)


def _nan_kept(df: pd.DataFrame) -> pa.Table:
    """`df` as an arrow table whose float NaNs stay NaN (pandas' conversion makes them
    null, which the format's non-nullable float columns refuse)."""
    cols = {}
    for c in df.columns:
        v = df[c]
        cols[c] = pa.array(v.to_numpy()) if v.dtype == np.float64 else pa.Array.from_pandas(v)
    return pa.table(cols)


def _model_meta(path: str) -> dict[str, Any]:
    return {
        "name": path,
        "path": path,
        "architecture": "llama",
        "model_type": "llama",
        "n_layers": N_LAYERS,
        "n_heads": N_HEADS,
        "d_model": 4096,
        "d_mlp": D_MLP,
        "d_vocab": VOCAB,
    }


def write_run(path: Path, rows: int, seed: int = 0, unsorted: bool = False) -> dict[str, int]:
    """Write the synthetic run directory at `path`; returns each table's row count."""
    from lookuplens.pipeline import RunConfig
    from lookuplens.store import STAGES, RunDir, table_schema
    from lookuplens.store.means import attribution_means

    model_path = str(path.parent / "no-such-model")  # never loaded: views cover the pages
    cfg = RunConfig(model=model_path)
    run = RunDir.create(
        path,
        {
            "model": _model_meta(model_path),
            "corpus": {"source": "synthetic", "documents": 2_000_000, "tokens": 10**9},
            "config": dataclasses.asdict(cfg),
            "seed": seed,
        },
    )
    keys = tracked_neurons(rows, seed)
    rng = np.random.default_rng(seed)
    base_idx = set(rng.choice(len(keys), size=max(1, len(keys) // 10), replace=False).tolist())
    baseline = {k for i, k in enumerate(keys) if i in base_idx}
    tracked = set(keys)

    # neurons: every neuron of the 32 layers
    layer = np.repeat(np.arange(N_LAYERS), D_MLP)
    neuron = np.tile(np.arange(D_MLP), N_LAYERS)
    n_all = len(layer)
    token_id = rng.integers(1000, 120000, n_all)
    is_tracked = np.array([(int(a), int(b)) in tracked for a, b in zip(layer, neuron, strict=True)])
    is_base = np.array([(int(a), int(b)) in baseline for a, b in zip(layer, neuron, strict=True)])
    run.write_table(
        "neurons",
        pd.DataFrame(
            {
                "layer": layer,
                "neuron": neuron,
                "token_id": token_id,
                "token": [f" w{t}" for t in token_id],
                "congruence": rng.normal(size=n_all),
                "congruence_z": rng.normal(size=n_all),
                "vocab_kurtosis": rng.uniform(2, 9, n_all),
                "vocab_skew": rng.normal(size=n_all),
                "selected": is_tracked & ~is_base,
                "baseline": is_base,
                "vocab_mean": 0.0,
                "vocab_std": 1.0,
                "target_token_id": token_id,
            }
        ),
    )
    tok_of = {
        (int(a), int(b)): f" w{t}"
        for a, b, t in zip(layer, neuron, token_id, strict=True)
        if (int(a), int(b)) in tracked
    }
    del layer, neuron, token_id, is_tracked, is_base

    def neurons() -> Iterator[Neuron]:
        first = 0
        for k in keys:
            yield Neuron(k[0], k[1], first, k in baseline, seed)
            first += TOP + CONTRAST

    # small per-neuron tables gathered in memory; the large ones streamed
    small: dict[str, list[pd.DataFrame]] = {"examples": [], "pairs": [], "effects": [], "stats": []}
    views: list[dict[str, object]] = []
    token_text: dict[int, str] = {}
    means_parts: list[pa.Table] = []

    def attribution_chunks() -> Iterator[pa.Table]:
        for nr in neurons():
            table = nr.attributions()
            if not unsorted:
                top = pa.array(nr.ids[nr.kind == "top"])
                means_parts.append(attribution_means(table, top))
            ex = nr.examples()
            small["examples"].append(ex)
            pairs = nr.pairs(tok_of[(nr.layer, nr.neuron)])
            small["pairs"].append(pairs)
            small["effects"].append(nr.effects())
            small["stats"].append(
                pd.DataFrame(
                    {
                        "layer": [nr.layer],
                        "neuron": [nr.neuron],
                        "act_mean": [0.01],
                        "act_std": [0.3],
                        "act_frac_pos": [0.4],
                        "act_max": [9.0],
                        "n_tokens": [10**9],
                    }
                )
            )
            kept = pairs.index[pairs.kept].tolist()
            views.extend(nr.views(kept, token_text))
            yield table

    if unsorted:
        _write_old_format(run, keys, baseline, seed)
        for _ in attribution_chunks():
            pass
    else:
        run.write_table_chunks("attributions", attribution_chunks())
        run.write_table_chunks("labels", (nr.labels() for nr in neurons()))
        run.write_table("attribution_means", pa.concat_tables(means_parts))
    examples = pd.concat(small["examples"], ignore_index=True)
    run.write_table("examples", examples)
    firings = examples[examples.kind == "top"][
        ["layer", "neuron", "rank", "doc_id", "position", "activation"]
    ]
    run.write_table("firings", firings)
    run.write_table("activation_stats", pd.concat(small["stats"], ignore_index=True))
    pairs = pd.concat(small["pairs"], ignore_index=True)
    run.write_table("pairs", _nan_kept(pairs))
    eff = pd.concat(small["effects"], ignore_index=True)
    ints = {c: "Int64" for c in ("head_layer", "head", "swap_position", "swap_token_id")}
    run.write_table("effects", eff.astype(ints))
    kept = pairs[pairs.kept]
    _write_explained(run, kept, keys, baseline, rng)
    run.write_table("findings", _findings(kept, rng))
    views_table = pa.Table.from_pylist(views, schema=table_schema("views"))
    if unsorted:  # as the report stage wrote it before 2026-12-05: one row group, unsorted
        import pyarrow.parquet as pq

        pq.write_table(views_table, run.table_path("views"), compression="zstd")
    else:
        run.write_table("views", views_table)
    for stage in STAGES:
        run.mark_done(stage, 1.0)
    run.update_meta(
        method_agreement={m: {n: 1.0 if m == n else 0.5 for n in METHODS} for m in METHODS}
    )
    counts = {"neurons tracked": len(keys), "pairs kept": len(kept), "views": len(views)}
    for name in (
        "attributions",
        "labels",
        "attribution_means",
        "examples",
        "pairs",
        "effects",
        "neurons",
    ):
        if run.has_table(name):
            counts[name] = run.table_rows(name)
    return counts


def _write_old_format(
    run: object, keys: list[tuple[int, int]], baseline: set[tuple[int, int]], seed: int
) -> None:
    """attributions sorted by (method, example_id, head) and labels by (layer, example), in
    1M-row row groups, as written before 2026-12-05 (no attribution_means)."""
    import pyarrow.parquet as pq

    from lookuplens.store import conform_table

    def gen(table: str) -> Iterator[pa.Table]:
        if table == "labels":
            first = 0
            for k in keys:
                yield Neuron(k[0], k[1], first, k in baseline, seed).labels()
                first += TOP + CONTRAST
            return
        for m in range(3):
            first = 0
            for k in keys:
                t = Neuron(k[0], k[1], first, k in baseline, seed).attributions("method")
                first += TOP + CONTRAST
                codes = t.column("method").combine_chunks().indices.to_numpy()
                yield t.filter(pa.array(codes == m))

    for name in ("attributions", "labels"):
        path = run.table_path(name)  # type: ignore[attr-defined]
        writer = None
        for chunk in gen(name):
            chunk = conform_table(name, chunk)
            if writer is None:
                writer = pq.ParquetWriter(path, chunk.schema, compression="zstd")
            writer.write_table(chunk, row_group_size=1 << 20)
        assert writer is not None
        writer.close()


def _write_explained(
    run: object,
    kept: pd.DataFrame,
    keys: list[tuple[int, int]],
    baseline: set[tuple[int, int]],
    rng: np.random.Generator,
) -> None:
    neurons = pd.DataFrame(keys, columns=["layer", "neuron"])
    neurons["baseline"] = [k in baseline for k in keys]
    rows = []
    for target, df in (("pair", kept), ("neuron", neurons)):
        for r in df.itertuples(index=False):
            tp, fp, tn, fn = (int(x) for x in rng.integers(1, 8, size=4))
            rows.append(
                {
                    "layer": r.layer,
                    "neuron": r.neuron,
                    "head_layer": getattr(r, "head_layer", None) if target == "pair" else None,
                    "head": getattr(r, "head", None) if target == "pair" else None,
                    "explainer": "offline",
                    "scorer": "offline",
                    "n_test": tp + fp + tn + fn,
                    "tp": tp,
                    "fp": fp,
                    "tn": tn,
                    "fn": fn,
                    "balanced_accuracy": 0.5 * (tp / (tp + fn) + tn / (tn + fp)),
                    "auroc": float(rng.uniform(0.4, 1)),
                    "baseline": bool(r.baseline),
                    "target": target,
                    "status": "ok",
                    "explanation": f"fires after w{int(rng.integers(1000, 120000))} in a list",
                }
            )
    df = pd.DataFrame(rows).astype({"head_layer": "Int64", "head": "Int64"})
    scores = df.drop(columns=["explanation"])
    run.write_table("scores", scores)  # type: ignore[attr-defined]
    expl = df[
        [
            "layer",
            "neuron",
            "head_layer",
            "head",
            "explainer",
            "explanation",
            "target",
            "baseline",
            "status",
        ]
    ].assign(
        llm_model=pd.Series([None] * len(df), dtype="string"), prompt_tokens=0, completion_tokens=0
    )
    run.write_table("explanations", expl)  # type: ignore[attr-defined]
    pk = kept.reset_index(drop=True)
    donor = pk.sample(frac=1.0, random_state=1).reset_index(drop=True)
    ctrl = scores[scores.target == "pair"].reset_index(drop=True).copy()
    ctrl["donor_layer"], ctrl["donor_neuron"] = donor.layer, donor.neuron
    ctrl["donor_head_layer"], ctrl["donor_head"] = donor.head_layer, donor["head"]
    ctrl["balanced_accuracy"] = rng.uniform(0.4, 0.6, len(ctrl))
    run.write_table("score_controls", ctrl)  # type: ignore[attr-defined]


def _findings(kept: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    f = kept[["layer", "neuron", "token", "baseline", "head_layer", "head"]].head(200).copy()
    n = len(f)
    f["cue"] = "village, farm"
    f["n_swapped"] = rng.integers(3, 30, n)
    f["median_share_removed"] = rng.uniform(0.5, 1.2, n)
    f["fraction_removed"] = rng.uniform(0.5, 1.0, n)
    f["median_delta_logprob"] = rng.normal(-1, 0.3, n)
    f["kept"] = True
    f["cue_token_ids"] = [[int(x) for x in rng.integers(1000, 120000, 2)] for _ in range(n)]
    f["ks_stat"] = rng.uniform(0.3, 0.9, n)
    return f


# ------------------------------------------------------------------------ measuring


def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB (empty once it has exited)."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[key] = int(m.group(1)) / 1024
    return out


def _env(src: str | None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if src:
        env["PYTHONPATH"] = src
    return env


def start_server(
    run: Path, src: str | None, timeout: float
) -> tuple[subprocess.Popen[str], str | None, float, float]:
    """`lookuplens serve` on a free port: (process, URL or None, seconds to answer, peak MB
    while starting)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookuplens", "serve", str(run), "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(src),
    )
    t0 = time.perf_counter()
    url: str | None = None
    peak = 0.0
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    while time.perf_counter() - t0 < timeout and proc.poll() is None:
        peak = max(peak, proc_mem(proc.pid).get("VmHWM", 0.0))
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", "".join(lines))
        if m:
            url = m.group(1)
            break
        time.sleep(0.05)
    buf = "".join(lines)
    if url is None:
        peak = max(peak, proc_mem(proc.pid).get("VmHWM", 0.0))
        if proc.poll() is None:
            proc.kill()
        tail = buf.strip().splitlines()[-3:]
        print(f"  server did not answer ({'; '.join(tail) or 'no output'})")
        return proc, None, time.perf_counter() - t0, peak
    # it prints the URL before it listens
    while time.perf_counter() - t0 < timeout:
        try:
            urllib.request.urlopen(url + "api/model", timeout=5).read()
            break
        except OSError:
            time.sleep(0.05)
    return proc, url, time.perf_counter() - t0, peak


def get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        n = len(r.read())
    return time.perf_counter() - t0, n


def targets(
    run: Path, n: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int, int, int]], list[int]]:
    """Neurons and kept pairs from the small tables (spread over the layers)."""
    p = pd.read_parquet(
        run / "pairs.parquet", columns=["layer", "neuron", "head_layer", "head", "kept"]
    )
    kept = p[p.kept].reset_index(drop=True)
    neurons = p[["layer", "neuron"]].drop_duplicates().reset_index(drop=True)
    pick = np.linspace(0, len(neurons) - 1, n).astype(int)
    nkeys = [(int(neurons.layer[i]), int(neurons.neuron[i])) for i in pick]
    pick = np.linspace(0, len(kept) - 1, n).astype(int)
    pkeys = [
        (int(kept.layer[i]), int(kept.neuron[i]), int(kept.head_layer[i]), int(kept["head"][i]))
        for i in pick
    ]
    ex = pd.read_parquet(run / "examples.parquet", columns=["example_id"]).example_id
    eids = [int(ex.iloc[i]) for i in np.linspace(0, len(ex) - 1, n).astype(int)]
    return nkeys, pkeys, eids


def measure_server(run: Path, src: str | None, n_targets: int, timeout: float) -> dict[str, Any]:
    proc, url, startup, peak = start_server(run, src, timeout)
    out: dict[str, object] = {"startup_s": startup}
    try:
        if url is None:
            out["failed"] = True
            out["peak_mb"] = peak
            return out
        out["open"] = proc_mem(proc.pid)
        nkeys, pkeys, eids = targets(run, n_targets)
        routes: dict[str, list[str]] = {
            "/": [
                url,
                url + "?ngroup=all&pkept=all&psort=mean_direct",
                url + "?nsort=best_e&norder=asc&npage=3",
            ],
            "/neurons/L/N": [f"{url}neurons/{a}/{b}" for a, b in nkeys],
            "/pairs/L/N/HL/H": [f"{url}pairs/{a}/{b}/{c}/{d}" for a, b, c, d in pkeys],
            "/api/run": [url + "api/run"],
            "/api/model": [url + "api/model"],
            "/api/neurons": [
                url + "api/neurons",
                url + "api/neurons?group=all&sort=effect",
                url + "api/neurons?sort=n_kept&page=2",
            ],
            "/api/pairs": [
                url + "api/pairs",
                url + "api/pairs?kept=all&sort=mean_direct",
                url + "api/pairs?q=w1",
            ],
            "/api/neurons/L/N": [f"{url}api/neurons/{a}/{b}" for a, b in nkeys],
            "/api/neurons/L/N/activations": [
                f"{url}api/neurons/{a}/{b}/activations" for a, b in nkeys
            ],
            "/api/neurons/L/N/vocab": [f"{url}api/neurons/{a}/{b}/vocab" for a, b in nkeys],
            "/api/pairs/L/N/HL/H": [f"{url}api/pairs/{a}/{b}/{c}/{d}" for a, b, c, d in pkeys],
            "/api/pairs/L/N/HL/H/attention": [
                f"{url}api/pairs/{a}/{b}/{c}/{d}/attention" for a, b, c, d in pkeys
            ],
            "/api/examples/ID": [f"{url}api/examples/{i}" for i in eids],
            "/api/scores/distribution": [url + "api/scores/distribution"],
        }
        lat: dict[str, dict[str, float]] = {}
        for name, urls in routes.items():
            cold, warm = [], []
            for u in urls:
                dt, _n = get(u)
                cold.append(dt)
                for _ in range(2):
                    warm.append(get(u)[0])
            lat[name] = {
                "cold_median_ms": 1000 * statistics.median(cold),
                "cold_max_ms": 1000 * max(cold),
                "cached_median_ms": 1000 * statistics.median(warm),
                "n": len(urls),
            }
        out["latency"] = lat
        out["after"] = proc_mem(proc.pid)
        model = json.loads(urllib.request.urlopen(url + "api/model", timeout=10).read())
        out["model_loaded"] = model.get("loaded")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return out


def measure_report(run: Path, src: str | None, timeout: float) -> dict[str, Any]:
    """`lookuplens report --no-model`: peak memory (its own VmHWM, polled) and time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _REPORT_CHILD, str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(src),
    )
    peak = 0.0
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        peak = max(peak, proc_mem(proc.pid).get("VmHWM", 0.0))
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    text = proc.stdout.read() if proc.stdout else ""
    m = re.search(r"HWM_MB=([\d.]+)", text)
    if m:
        peak = max(peak, float(m.group(1)))
    return {
        "seconds": time.perf_counter() - t0,
        "peak_mb": peak,
        "ok": proc.returncode == 0,
        "tail": text.strip().splitlines()[-1:],
    }


_REPORT_CHILD = """
import re, sys
from pathlib import Path
from lookuplens.cli import app
try:
    app(["report", sys.argv[1], "--no-model"], standalone_mode=False)
finally:
    m = re.search(r"^VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text(), re.M)
    print(f"HWM_MB={int(m.group(1)) / 1024:.1f}")
"""


def show(label: str, res: dict[str, Any], rep: dict[str, Any] | None) -> None:
    print(f"\n== {label}")
    if res.get("failed"):
        peak, secs = res["peak_mb"], res["startup_s"]
        print(f"  the dashboard did not open within its time: peak {peak:.0f} MB, {secs:.1f} s")
    else:
        o, a = res["open"], res["after"]
        print(
            f"  open in {res['startup_s']:.1f} s: "
            f"VmRSS {o['VmRSS']:.0f} MB, VmHWM {o['VmHWM']:.0f} MB"
        )
        print(
            f"  after the requests: VmRSS {a['VmRSS']:.0f} MB, VmHWM {a['VmHWM']:.0f} MB; "
            f"model loaded: {res['model_loaded']}"
        )
        print(
            f"  {'route':34s} {'n':>3s} {'cold median':>12s} {'cold max':>10s} {'cached':>8s}  (ms)"
        )
        for name, st in res["latency"].items():
            print(
                f"  {name:34s} {st['n']:3d} {st['cold_median_ms']:12.1f} "
                f"{st['cold_max_ms']:10.1f} {st['cached_median_ms']:8.1f}"
            )
    if rep is not None:
        state = "ok" if rep["ok"] else f"failed {rep['tail']}"
        secs, peak = rep["seconds"], rep["peak_mb"]
        print(f"  lookuplens report --no-model: {secs:.1f} s, peak {peak:.0f} MB ({state})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000_000, help="attribution rows (at least)")
    ap.add_argument("--targets", type=int, default=5, help="neurons and pairs requested")
    ap.add_argument("--unsorted", action="store_true", help="write the old (unsorted) format")
    ap.add_argument("--baseline-src", default="", help="another src/ folder to measure too")
    ap.add_argument("--no-report", action="store_true", help="skip lookuplens report")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--keep", default="", help="write the run directory here and keep it")
    ap.add_argument("--json", default="", help="write the figures to this file too")
    args = ap.parse_args()
    root = (
        Path(args.keep)
        if args.keep
        else Path(tempfile.mkdtemp(prefix="bench-dashboard-", dir="/tmp"))
    )
    run = root / "run"
    try:
        t0 = time.perf_counter()
        counts = write_run(run, args.rows, unsorted=args.unsorted)
        size = sum(p.stat().st_size for p in run.iterdir() if p.is_file()) / 2**20
        gen_peak = proc_mem(os.getpid()).get("VmHWM", math.nan)
        secs = time.perf_counter() - t0
        print(
            f"run directory {run}: {size:.0f} MB, written in {secs:.0f} s "
            f"(generator peak {gen_peak:.0f} MB)"
        )
        print("  " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        fmt = (
            "old format (unsorted, no attribution_means)"
            if args.unsorted
            else "sorted, with attribution_means"
        )
        results: dict[str, object] = {"counts": counts, "format": fmt}
        res = measure_server(run, None, args.targets, args.timeout)
        rep = None if args.no_report else measure_report(run, None, args.timeout)
        show(f"this checkout ({fmt})", res, rep)
        results["lazy"] = {"server": res, "report": rep}
        if args.baseline_src:
            res_b = measure_server(run, args.baseline_src, args.targets, args.timeout)
            rep_b = None if args.no_report else measure_report(run, args.baseline_src, args.timeout)
            show(f"baseline {args.baseline_src}", res_b, rep_b)
            results["baseline"] = {"server": res_b, "report": rep_b}
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
