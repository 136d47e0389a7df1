"""Candidate pruning in the attribute stage: time against heads, and agreement (issue 23).

    .venv/bin/python bench/bench_prune.py [--quick] [--json out.json]

Llama-shaped random models (12 layers, d_model 256 whatever the heads, so that a partial
forward pass costs the same) with 4, 8, 16 and 32 heads per layer, each run through the
pipeline up to the attribute stage on the storyworld text (the 4 next-token neurons of
each of layers 9-11, their top 20 and contrast prompts): once with the default pruning
(`--candidates 6 --candidate-share 0.9`), then the attribute stage again with
`--candidates 0` (every upstream head ablated) on the same examples. Printed: the
attribute stage's seconds of each, their ratio, the heads ablated per prompt (the cost:
K + K/2 or more with pruning, every upstream head without), the attribution rows, the share
of (example, head) labels that agree, the Jaccard index of the kept pairs, and the
recall of the full sweep's active heads among the candidates. The baseline of each row
is the full sweep measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


def measure(heads: int, docs: int, tmp: Path, d_model: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lookuplens.attribute import AttributeConfig
    from lookuplens.corpus import CorpusSpec
    from lookuplens.model.tiny import tiny_config
    from lookuplens.neurons import NeuronsConfig
    from lookuplens.pipeline import RunConfig, run_pipeline
    from lookuplens.scan import ScanConfig
    from lookuplens.store import RunDir
    from lookuplens.zoo import default_model_path

    folder = tmp / f"llama-{heads}"
    # a random Llama of 12 layers with the storyworld's tokenizer (so the prompts are text)
    tok = AutoTokenizer.from_pretrained(default_model_path())
    cfg = tiny_config(
        "llama", len(tok), n_layers=12, d_model=d_model, n_heads=heads, d_mlp=256, n_ctx=256
    )
    cfg.bos_token_id = cfg.eos_token_id = tok.bos_token_id or 0
    torch.manual_seed(heads)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    run_cfg = RunConfig(
        model=str(folder),
        corpus=CorpusSpec("storyworld", storyworld_docs=docs),
        neurons=NeuronsConfig(layers=(9, 10, 11), top_n=4, token_filter="none"),
        scan=ScanConfig(k=20),
        device="cpu",
    )
    pruned_dir = tmp / f"run-{heads}"
    run_pipeline(run_cfg, pruned_dir, until="attribute")
    full_dir = tmp / f"run-{heads}-full"
    shutil.copytree(pruned_dir, full_dir)
    full_cfg = dataclasses.replace(
        run_cfg, attribute=dataclasses.replace(AttributeConfig(), candidates=0)
    )
    run_pipeline(full_cfg, full_dir, until="attribute", overwrite="attribute")
    pr, fr = RunDir.open(pruned_dir), RunDir.open(full_dir)
    out: dict[str, float] = {"heads": heads}
    for name, run in (("pruned", pr), ("full", fr)):
        out[f"seconds_{name}"] = float(run.meta["stages"]["attribute"]["seconds"])  # type: ignore[index]
        out[f"rows_{name}"] = run.read_table("attributions").num_rows
    for name, run in (("pruned", pr), ("full", fr)):
        lab = run.read_df("labels")
        out[f"ablated_{name}"] = float(lab.candidate.mean() * len(lab) / lab.example_id.nunique())
    lp, lf = pr.read_df("labels"), fr.read_df("labels")
    key = ["example_id", "head_layer", "head"]
    both = lf.merge(lp, on=key, suffixes=("_full", "_pruned"))
    out["examples"] = int(lp.example_id.nunique())
    out["label_agreement"] = float((both.active_full == both.active_pruned).mean())
    act = both[both.active_full]
    out["candidate_recall"] = float(act.candidate_pruned.mean()) if len(act) else float("nan")
    pk = ["layer", "neuron", "head_layer", "head"]
    pp, pf = pr.read_df("pairs"), fr.read_df("pairs")
    kf = set(map(tuple, pf[pf.kept][pk].to_numpy().tolist()))
    kp = set(map(tuple, pp[pp.kept][pk].to_numpy().tolist()))
    out["kept_full"], out["kept_pruned"] = len(kf), len(kp)
    out["kept_jaccard"] = len(kf & kp) / len(kf | kp) if kf | kp else 1.0
    out["speedup"] = out["seconds_full"] / out["seconds_pruned"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", default="", help="heads per layer, comma-separated (e.g. 32)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    docs = 150
    heads_list = (4, 8, 16) if args.quick else (4, 8, 16, 32)
    if args.heads:
        heads_list = tuple(int(h) for h in args.heads.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"12-layer random Llamas, d_model {args.d_model}, {docs} storyworld documents "
            f"scanned, neurons in 9-11, {os.cpu_count()} CPU threads"
        )
        print(
            "heads  examples  pruned s  full s  speedup  ablated/prompt pruned/full  "
            "rows pruned/full    labels agree  kept full/pruned  Jaccard  recall"
        )
        for h in heads_list:
            r = measure(h, docs, Path(tmp), args.d_model)
            rows.append(r)
            print(
                f"{h:5d}  {r['examples']:8.0f}  {r['seconds_pruned']:8.1f}"
                f"  {r['seconds_full']:6.1f}"
                f"  {r['speedup']:6.1f}x  {r['ablated_pruned']:13.1f}/{r['ablated_full']:<13.1f}"
                f"  {r['rows_pruned']:9.0f}/{r['rows_full']:<9.0f}"
                f"  {r['label_agreement']:12.3f}  {r['kept_full']:6.0f}/{r['kept_pruned']:<6.0f}"
                f"     {r['kept_jaccard']:6.3f}  {r['candidate_recall']:.3f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
