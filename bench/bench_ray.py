"""Scan throughput of the Ray backend with 1 and 2 workers against the local backend.

    .venv/bin/python bench/bench_ray.py            # about 3 minutes on 2 idle CPU cores
    .venv/bin/python bench/bench_ray.py --quick    # a smaller corpus
    .venv/bin/python bench/bench_ray.py --address HOST:6379 --workers 1,2,4,8 --device auto

The model is the bundled storyworld model when it is built, else (or with --random) a
4-layer GPT-2-shaped random model (d_model 384, vocabulary 50257); the corpus is
storyworld stories. Each backend scans the same corpus for the same neurons (the last two
layers), and the bench checks that every backend's firings equal the local backend's.

Figures, in tokens/s:

- ``local``: `scan_corpus` in a fresh process with all CPU threads (the model is loaded
  and warmed up before the clock starts);
- ``local_1thread``: the same with one torch thread, the per-worker baseline (measured
  before and after the Ray runs; the mean is shown, both are printed);
- ``ray_N``: `scan_corpus_ray` with N workers (`cpus_per_worker` CPUs each), from the
  first shard sent to the merged result (steady state: the workers already loaded the
  model), and ``ray_N_end_to_end`` including starting the workers.

On a machine with C cores, N one-thread CPU workers scale up to about min(N, C) times
``local_1thread``; against ``local`` (which already uses every core) the Ray backend on
one machine gains little or nothing; its point is more machines and GPUs. With one GPU
per worker, throughput grows about linearly with the number of GPUs until the driver's
tokenisation (one process) is the bottleneck.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import torch

if TYPE_CHECKING:
    from lookuplens.scan import ScanConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def random_gpt2(root: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from lookuplens.model.tiny import build_tokenizer

    out = root / "gpt2-4l-random"
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=4, n_embd=384, n_head=6, vocab_size=50257, n_positions=1024)
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


LOCAL = """
import json, sys, time, torch
import pyarrow.parquet as pq
from lookuplens.corpus import CorpusSpec
from lookuplens.model import load_model
from lookuplens.scan import ScanConfig, scan_corpus
model, source, neurons, cfg, dtype, threads, out = json.loads(sys.argv[1])
torch.set_num_threads(threads)
lm = load_model(model, device="cpu", dtype=dtype)
neurons = [tuple(n) for n in neurons]
cfg = ScanConfig(**cfg)
scan_corpus(lm, neurons, CorpusSpec(source, max_docs=8), cfg)  # warm-up
t0 = time.perf_counter()
res = scan_corpus(lm, neurons, CorpusSpec(source), cfg)
rate = res.corpus.tokens / (time.perf_counter() - t0)
if out:
    pq.write_table(res.topk, out)
print(rate)
"""


def local_run(
    model: Path,
    source: str,
    neurons: list[tuple[int, int]],
    cfg: ScanConfig,
    dtype: str,
    threads: int,
    out: Path | None,
) -> float:
    """tokens/s of `scan_corpus` in a fresh process (as fresh as a Ray worker's)."""
    arg = json.dumps(
        [str(model), source, neurons, dataclasses.asdict(cfg), dtype, threads, str(out or "")]
    )
    done = subprocess.run(
        [sys.executable, "-c", LOCAL, arg], capture_output=True, text=True, check=True
    )
    return float(done.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smaller corpus")
    ap.add_argument("--docs", type=int, default=None, help="storyworld documents to scan")
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: local)")
    ap.add_argument("--device", default="cpu", help="auto, cpu or cuda (workers)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--random", action="store_true", help="the random GPT-2 even if bundled")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import ray

    from lookuplens.corpus import CorpusSpec
    from lookuplens.distributed import RayConfig, scan_corpus_ray
    from lookuplens.model import load_model
    from lookuplens.scan import ScanConfig, ScanProgress
    from lookuplens.zoo import default_model_path

    cores = os.cpu_count() or 1
    counts = [int(w) for w in args.workers.split(",")]
    n_docs = args.docs or (60 if args.quick else 160)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundled = default_model_path()
        if not args.random and (bundled / "config.json").is_file():
            model, what = bundled, "bundled storyworld model"
        else:
            model, what = random_gpt2(root), "random GPT-2 (4 layers, d_model 384)"
        spec = CorpusSpec(str(corpus_file(root, n_docs)))
        lm = load_model(model, device="cpu", dtype=args.dtype)
        layers = (lm.n_layers - 2, lm.n_layers - 1)
        neurons = [(la, n) for la in layers for n in range(0, lm.d_mlp, lm.d_mlp // 30)][:60]
        del lm
        cfg = ScanConfig(k=30, batch_tokens=4096, shard_docs=16)
        print(f"model: {what}; {len(neurons)} neurons in layers {layers}; {cores} CPU cores")
        print(f"corpus: {n_docs} storyworld documents", flush=True)

        results: dict[str, float] = {}
        ref_path = root / "local_topk.parquet"
        first_1thread = local_run(model, spec.source, neurons, cfg, args.dtype, 1, ref_path)
        reference = pq.read_table(ref_path)
        results["local"] = local_run(model, spec.source, neurons, cfg, args.dtype, cores, None)

        if args.address:
            ray.init(address=args.address, log_to_driver=False)
        else:
            ray.init(
                address="local",
                num_cpus=max(counts),
                object_store_memory=200 * 2**20,
                include_dashboard=False,
                log_to_driver=False,
            )
        try:
            for w in counts:
                last: list[ScanProgress] = []
                t0 = time.perf_counter()
                res = scan_corpus_ray(
                    str(model),
                    neurons,
                    spec,
                    cfg,
                    RayConfig(workers=w),
                    device=args.device,
                    dtype=args.dtype,
                    on_progress=last.append,
                )
                wall = time.perf_counter() - t0
                assert res.topk.equals(reference), "ray firings differ from local"
                tokens = res.corpus.tokens
                results[f"ray_{w}"] = tokens / last[-1].seconds
                results[f"ray_{w}_end_to_end"] = tokens / wall
        finally:
            ray.shutdown()
        # the 1-thread baseline again: on a shared machine, its drift is the noise level
        again = local_run(model, spec.source, neurons, cfg, args.dtype, 1, None)
        results["local_1thread"] = (first_1thread + again) / 2
        print(f"local_1thread: {first_1thread:,.0f} before, {again:,.0f} after the Ray runs")

    base = results["local"]
    one = results["local_1thread"]
    print(f"{'backend':22s} {'tokens/s':>10s} {'x local':>8s} {'x 1 thread':>10s}")
    for k, v in results.items():
        print(f"{k:22s} {v:10,.0f} {v / base:8.2f} {v / one:10.2f}")
    if args.json:
        args.json.write_text(json.dumps({"tokens": tokens, "cores": cores, **results}, indent=2))


if __name__ == "__main__":
    main()
