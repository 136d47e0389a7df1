"""Helpers of the dashboard tests: the tiny run they share and a live uvicorn."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lookuplens.attribute import AttributeConfig
from lookuplens.corpus import CorpusSpec
from lookuplens.model import LoadedModel, load_model
from lookuplens.model.tiny import build_tiny_model
from lookuplens.neurons import NeuronsConfig
from lookuplens.pipeline import RunConfig, run_pipeline
from lookuplens.scan import ScanConfig
from lookuplens.server.cli import KEEP_ALIVE_S
from lookuplens.store import RunDir

WORDS = (
    "the quick brown fox jumps over lazy dog she bought an apple and a pear at market owl "
    "sat on old oak tree near river tom anna walked to harbour buy fish"
).split()


def corpus_lines(n: int = 30, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14)))).capitalize() + "."
        for _ in range(n)
    ]


@dataclass
class Served:
    """A finished tiny run and its model."""

    root: Path
    model_path: Path
    run: RunDir
    lm: LoadedModel
    lines: list[str]

    def kept_pair(self) -> tuple[int, int, int, int]:
        pairs = self.run.read_df("pairs")
        kept = pairs[pairs.kept].sort_values(["layer", "neuron", "head_layer", "head"])
        r = kept.iloc[0]
        return int(r.layer), int(r.neuron), int(r.head_layer), int(r["head"])


def _score_kept_pairs(run: RunDir) -> None:
    """Give every kept pair a scored row with a confusion matrix (the tiny run's held-out
    sets are too small for the offline scorer to score them)."""
    scores = run.read_df("scores")
    pairs = run.read_df("pairs")
    kept = pairs[pairs.kept]
    rows = []
    for i, p in enumerate(kept.itertuples(index=False)):
        tp, fp, tn, fn = 3 + i, 1, 4, 2
        rows.append(
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
                "auroc": 0.8,
                "baseline": bool(p.baseline),
                "status": "ok",
            }
        )
    key = ["layer", "neuron", "head_layer", "head"]
    new = pd.DataFrame(rows)
    mine = scores.merge(new[key].astype("Int64"), on=key, how="left", indicator=True)
    rest = scores[(mine._merge == "left_only").to_numpy()]
    out = pd.concat([rest, new], ignore_index=True)
    ints = {"head_layer": "Int64", "head": "Int64"}
    ints.update({c: "Int64" for c in ("tp", "fp", "tn", "fn")})
    run.write_table("scores", out.astype(ints))


def build_served(root: Path) -> Served:
    """Run the real pipeline on a tiny GPT-2 and a small corpus into ``root``."""
    model = build_tiny_model("gpt2", root / "model")
    lines = corpus_lines(40)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = RunConfig(
        model=str(model),
        corpus=CorpusSpec(str(corpus)),
        device="cpu",
        neurons=NeuronsConfig(top_n=2, token_filter="none"),
        scan=ScanConfig(k=8),
        attribute=AttributeConfig(
            label_rule="top_k", label_top_k=1, min_active_rate=0.1, max_active_rate=0.9
        ),
    )
    run = run_pipeline(cfg, root / "run")
    assert run.read_df("pairs").kept.any(), "the test run should keep at least one pair"
    _score_kept_pairs(run)
    lm = load_model(model, device="cpu")
    return Served(root, model, run, lm, lines)


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 (a free port) in a thread, set up as `serve` is."""

    def __init__(self, app: object) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            limit_concurrency=1000,
            backlog=512,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
