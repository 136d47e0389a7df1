"""Scan throughput and memory, as ratios against baselines measured in the same run.

    .venv/bin/python bench/bench_scan.py            # all measurements (several minutes)
    .venv/bin/python bench/bench_scan.py --quick    # smaller sizes
    .venv/bin/python bench/bench_scan.py --device cuda --dtype bfloat16 --shape llama-1b

1. A random-weight model of `--shape` (gpt2-small: 12 layers, d_model 768, vocabulary
   50257; llama-1b: 16 layers, d_model 2048, 32 heads, 8 key/value heads, d_mlp 8192,
   vocabulary 32000), 60 tracked neurons in its last three layers (GPT-2 small's 9-11, as
   in the paper): lookuplens scan tokens/s divided by a plain HF forward's tokens/s over
   the same batches on the same device and dtype (target >= 1.15: the scan stops after
   the last tracked layer and never computes the LM head), and divided by a
   TransformerLens `run_with_cache` scan of the same weights (when transformer_lens is
   installed: pip install 'lookuplens[bench]').
2. Peak memory (max RSS of a fresh process; on CUDA also the GPU's peak allocation)
   scanning 100k versus 1M tokens of the storyworld corpus with the bundled model
   (target: growth under 10%).

`--device cuda` synchronises the GPU before every timer is read; the device's name is
printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES: dict[str, dict[str, int | str]] = {
    "gpt2-small": {"family": "gpt2", "layers": 12, "d_model": 768, "heads": 12, "kv_heads": 12,
                   "d_mlp": 3072, "vocab": 50257},
    "llama-1b": {"family": "llama", "layers": 16, "d_model": 2048, "heads": 32, "kv_heads": 8,
                 "d_mlp": 8192, "vocab": 32000},
}  # fmt: skip
"""The random-weight model shapes the benchmarks build (`--shape`)."""


def add_device_args(ap: argparse.ArgumentParser) -> None:
    """--device, --dtype, --shape and --threads, shared by the benchmarks."""
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="gpt2-small")
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch CPU threads (default: every core; 1 on a machine other jobs share)",
    )


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here; run with --device cpu")


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    name = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), before reading a timer."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_model_dir(root: Path, shape: str = "gpt2-small", device: str = "cpu") -> Path:
    """A random-weight model of `shape`, saved in float32 with a small BPE tokenizer
    (its ids all fall in the vocabulary). Initialised on `device` (fast on a GPU); the
    same seed gives the same weights, so runs in different dtypes compare."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from lookuplens.model.tiny import build_tokenizer

    s = SHAPES[shape]
    out = root / f"{shape}-random"
    if s["family"] == "gpt2":
        cfg: object = GPT2Config(
            n_layer=s["layers"], n_embd=s["d_model"], n_head=s["heads"],
            vocab_size=s["vocab"], n_positions=1024,
        )  # fmt: skip
    else:
        cfg = LlamaConfig(
            num_hidden_layers=s["layers"], hidden_size=s["d_model"],
            num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
            intermediate_size=s["d_mlp"], vocab_size=s["vocab"],
            max_position_embeddings=2048, tie_word_embeddings=False,
        )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    del model
    return out


def gpt2_small_dir(root: Path) -> Path:
    return random_model_dir(root, "gpt2-small")


def tracked_neurons(n_layers: int, d_mlp: int, n: int = 60) -> list[tuple[int, int]]:
    """`n` neurons spread over the last three layers (GPT-2 small's 9-11)."""
    per = n // 3
    return [
        (layer, i) for layer in range(n_layers - 3, n_layers) for i in range(0, d_mlp, d_mlp // per)
    ][:n]


def corpus_file(root: Path, n_docs: int) -> Path:
    from lookuplens.zoo.storyworld import generate_corpus

    path = root / "stories.txt"
    path.write_text(
        "\n".join(d.text.replace("\n", " ") for d in generate_corpus(n_docs, 7, "heldout"))
    )
    return path


def transformer_lens_model(model_dir: Path, shape: str, device: str, dtype: str):  # type: ignore[no-untyped-def]
    """The same model in TransformerLens: a `TransformerBridge` over the saved HF model
    (TransformerLens 4, which removed `HookedTransformer`), or for GPT-2 a
    `HookedTransformer` of the same shape (TransformerLens 2-3, its own random weights);
    None when TransformerLens is not installed."""
    torch_dtype = getattr(torch, dtype)
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        pass
    else:
        try:
            bridge = TransformerBridge.boot_transformers(
                str(model_dir), device=device, dtype=torch_dtype
            )
        except TypeError:  # a version without the dtype argument
            bridge = TransformerBridge.boot_transformers(str(model_dir), device=device)
            bridge.to(torch_dtype)
        bridge.eval()
        return bridge
    if shape != "gpt2-small":
        return None
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
        device=device,
        dtype=torch_dtype,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


def bench_throughput(
    root: Path,
    n_docs: int,
    batch_tokens: int,
    shape: str = "gpt2-small",
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 2,
) -> dict[str, float]:
    from lookuplens.corpus import CorpusSpec, iter_tokenized, make_batches
    from lookuplens.model import load_model
    from lookuplens.scan import ScanConfig, scan_corpus

    model_dir = random_model_dir(root, shape, device)
    lm = load_model(model_dir, device=device, dtype=dtype)
    spec = CorpusSpec(str(corpus_file(root, n_docs)))
    docs = list(iter_tokenized(spec, lm.tokenizer, lm.max_context))
    batches = list(make_batches(docs, batch_tokens, 0))
    n_tokens = sum(b.n_tokens for b in batches)
    neurons = tracked_neurons(lm.n_layers, lm.d_mlp)
    last = {layer for layer, _ in neurons}
    cfg = ScanConfig(k=30, batch_tokens=batch_tokens, shard_docs=10**9)

    def plain() -> None:
        with torch.no_grad():
            for b in batches:
                lm.hf(
                    input_ids=b.input_ids.to(lm.device),
                    attention_mask=b.attention_mask.to(lm.device),
                    use_cache=False,
                )

    def scan() -> None:
        scan_corpus(lm, neurons, spec, cfg)

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        return best

    timings: dict[str, float] = {}
    plain()  # warm-up
    for name, fn in (("plain_hf_forward", plain), ("lookuplens_scan", scan)):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timings[name] = n_tokens / timed(fn)
        if device == "cuda":
            timings[name + "_gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    tl = transformer_lens_model(model_dir, shape, device, dtype)
    if tl is None:
        timings["transformer_lens_scan"] = float("nan")
    else:
        names = {f"blocks.{layer}.mlp.hook_post" for layer in last}

        def tl_scan() -> None:
            best_vals = {}
            with torch.no_grad():
                for b in batches:
                    mask = b.attention_mask.to(device)
                    _, cache = tl.run_with_cache(
                        b.input_ids.to(device),
                        attention_mask=mask,
                        names_filter=lambda n: n in names,
                    )
                    for layer, n in neurons:
                        a = cache[f"blocks.{layer}.mlp.hook_post"][:, :, n]
                        a = a.masked_fill(mask == 0, -1e9).max(1).values
                        best_vals[(layer, n)] = a

        timings["transformer_lens_scan"] = n_tokens / timed(tl_scan)
    timings["tokens"] = n_tokens
    return timings


def peak_rss_scan(max_tokens: int, device: str = "cpu", dtype: str = "float32") -> float:
    """Max RSS (MiB) of a fresh process scanning `max_tokens` storyworld tokens (on CUDA
    the GPU's peak allocation is printed too)."""
    code = f"""
import resource, torch
torch.set_num_threads(2)
from lookuplens.corpus import CorpusSpec
from lookuplens.model import load_model
from lookuplens.neurons import NeuronsConfig, find_neurons, tracked
from lookuplens.scan import ScanConfig, scan_corpus
from lookuplens.zoo import default_model_path
lm = load_model(default_model_path(), device={device!r}, dtype={dtype!r})
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
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
print(r.corpus.tokens, peak, gpu)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tokens, rss, gpu = out.stdout.split()
    on_gpu = f", GPU peak {float(gpu):.0f} MiB" if device == "cuda" else ""
    print(f"  scanned {int(tokens):,} tokens: peak RSS {float(rss):.0f} MiB{on_gpu}", flush=True)
    return float(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--memory-only", action="store_true", help="only part 2")
    ap.add_argument("--throughput-only", action="store_true", help="only part 1")
    ap.add_argument(
        "--throughput-docs",
        type=int,
        default=None,
        help="stories in the throughput part (default 200, 60 with --quick)",
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="timed runs of each throughput measurement"
    )
    add_device_args(ap)
    args = ap.parse_args()
    check_device(args.device)
    torch.set_num_threads(args.threads)
    name = device_name(args.device)
    print(f"device: {args.device} ({name}), dtype {args.dtype}", flush=True)
    results: dict[str, object] = {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": args.device,
        "device_name": name,
        "dtype": args.dtype,
        "shape": args.shape,
    }
    if args.memory_only:
        print("1. throughput: skipped (--memory-only)", flush=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            s = SHAPES[args.shape]
            print(
                f"1. throughput, {args.shape}-shaped random model, 60 neurons in layers "
                f"{int(s['layers']) - 3}-{int(s['layers']) - 1}",
                flush=True,
            )
            n_docs = args.throughput_docs or (60 if args.quick else 200)
            t = bench_throughput(
                Path(tmp),
                n_docs=n_docs,
                batch_tokens=4096,
                shape=args.shape,
                device=args.device,
                dtype=args.dtype,
                repeats=args.repeats,
            )
            print(f"  {int(t['tokens']):,} tokens")
            for k in ("plain_hf_forward", "lookuplens_scan", "transformer_lens_scan"):
                peak = t.get(k + "_gpu_peak_mib")
                on_gpu = f"  (GPU peak {peak:,.0f} MiB)" if peak is not None else ""
                print(f"  {k:24s} {t[k]:10,.0f} tok/s{on_gpu}")
            ratio = t["lookuplens_scan"] / t["plain_hf_forward"]
            print(f"  scan / plain HF forward          = {ratio:.2f}  (target >= 1.15)")
            tl = t["transformer_lens_scan"]
            if tl == tl:
                print(f"  scan / TransformerLens run_with_cache = {t['lookuplens_scan'] / tl:.2f}")
            results["throughput"] = t
            results["scan_over_hf"] = ratio
    if args.throughput_only:
        print("2. peak memory: skipped (--throughput-only)", flush=True)
    else:
        print("2. peak memory, bundled storyworld model", flush=True)
        small, big = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
        # the peak is set by the largest batch's tensors and varies between runs of the
        # same size, so each size is measured three times and the medians compared
        a = statistics.median(peak_rss_scan(small, args.device, args.dtype) for _ in range(3))
        b = statistics.median(peak_rss_scan(big, args.device, args.dtype) for _ in range(3))
        print(f"  medians: {a:.0f} MiB for {small:,} tokens, {b:.0f} MiB for {big:,}")
        growth = b / a - 1
        print(
            f"  {big:,} vs {small:,} tokens: peak RSS growth {growth * 100:+.1f}%  (target < 10%)"
        )
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
