"""Scan throughput and memory, as ratios against baselines measured in the same run.

    .venv/bin/python bench/bench_scan.py            # all measurements (several minutes)
    .venv/bin/python bench/bench_scan.py --quick    # smaller sizes

1. A GPT-2-small-shaped random model (12 layers, d_model 768, vocabulary 50257), 60 tracked
   neurons in layers 9-11 as in the paper: lookuplens scan tokens/s divided by a plain HF
   forward's tokens/s over the same batches (target >= 1.15: the scan stops after the last
   tracked layer and never computes the LM head), and divided by a TransformerLens
   `run_with_cache` scan of a same-shaped HookedTransformer (when transformer_lens is
   installed: pip install 'lookuplens[bench]').
2. Peak memory (max RSS of a fresh process) scanning 100k versus 1M tokens of the storyworld
   corpus with the bundled model (target: growth under 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def gpt2_small_dir(root: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from lookuplens.model.tiny import build_tokenizer

    out = root / "gpt2-small-random"
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


def corpus_file(root: Path, n_docs: int) -> Path:
    from lookuplens.zoo.storyworld import generate_corpus

    path = root / "stories.txt"
    path.write_text(
        "\n".join(d.text.replace("\n", " ") for d in generate_corpus(n_docs, 7, "heldout"))
    )
    return path


def transformer_lens_model(model_dir: Path):  # type: ignore[no-untyped-def]
    """The same GPT-2 in TransformerLens: a `TransformerBridge` over the saved HF model
    (TransformerLens 4, which removed `HookedTransformer`), or a `HookedTransformer` of the
    same shape (TransformerLens 2-3); None when TransformerLens is not installed."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        pass
    else:
        bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu")
        bridge.eval()
        return bridge
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        return None
    cfg = HookedTransformerConfig(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=1024,
        act_fn="gelu_new",
        normalization_type="LN",
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


def bench_throughput(root: Path, n_docs: int, batch_tokens: int) -> dict[str, float]:
    from lookuplens.corpus import CorpusSpec, iter_tokenized, make_batches
    from lookuplens.model import load_model
    from lookuplens.scan import ScanConfig, scan_corpus

    lm = load_model(gpt2_small_dir(root), device="cpu")
    spec = CorpusSpec(str(corpus_file(root, n_docs)))
    docs = list(iter_tokenized(spec, lm.tokenizer, lm.max_context))
    batches = list(make_batches(docs, batch_tokens, 0))
    n_tokens = sum(b.n_tokens for b in batches)
    neurons = [(layer, n) for layer in (9, 10, 11) for n in range(0, 3072, 3072 // 20)][:60]
    cfg = ScanConfig(k=30, batch_tokens=batch_tokens, shard_docs=10**9)

    def plain() -> None:
        with torch.no_grad():
            for b in batches:
                lm.hf(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def scan() -> None:
        scan_corpus(lm, neurons, spec, cfg)

    timings: dict[str, float] = {}
    plain()  # warm-up
    for name, fn in (("plain_hf_forward", plain), ("lookuplens_scan", scan)):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        timings[name] = n_tokens / best
    tl = transformer_lens_model(root / "gpt2-small-random")
    if tl is None:
        timings["transformer_lens_scan"] = float("nan")
    else:
        names = {f"blocks.{layer}.mlp.hook_post" for layer in (9, 10, 11)}

        def tl_scan() -> None:
            best_vals = {}
            with torch.no_grad():
                for b in batches:
                    _, cache = tl.run_with_cache(
                        b.input_ids,
                        attention_mask=b.attention_mask,
                        names_filter=lambda n: n in names,
                    )
                    for layer, n in neurons:
                        a = cache[f"blocks.{layer}.mlp.hook_post"][:, :, n]
                        a = a.masked_fill(b.attention_mask == 0, -1e9).max(1).values
                        best_vals[(layer, n)] = a

        t0 = time.perf_counter()
        tl_scan()
        timings["transformer_lens_scan"] = n_tokens / (time.perf_counter() - t0)
    timings["tokens"] = n_tokens
    return timings


def peak_rss_scan(max_tokens: int) -> float:
    """Max RSS (MiB) of a fresh process scanning `max_tokens` storyworld tokens."""
    code = f"""
import resource, torch
torch.set_num_threads(2)
from lookuplens.corpus import CorpusSpec
from lookuplens.model import load_model
from lookuplens.neurons import NeuronsConfig, find_neurons, tracked
from lookuplens.scan import ScanConfig, scan_corpus
from lookuplens.zoo import default_model_path
lm = load_model(default_model_path(), device="cpu")
neurons = tracked(find_neurons(lm, NeuronsConfig()))
# max_context 128: both corpora reach the same longest batch shape, so what differs is
# only the amount of text (the peak otherwise follows the longest story seen)
spec = CorpusSpec(
    "storyworld", storyworld_docs={max_tokens // 40}, max_tokens={max_tokens}, max_context=128
)
r = scan_corpus(lm, neurons, spec, ScanConfig(shard_docs=512))
# VmHWM: this process's own peak (ru_maxrss can carry the forking parent's peak over)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
peak = int(hwm[0].split()[1]) / 1024 if hwm else 0.0
peak = peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(r.corpus.tokens, peak)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tokens, rss = out.stdout.split()
    print(f"  scanned {int(tokens):,} tokens: peak RSS {float(rss):.0f} MiB", flush=True)
    return float(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--memory-only", action="store_true", help="only part 2")
    ap.add_argument(
        "--throughput-docs",
        type=int,
        default=None,
        help="stories in the throughput part (default 200, 60 with --quick)",
    )
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results: dict[str, object] = {"cpu_count": os.cpu_count(), "torch": torch.__version__}
    if args.memory_only:
        print("1. throughput: skipped (--memory-only)", flush=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print(
                "1. throughput, GPT-2-small-shaped random model, 60 neurons in layers 9-11",
                flush=True,
            )
            n_docs = args.throughput_docs or (60 if args.quick else 200)
            t = bench_throughput(Path(tmp), n_docs=n_docs, batch_tokens=4096)
            print(f"  {int(t['tokens']):,} tokens")
            for k in ("plain_hf_forward", "lookuplens_scan", "transformer_lens_scan"):
                print(f"  {k:24s} {t[k]:10,.0f} tok/s")
            ratio = t["lookuplens_scan"] / t["plain_hf_forward"]
            print(f"  scan / plain HF forward          = {ratio:.2f}  (target >= 1.15)")
            tl = t["transformer_lens_scan"]
            if tl == tl:
                print(f"  scan / TransformerLens run_with_cache = {t['lookuplens_scan'] / tl:.2f}")
            results["throughput"] = t
            results["scan_over_hf"] = ratio
    print("2. peak memory, bundled storyworld model", flush=True)
    small, big = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
    # the peak is set by the largest batch's tensors and varies between runs of the same
    # size, so each size is measured three times and the medians compared
    a = statistics.median(peak_rss_scan(small) for _ in range(3))
    b = statistics.median(peak_rss_scan(big) for _ in range(3))
    print(f"  medians: {a:.0f} MiB for {small:,} tokens, {b:.0f} MiB for {big:,}")
    growth = b / a - 1
    print(f"  {big:,} vs {small:,} tokens: peak RSS growth {growth * 100:+.1f}%  (target < 10%)")
    results["memory"] = {
        "small_tokens": small,
        "big_tokens": big,
        "small_mib": a,
        "big_mib": b,
        "growth": growth,
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
