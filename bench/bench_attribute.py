"""Attribution cost, as ratios against baselines measured in the same run.

    .venv/bin/python bench/bench_attribute.py [--quick]

On a GPT-2-small-shaped random model (12 layers x 12 heads), for N example prompts whose
neurons sit in layers 9-11 (the paper's GPT-2 small layers):
1. `direct` for every upstream head and every example, divided by one plain HF forward of
   those examples (target <= 1.5);
2. the zero-ablation sweep over every upstream head with prefix reuse (only layers l..L are
   recomputed) against the naive way, one full forward per head (target >= 2x faster).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from bench_scan import corpus_file, gpt2_small_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from lookuplens.attribute import AttributeConfig, attribute_examples
    from lookuplens.corpus import CorpusSpec, iter_tokenized
    from lookuplens.model import hook_name, load_model, pad_right

    n = 16 if args.quick else 48
    with tempfile.TemporaryDirectory() as tmp:
        lm = load_model(gpt2_small_dir(Path(tmp)), device="cpu")
        spec = CorpusSpec(str(corpus_file(Path(tmp), n)))
        rng = np.random.default_rng(0)
        prompts, layers, neurons = [], [], []
        for d in iter_tokenized(spec, lm.tokenizer, lm.max_context):
            cut = int(rng.integers(8, 24))
            prompts.append(d.tokens[:cut].tolist())
            layers.append(int(rng.integers(9, 12)))
            neurons.append(int(rng.integers(0, lm.d_mlp)))
        ex = pa.table(
            {
                "example_id": np.arange(len(prompts)),
                "layer": layers,
                "neuron": neurons,
                "tokens": prompts,
            }
        )
        ids, mask = pad_right(lm, prompts)
        tokens = int(mask.sum())
        print(f"{len(prompts)} prompts, {tokens} tokens, neurons in layers 9-11")

        def timed(fn, repeats: int = 2) -> float:  # type: ignore[no-untyped-def]
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            return best

        def plain() -> None:
            with torch.no_grad():
                for j in range(0, len(prompts), 32):
                    lm.hf(input_ids=ids[j : j + 32], attention_mask=mask[j : j + 32])

        t_plain = timed(plain)
        cfg = AttributeConfig(methods=("direct",), batch_examples=32)
        t_direct = timed(lambda: attribute_examples(lm, ex, cfg))
        print(
            f"1. direct, all upstream heads: {t_direct:.2f}s vs one plain forward "
            f"{t_plain:.2f}s -> ratio {t_direct / t_plain:.2f} (target <= 1.5)"
        )

        cfg = AttributeConfig(
            methods=("zero_ablation",), label_method="zero_ablation", batch_examples=32
        )
        t_reuse = timed(lambda: attribute_examples(lm, ex, cfg))

        def naive() -> None:
            for j in range(0, len(prompts), 32):
                b_ids, b_mask = ids[j : j + 32], mask[j : j + 32]
                rows = torch.arange(len(b_ids))
                pos = b_mask.sum(1) - 1
                top = max(layers[j : j + 32])
                for hl in range(top + 1):
                    for h in range(lm.n_heads):

                        def zero(z, _n, h=h):  # type: ignore[no-untyped-def]
                            z = z.clone()
                            z[:, :, h] = 0
                            return z

                        names = [hook_name(layer, "mlp.hook_post") for layer in range(9, 12)]
                        _, c = lm.run_with_cache(
                            b_ids,
                            names,
                            attention_mask=b_mask,
                            extra_hooks=[(hook_name(hl, "attn.hook_z"), zero)],
                        )
                        for layer in range(9, 12):
                            c[names[layer - 9]][rows, pos]

        t_naive = timed(naive, repeats=1)  # minutes on 2 CPU cores: one repeat
        print(
            f"2. zero-ablation sweep: prefix reuse {t_reuse:.2f}s vs naive full forwards "
            f"{t_naive:.2f}s -> {t_naive / t_reuse:.2f}x faster (target >= 2)"
        )


if __name__ == "__main__":
    main()
