"""Candidate pruning in the attribute stage: time against heads, and agreement (issue 23).

    .venv/bin/python bench/bench_prune.py [--quick] [--json out.json]

Llama-shaped random models (12 layers, d_model 256, heads of 16 dimensions) with 4, 8,
16 and 32 heads per layer; examples are prompts of the bundled storyworld text whose
neurons sit in the last three layers, labelled with the default rule
(`ablation_share`). For each model the attribute stage runs with the default pruning
(`--candidates 16`) and with `--candidates 0` (every upstream head ablated); printed:
seconds of each, their ratio, the share of (example, head) labels that agree, the
Jaccard index of the kept pairs, and the recall of the full sweep's active heads among
the candidates. The baseline of each row is the full sweep measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch


def _examples(lm, n: int, seed: int = 0) -> pa.Table:  # type: ignore[no-untyped-def]
    from lookuplens.zoo.storyworld import generate_corpus

    rng = np.random.default_rng(seed)
    docs = generate_corpus(n, 5, "heldout")
    rows = {k: [] for k in ("example_id", "layer", "neuron", "tokens", "kind", "split")}
    for i, d in enumerate(docs):
        ids = lm.to_tokens(d.text)[0].tolist()
        cut = int(rng.integers(16, min(48, len(ids))))
        rows["example_id"].append(i)
        rows["layer"].append(lm.n_layers - 1 - int(rng.integers(0, 3)))
        rows["neuron"].append(int(rng.integers(0, 4)))  # a few neurons, many prompts each
        rows["tokens"].append(ids[:cut])
        rows["kind"].append("top")
        rows["split"].append("train" if i % 5 else "test")
    table = pa.table(rows)
    # the activation each example's neuron reaches at its last token (the labels' yardstick)
    from lookuplens.model import hook_name, pad_right

    acts = []
    for i in range(len(rows["tokens"])):
        layer = rows["layer"][i]
        name = hook_name(layer, "mlp.hook_post")
        ids, mask = pad_right(lm, [rows["tokens"][i]])
        _, cache = lm.run_with_cache(ids, [name], attention_mask=mask, stop_after_layer=layer)
        acts.append(abs(float(cache[name][0, -1, rows["neuron"][i]])))
    return table.append_column("trimmed_activation", pa.array(acts, pa.float64()))


def measure(heads: int, n: int, tmp: Path) -> dict[str, float]:
    from lookuplens.attribute import (
        AttributeConfig,
        attribute_examples,
        build_pairs,
        label_examples,
    )
    from lookuplens.model import load_model
    from lookuplens.model.tiny import build_tiny_model
    from lookuplens.zoo import default_model_path

    folder = tmp / f"llama-{heads}"
    # the storyworld's tokenizer (so the prompts are text), a Llama of 12 layers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path())
    build_tiny_model(
        "llama", folder, n_layers=12, d_model=16 * heads, n_heads=heads, d_mlp=256, n_ctx=64
    )
    tok.save_pretrained(folder)  # replaces the tiny tokenizer: vocab must fit the model
    lm = load_model(folder, device="cpu")
    if lm.d_vocab < len(tok):
        raise SystemExit("tokenizer larger than the model's vocabulary")
    ex = _examples(lm, n)
    out: dict[str, float] = {"heads": heads}
    results = {}
    for k in (16, 0):
        cfg = AttributeConfig(candidates=k)
        t0 = time.perf_counter()
        att = attribute_examples(lm, ex, cfg)
        out[f"seconds_k{k}"] = time.perf_counter() - t0
        labels = label_examples(att, ex, cfg)
        pairs = build_pairs(att, labels, _neurons(ex), cfg, ex).to_pandas()
        results[k] = (labels.to_pandas(), pairs, att.num_rows)
        out[f"rows_k{k}"] = att.num_rows
    (lp, pp, _), (lf, pf, _) = results[16], results[0]
    key = ["example_id", "head_layer", "head"]
    both = lf.merge(lp, on=key, suffixes=("_full", "_pruned"))
    out["label_agreement"] = float((both.active_full == both.active_pruned).mean())
    act = both[both.active_full]
    out["candidate_recall"] = float(act.candidate_pruned.mean()) if len(act) else float("nan")
    pk = ["layer", "neuron", "head_layer", "head"]
    kf = set(map(tuple, pf[pf.kept][pk].to_numpy().tolist()))
    kp = set(map(tuple, pp[pp.kept][pk].to_numpy().tolist()))
    out["kept_full"], out["kept_pruned"] = len(kf), len(kp)
    out["kept_jaccard"] = len(kf & kp) / len(kf | kp) if kf | kp else 1.0
    out["speedup"] = out["seconds_k0"] / out["seconds_k16"]
    return out


def _neurons(ex: pa.Table) -> pa.Table:
    df = ex.to_pandas()[["layer", "neuron"]].drop_duplicates()
    return pa.table(
        {
            "layer": df.layer.to_numpy(),
            "neuron": df.neuron.to_numpy(),
            "token": [" x"] * len(df),
            "selected": [True] * len(df),
            "baseline": [False] * len(df),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    n = 24 if args.quick else 64
    heads_list = (4, 8, 16) if args.quick else (4, 8, 16, 32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{n} examples per model, 12 layers, neurons in layers 9-11")
        print("heads  k=16 s  k=0 s  speedup  labels agree  kept (full/pruned)  Jaccard  recall")
        for h in heads_list:
            r = measure(h, n, Path(tmp))
            rows.append(r)
            print(
                f"{h:5d}  {r['seconds_k16']:6.1f}  {r['seconds_k0']:5.1f}  {r['speedup']:6.1f}x"
                f"  {r['label_agreement']:12.3f}  {r['kept_full']:6.0f}/{r['kept_pruned']:<6.0f}"
                f"        {r['kept_jaccard']:6.3f}  {r['candidate_recall']:.3f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
