"""A large made-up run directory (1,000 tracked neurons) whose tables follow the format,
for checking that the dashboard pages stay bounded and fast on big runs. The numbers
mean nothing; the model sizes match a tiny GPT-2 built with ``n_layers=4, d_mlp=256``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lookuplens.store import RunDir

N_LAYERS, N_HEADS, D_MLP, VOCAB = 4, 4, 256, 300
TINY_KWARGS = {"n_layers": N_LAYERS, "d_mlp": D_MLP, "n_heads": N_HEADS}


def build_large_run(
    path: Path,
    model_path: str,
    n_tracked: int = 1000,
    examples_per_neuron: int = 20,
    methods: tuple[str, ...] = ("direct", "zero_ablation"),
    seed: int = 0,
) -> RunDir:
    rng = np.random.default_rng(seed)
    model_meta = {
        "name": model_path,
        "path": model_path,
        "architecture": "gpt2",
        "model_type": "gpt2",
        "n_layers": N_LAYERS,
        "n_heads": N_HEADS,
        "d_model": 32,
        "d_mlp": D_MLP,
        "d_vocab": VOCAB,
    }
    run = RunDir.create(
        path,
        {"model": model_meta, "config": {"model": model_path, "dtype": "float32"}, "seed": seed},
    )
    layer = np.repeat(np.arange(N_LAYERS), D_MLP)
    neuron = np.tile(np.arange(D_MLP), N_LAYERS)
    n_all = len(layer)
    tracked = rng.choice(n_all, size=n_tracked, replace=False)
    selected = np.zeros(n_all, bool)
    baseline = np.zeros(n_all, bool)
    selected[tracked[: int(n_tracked * 0.9)]] = True
    baseline[tracked[int(n_tracked * 0.9) :]] = True
    token_id = rng.integers(1, VOCAB, size=n_all)
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
                "vocab_kurtosis": rng.uniform(2, 9, size=n_all),
                "vocab_skew": rng.normal(size=n_all),
                "selected": selected,
                "baseline": baseline,
            }
        ),
    )
    keys = [(int(layer[i]), int(neuron[i]), bool(baseline[i])) for i in sorted(tracked)]
    ex_rows: dict[str, list[object]] = {c: [] for c in ("example_id", "layer", "neuron", "rank")}
    tokens: list[list[int]] = []
    eid = 0
    for lay, neu, _ in keys:
        for r in range(examples_per_neuron):
            ex_rows["example_id"].append(eid)
            ex_rows["layer"].append(lay)
            ex_rows["neuron"].append(neu)
            ex_rows["rank"].append(r)
            tokens.append([0, *rng.integers(1, VOCAB, size=int(rng.integers(6, 24))).tolist()])
            eid += 1
    n_ex = eid
    act = rng.uniform(0, 3, size=n_ex)
    examples = pd.DataFrame(ex_rows).assign(
        doc_id=rng.integers(0, 5000, size=n_ex),
        position=rng.integers(5, 200, size=n_ex),
        activation=act,
        start=0,
        tokens=tokens,
        text=[" ".join(f"w{t}" for t in tok[1:]) for tok in tokens],
        trimmed_activation=act * 0.9,
        split=np.where(rng.random(n_ex) < 0.66, "train", "test"),
    )
    run.write_table("examples", examples)
    # every upstream head of every neuron, for each example
    ex_layer = examples.layer.to_numpy()
    att_parts, lab_parts, pair_rows = [], [], []
    for hl in range(N_LAYERS):
        for h in range(N_HEADS):
            mask = ex_layer >= hl
            ids = examples.example_id.to_numpy()[mask]
            vals = rng.normal(size=ids.size)
            for m in methods:
                att_parts.append(
                    pd.DataFrame(
                        {
                            "example_id": ids,
                            "layer": ex_layer[mask],
                            "neuron": examples.neuron.to_numpy()[mask],
                            "head_layer": hl,
                            "head": h,
                            "method": m,
                            "value": vals + 0.01 * rng.normal(size=ids.size),
                        }
                    )
                )
            lab_parts.append(
                pd.DataFrame(
                    {
                        "example_id": ids,
                        "layer": ex_layer[mask],
                        "neuron": examples.neuron.to_numpy()[mask],
                        "head_layer": hl,
                        "head": h,
                        "active": vals > 0.8,
                        "split": examples.split.to_numpy()[mask],
                    }
                )
            )
    run.write_table("attributions", pd.concat(att_parts, ignore_index=True))
    run.write_table("labels", pd.concat(lab_parts, ignore_index=True))
    for lay, neu, base in keys:
        for hl in range(lay + 1):
            for h in range(N_HEADS):
                rate = float(rng.uniform(0, 1))
                pair_rows.append(
                    {
                        "layer": lay,
                        "neuron": neu,
                        "head_layer": hl,
                        "head": h,
                        "active_rate": rate,
                        "n_train": 13,
                        "kept": 0.25 <= rate <= 0.75,
                        "ks_stat": float(rng.uniform()),
                        "ks_pvalue": float(rng.uniform()),
                        "mechanism": "few",
                        "mean_direct": float(rng.normal()),
                        "baseline": base,
                    }
                )
    pairs = pd.DataFrame(pair_rows)
    run.write_table("pairs", pairs)
    kept = pairs[pairs.kept]
    score_rows = []
    for p in kept.itertuples(index=False):
        tp, fp, tn, fn = (int(x) for x in rng.integers(1, 6, size=4))
        score_rows.append(
            {
                "layer": p.layer,
                "neuron": p.neuron,
                "head_layer": p.head_layer,
                "head": p.head,
                "explainer": "offline",
                "scorer": "offline",
                "n_test": tp + fp + tn + fn,
                "tp": tp,
                "fp": fp,
                "tn": tn,
                "fn": fn,
                "balanced_accuracy": 0.5 * (tp / (tp + fn) + tn / (tn + fp)),
                "auroc": float(rng.uniform(0.4, 1)),
                "baseline": bool(p.baseline),
            }
        )
    scores = pd.DataFrame(score_rows).astype({"head_layer": "Int64", "head": "Int64"})
    run.write_table("scores", scores)
    expl = kept[["layer", "neuron", "head_layer", "head"]].assign(
        explainer="offline",
        explanation=[f"looks up w{int(x)}" for x in rng.integers(1, VOCAB, size=len(kept))],
        llm_model=None,
        prompt_tokens=0,
        completion_tokens=0,
    )
    run.write_table(
        "explanations",
        expl.astype({"head_layer": "Int64", "head": "Int64", "llm_model": "string"}),
    )
    eff = examples[["example_id", "layer", "neuron"]]
    effects = pd.concat(
        [
            eff.assign(
                intervention=name,
                delta_logprob=rng.normal(size=len(eff)),
                kl=rng.uniform(size=len(eff)),
            )
            for name in ("neuron_zero", "neuron_mean", "neuron_scale_2")
        ],
        ignore_index=True,
    )
    run.write_table("effects", effects)
    return run
