"""Stage 3: prompts cut to end at the firing token, trimmed from the left, split.

Each top firing (document, position) becomes a prompt that ends at the firing token.
Its start then moves right to the *latest* start whose activation at the last token is
still at least `keep_fraction` (0.8, the paper's rule) of the original: candidate
starts are evaluated from the latest backwards, in batches (one forward pass per batch
of candidates, not one per step), and the first that passes wins. A trimmed prompt is
``[BOS] + doc_tokens[start : position + 1]`` (the BOS rule of `lookuplens.corpus`,
so every stage sees prompts the same way); `start` indexes the BOS-prefixed document.
Prompts longer than `max_prompt_tokens` are dropped, duplicates (same neuron, same
tokens) removed, and each neuron's examples split into train and test with a seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from lookuplens.corpus import CorpusSpec, iter_tokenized
from lookuplens.model import LoadedModel, hook_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExamplesConfig:
    """How top firings become prompts."""

    keep_fraction: float = 0.8
    """Trim from the left while the activation stays at least this fraction (the paper: 0.8)."""
    max_prompt_tokens: int = 100
    """Drop prompts of this many tokens or more, BOS included (the paper: 100)."""
    window: int = 16
    """Candidate starts evaluated per forward pass and example."""
    batch_tokens: int = 8192
    """Padded tokens per forward batch."""
    split: Literal["random", "rank"] = "random"
    """``random``: seeded shuffle per neuron; ``rank``: the strongest firings go to train."""
    n_train: int | None = None
    """Training examples per neuron; ``None`` uses `train_fraction`."""
    train_fraction: float = 2 / 3
    """Share of each neuron's examples used for training when `n_train` is None."""
    seed: int = 0
    """Seed of the split."""

    def __post_init__(self) -> None:
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.max_prompt_tokens < 2:
            raise ValueError("max_prompt_tokens must be at least 2 (BOS and one token)")
        if self.window < 1 or self.batch_tokens < 1:
            raise ValueError("window and batch_tokens must be positive")
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be at least 1, got {self.n_train}")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")


def neuron_activation_at(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    neurons: Sequence[tuple[int, int]],
    batch_tokens: int = 8192,
) -> np.ndarray:
    """The activation of ``neurons[i]`` at the last token of ``prompts[i]``, for every i.

    Prompts are right-padded into batches; one forward per batch stops after the last
    layer needed.
    """
    out = np.empty(len(prompts), dtype=np.float64)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else (lm.bos_token_id or 0)
    start = 0
    while start < len(order):
        width = len(prompts[order[start]])
        stop = start + 1
        while stop < len(order) and len(prompts[order[stop]]) * (stop - start + 1) <= batch_tokens:
            stop += 1
        rows = order[start:stop]
        width = max(len(prompts[r]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(prompts[r])] = torch.tensor(prompts[r])
            mask[i, : len(prompts[r])] = 1
        last = torch.tensor([len(prompts[r]) - 1 for r in rows])
        layers = np.array([neurons[r][0] for r in rows])
        cols = torch.tensor([neurons[r][1] for r in rows])
        got = torch.empty(len(rows), dtype=torch.float64)
        hooks = []
        for layer in sorted(set(layers.tolist())):
            sel = torch.from_numpy(np.flatnonzero(layers == layer))

            def grab(
                x: Tensor,
                _n: str,
                sel: Tensor = sel,
                got: Tensor = got,
                last: Tensor = last,
                cols: Tensor = cols,
            ) -> None:
                got[sel] = x[sel, last[sel], cols[sel]].double().cpu()

            hooks.append((hook_name(layer, "mlp.hook_post"), grab))
        lm.run_with_cache(
            ids, [], attention_mask=mask, stop_after_layer=int(layers.max()), extra_hooks=hooks
        )
        out[rows] = got.numpy()
        start = stop
    return out


@dataclass(frozen=True)
class Trimmed:
    start: int
    activation: float


def trim_prompts(
    lm: LoadedModel,
    contexts: Sequence[np.ndarray],
    positions: Sequence[int],
    neurons: Sequence[tuple[int, int]],
    activations: Sequence[float],
    cfg: ExamplesConfig,
) -> list[Trimmed | None]:
    """The latest start keeping the activation, per firing; None when none fits the cap.

    ``contexts[i]`` is the BOS-prefixed document, ``positions[i]`` the firing position in
    it, ``activations[i]`` the activation there.
    """
    bos = int(contexts[0][0]) if len(contexts) and lm.bos_token_id is not None else None
    n = len(contexts)
    result: list[Trimmed | None] = [None] * n
    first_start = 1 if bos is not None else 0
    # the start furthest left allowed by the cap
    min_start = [
        max(first_start, positions[i] + 1 - (cfg.max_prompt_tokens - 1 - (bos is not None)))
        for i in range(n)
    ]
    next_start = [int(positions[i]) for i in range(n)]  # latest candidate still to try
    pending = [i for i in range(n) if next_start[i] >= min_start[i]]
    while pending:
        prompts: list[list[int]] = []
        owners: list[tuple[int, int]] = []
        for i in pending:
            lo = max(min_start[i], next_start[i] - cfg.window + 1)
            for s in range(next_start[i], lo - 1, -1):
                body = contexts[i][s : positions[i] + 1].tolist()
                prompts.append(([bos] if bos is not None else []) + body)
                owners.append((i, s))
        vals = neuron_activation_at(lm, prompts, [neurons[i] for i, _ in owners], cfg.batch_tokens)
        found: dict[int, tuple[int, float]] = {}
        for (i, s), v in zip(owners, vals, strict=True):
            if i in found:
                continue
            a = activations[i]
            # the rule needs a positive activation; a non-positive one must not drop further
            if v >= (cfg.keep_fraction * a if a > 0 else a):
                found[i] = (s, float(v))  # owners are in decreasing start order per example
        still = []
        for i in pending:
            if i in found:
                result[i] = Trimmed(*found[i])
            else:
                next_start[i] = max(min_start[i], next_start[i] - cfg.window + 1) - 1
                if next_start[i] >= min_start[i]:
                    still.append(i)
        pending = still
    return result


def build_examples(
    lm: LoadedModel,
    topk: pa.Table,
    spec: CorpusSpec,
    cfg: ExamplesConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """The `examples` table from the scan's top-k table (see the module docstring)."""
    df = topk.to_pandas().sort_values(["layer", "neuron", "rank"], kind="stable")
    needed = set(df.doc_id.tolist())
    docs: dict[int, np.ndarray] = {}
    for d in iter_tokenized(spec, lm.tokenizer, lm.max_context):
        if d.doc_id in needed:
            docs[d.doc_id] = d.tokens
            if len(docs) == len(needed):
                break
    missing = needed - docs.keys()
    if missing:
        from lookuplens.errors import CorpusError

        raise CorpusError(
            f"{len(missing)} documents the scan found are not in the corpus any more "
            "(it changed since the scan); pass --overwrite scan"
        )
    rows = df.to_dict("records")
    trimmed: list[Trimmed | None] = []
    step = 256
    for j in range(0, len(rows), step):
        part = rows[j : j + step]
        trimmed += trim_prompts(
            lm,
            [docs[r["doc_id"]] for r in part],
            [int(r["position"]) for r in part],
            [(int(r["layer"]), int(r["neuron"])) for r in part],
            [float(r["activation"]) for r in part],
            cfg,
        )
        if on_progress is not None:
            on_progress(min(j + step, len(rows)), len(rows))
    out: dict[str, list] = {
        k: []
        for k in (
            "layer",
            "neuron",
            "rank",
            "doc_id",
            "position",
            "activation",
            "start",
            "tokens",
            "text",
            "trimmed_activation",
        )
    }
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    bos = lm.bos_token_id
    dropped = 0
    for r, t in zip(rows, trimmed, strict=True):
        if t is None:
            dropped += 1
            continue
        body = docs[r["doc_id"]][t.start : r["position"] + 1].tolist()
        tokens = ([bos] if bos is not None else []) + body
        key = (int(r["layer"]), int(r["neuron"]), tuple(tokens))
        if key in seen:
            continue
        seen.add(key)
        out["layer"].append(int(r["layer"]))
        out["neuron"].append(int(r["neuron"]))
        out["rank"].append(int(r["rank"]))
        out["doc_id"].append(int(r["doc_id"]))
        out["position"].append(int(r["position"]))
        out["activation"].append(float(r["activation"]))
        out["start"].append(int(t.start))
        out["tokens"].append(tokens)
        out["text"].append(lm.tokenizer.decode(body).replace("\n", " "))
        out["trimmed_activation"].append(t.activation)
    if dropped:
        log.info("dropped %d prompts longer than %d tokens", dropped, cfg.max_prompt_tokens)
    split = _split(out["layer"], out["neuron"], out["rank"], cfg)
    n = len(out["layer"])
    return pa.table(
        {
            "example_id": np.arange(n, dtype=np.int64),
            "layer": pa.array(out["layer"], pa.int64()),
            "neuron": pa.array(out["neuron"], pa.int64()),
            "rank": pa.array(out["rank"], pa.int64()),
            "doc_id": pa.array(out["doc_id"], pa.int64()),
            "position": pa.array(out["position"], pa.int64()),
            "activation": pa.array(out["activation"], pa.float64()),
            "start": pa.array(out["start"], pa.int64()),
            "tokens": pa.array(out["tokens"], pa.list_(pa.int64())),
            "text": pa.array(out["text"], pa.string()),
            "trimmed_activation": pa.array(out["trimmed_activation"], pa.float64()),
            "split": pa.array(split, pa.string()),
            "n_tokens": pa.array([len(t) for t in out["tokens"]], pa.int64()),
        }
    )


def _split(
    layers: list[int], neurons: list[int], ranks: list[int], cfg: ExamplesConfig
) -> list[str]:
    split = ["test"] * len(layers)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(layers, neurons, strict=True)):
        groups.setdefault(key, []).append(i)
    for (layer, neuron), idx in groups.items():
        n_train = cfg.n_train if cfg.n_train is not None else round(cfg.train_fraction * len(idx))
        n_train = min(max(n_train, 1), len(idx))
        if cfg.split == "rank":
            order = sorted(idx, key=lambda i: ranks[i])
        else:
            rng = np.random.default_rng([cfg.seed, layer, neuron])
            order = [idx[j] for j in rng.permutation(len(idx))]
        for i in order[:n_train]:
            split[i] = "train"
    return split
