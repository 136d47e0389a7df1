"""How often trimming keeps the word the neuron's top head reads (issue 20, item 4).

    .venv/bin/python bench/trim_context.py RUN_DIR [--limit N]

For each top prompt of each selected neuron in a finished run: the untrimmed prompt is
the document up to the firing token, as long as the examples stage allows
(`max_prompt_tokens`). On it, the neuron's top upstream head by exact direct attribution
is found and the position it attends to most from the firing token (BOS and the firing
token itself left out). The word survives when the trimmed prompt still holds that
position. Prints the share that survive, overall and per layer, against the share of the
untrimmed prompt the trimming kept (the baseline a blind cut would give).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch


def main() -> None:
    from lookuplens.corpus import iter_tokenized
    from lookuplens.examples import top_head_reads, untrimmed_prompt
    from lookuplens.model import load_model
    from lookuplens.pipeline import RunConfig
    from lookuplens.store import RunDir

    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--limit", type=int, default=0, help="Top prompts per neuron (0: all).")
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = RunDir.open(args.run)
    cfg = RunConfig.from_dict(run.meta["config"])  # type: ignore[arg-type]
    lm = load_model(cfg.model_source, device="cpu")
    ex = run.read_df("examples")
    neurons = run.read_df("neurons")
    selected = {(int(r.layer), int(r.neuron)) for r in neurons[neurons.selected].itertuples()}
    mine = np.array([(a, b) in selected for a, b in zip(ex.layer, ex.neuron, strict=True)])
    ex = ex[(ex.kind == "top").to_numpy() & mine]
    if args.limit:
        ex = ex[ex["rank"] < args.limit]
    docs = {}
    need = set(ex.doc_id)
    for d in iter_tokenized(cfg.corpus, lm.tokenizer, lm.max_context):
        if d.doc_id in need:
            docs[d.doc_id] = d.tokens
    bos = lm.bos_token_id
    prompts, firsts = [], []
    for r in ex.itertuples():
        prompt, first = untrimmed_prompt(docs[int(r.doc_id)], int(r.position), cfg.examples, bos)
        prompts.append(prompt)
        firsts.append(first)
    neurons_of = list(zip(ex.layer.astype(int), ex.neuron.astype(int), strict=True))
    reads = top_head_reads(lm, prompts, neurons_of, cfg.examples.batch_tokens)
    survived: dict[int, list[bool]] = defaultdict(list)
    kept_share: list[float] = []
    for r, read, first in zip(ex.itertuples(), reads, firsts, strict=True):
        pos = int(r.position)
        read_doc = first + read - (1 if bos is not None else 0)  # index into the document
        survived[int(r.layer)].append(read >= 0 and read_doc >= int(r.start))
        # a firing at the document's first token has no context to trim: all of it is kept
        kept_share.append((pos + 1 - int(r.start)) / max(pos + 1 - first, 1))
    allv = [v for vs in survived.values() for v in vs]
    print(f"{args.run}: {len(allv)} top prompts of selected neurons")
    print(f"top head's most-read word survives trimming: {np.mean(allv):.3f}")
    for layer in sorted(survived):
        print(f"  layer {layer}: {np.mean(survived[layer]):.3f} (n={len(survived[layer])})")
    print(f"mean share of the untrimmed prompt kept by trimming: {np.mean(kept_share):.3f}")


if __name__ == "__main__":
    main()
