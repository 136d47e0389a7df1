"""Attribution cost, as ratios against baselines measured in the same run.

    .venv/bin/python bench/bench_attribute.py [--quick]
    .venv/bin/python bench/bench_attribute.py --device cuda --dtype bfloat16 --shape llama-1b

On a random-weight model of `--shape` (see bench_scan.py: gpt2-small, 12 layers x 12
heads; llama-1b, 16 layers x 32 heads), for N example prompts whose neurons sit in the
last three layers (GPT-2 small's 9-11, the paper's):
1. `direct` for every upstream head and every example, divided by one plain HF forward of
   those examples (target <= 1.5);
2. the zero-ablation sweep over every upstream head with prefix reuse (only layers l..L are
   recomputed) against the naive way, one full forward per head (target >= 2x faster).

Attribution runs in float32, as the attribute stage does: with ``--dtype bfloat16`` the
model is loaded in bfloat16 for the plain-forward baseline and again in float32 (as the
pipeline does for the stage) for attribution, and part 1 prints the ratio against both
plain forwards. ``--device cuda`` synchronises the GPU before every timer is read.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from bench_scan import (
    SHAPES,
    add_device_args,
    check_device,
    corpus_file,
    device_name,
    random_model_dir,
    sync,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prompts", type=int, default=None, help="prompts (default 48, 16 --quick)")
    ap.add_argument(
        "--parts",
        default="1,2",
        help="which measurements: 1 (direct), 2 (zero-ablation sweep), or 1,2",
    )
    add_device_args(ap)
    args = ap.parse_args()
    check_device(args.device)
    parts = {int(p) for p in args.parts.split(",")}
    torch.set_num_threads(args.threads)
    from lookuplens.attribute import AttributeConfig, attribute_examples
    from lookuplens.corpus import CorpusSpec, iter_tokenized
    from lookuplens.model import hook_name, load_model, pad_right

    dev = args.device
    n = args.prompts or (16 if args.quick else 48)
    print(f"device: {dev} ({device_name(dev)}), dtype {args.dtype}, shape {args.shape}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model_dir(Path(tmp), args.shape, dev)
        lm = load_model(model_dir, device=dev, dtype=args.dtype)
        # the attribute stage's model: float32 (the pipeline loads it beside a bf16 one)
        lm32 = lm if args.dtype == "float32" else load_model(model_dir, device=dev)
        spec = CorpusSpec(str(corpus_file(Path(tmp), n)))
        rng = np.random.default_rng(0)
        top = int(SHAPES[args.shape]["layers"])
        neuron_layers = range(top - 3, top)
        prompts, layers, neurons = [], [], []
        for d in iter_tokenized(spec, lm.tokenizer, lm.max_context):
            cut = int(rng.integers(8, 24))
            prompts.append(d.tokens[:cut].tolist())
            layers.append(int(rng.integers(top - 3, top)))
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
        print(
            f"{len(prompts)} prompts, {tokens} tokens, neurons in layers {top - 3}-{top - 1}",
            flush=True,
        )

        def timed(fn, repeats: int = 2) -> float:  # type: ignore[no-untyped-def]
            best = float("inf")
            for _ in range(repeats):
                sync(dev)
                t0 = time.perf_counter()
                fn()
                sync(dev)
                best = min(best, time.perf_counter() - t0)
            return best

        def plain(model) -> None:  # type: ignore[no-untyped-def]
            with torch.no_grad():
                for j in range(0, len(prompts), 32):
                    model.hf(
                        input_ids=ids[j : j + 32].to(model.device),
                        attention_mask=mask[j : j + 32].to(model.device),
                        use_cache=False,
                    )

        if 1 in parts:
            plain(lm)  # warm-up
            t_plain = timed(lambda: plain(lm))
            cfg = AttributeConfig(methods=("direct",), label_rule="mean_std", batch_examples=32)
            t_direct = timed(lambda: attribute_examples(lm32, ex, cfg))
            print(
                f"1. direct (float32), all upstream heads: {t_direct:.2f}s vs one plain "
                f"{args.dtype} forward {t_plain:.2f}s -> ratio {t_direct / t_plain:.2f} "
                "(target <= 1.5)",
                flush=True,
            )
            if lm32 is not lm:
                plain(lm32)
                t_plain32 = timed(lambda: plain(lm32))
                print(
                    f"   against one plain float32 forward {t_plain32:.2f}s -> ratio "
                    f"{t_direct / t_plain32:.2f}",
                    flush=True,
                )
        if 2 in parts:
            # candidates=0: every upstream head, as the naive way (the default prunes)
            cfg = AttributeConfig(
                methods=("zero_ablation",),
                label_method="zero_ablation",
                batch_examples=32,
                candidates=0,
            )
            t_reuse = timed(lambda: attribute_examples(lm32, ex, cfg))
            names = [hook_name(layer, "mlp.hook_post") for layer in neuron_layers]

            def naive() -> None:
                for j in range(0, len(prompts), 32):
                    b_ids, b_mask = ids[j : j + 32], mask[j : j + 32]
                    rows = torch.arange(len(b_ids), device=lm32.device)
                    pos = (b_mask.sum(1) - 1).to(lm32.device)
                    last = max(layers[j : j + 32])
                    for hl in range(last + 1):
                        for h in range(lm32.n_heads):

                            def zero(z, _n, h=h):  # type: ignore[no-untyped-def]
                                z = z.clone()
                                z[:, :, h] = 0
                                return z

                            _, c = lm32.run_with_cache(
                                b_ids,
                                names,
                                attention_mask=b_mask,
                                extra_hooks=[(hook_name(hl, "attn.hook_z"), zero)],
                            )
                            for name in names:
                                c[name][rows, pos]

            t_naive = timed(naive, repeats=1)  # minutes on 2 CPU cores: one repeat
            print(
                f"2. zero-ablation sweep: prefix reuse {t_reuse:.2f}s vs naive full forwards "
                f"{t_naive:.2f}s -> {t_naive / t_reuse:.2f}x faster (target >= 2)",
                flush=True,
            )
        if dev == "cuda":
            print(f"GPU peak memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
