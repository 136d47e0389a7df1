"""The `examples` table: the scan's top firings trimmed into prompts, deduplicated, with
contrast prompts added and each neuron's prompts split into train and test."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from lookuplens.corpus import CorpusSpec, iter_tokenized
from lookuplens.examples.config import ExamplesConfig
from lookuplens.examples.reads import neuron_activation_at
from lookuplens.examples.trim import Trimmed, _driving_heads, _keep_read_words, trim_prompts
from lookuplens.model import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["build_examples"]


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
    bos_first = lm.bos_token_id is not None
    step = 256
    for j in range(0, len(rows), step):
        part = rows[j : j + step]
        refs = _driving_heads(lm, part, docs, cfg) if cfg.keep_heads else None
        trimmed += trim_prompts(
            lm,
            [docs[r["doc_id"]] for r in part],
            [int(r["position"]) for r in part],
            [(int(r["layer"]), int(r["neuron"])) for r in part],
            [float(r["activation"]) for r in part],
            cfg,
            refs,
        )
        if on_progress is not None:
            on_progress(min(j + step, len(rows)), len(rows))
    read_at: list[int] = [-1] * len(rows)
    if cfg.keep_read_word:
        read_at, trimmed = _keep_read_words(lm, rows, docs, trimmed, cfg, bos_first)
    out: dict[str, list] = {
        k: []
        for k in (
            "read_position",
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
            "on_token",
        )
    }
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    bos = lm.bos_token_id
    dropped = 0
    for i, (r, t) in enumerate(zip(rows, trimmed, strict=True)):
        if t is None:
            dropped += 1
            continue
        body = docs[r["doc_id"]][t.start : r["position"] + 1].tolist()
        tokens = ([bos] if bos is not None else []) + body
        key = (int(r["layer"]), int(r["neuron"]), tuple(tokens))
        if key in seen:
            continue
        seen.add(key)
        out["read_position"].append(read_at[i])
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
        out["on_token"].append(bool(r.get("on_token", False)))
    if dropped:
        log.info("dropped %d prompts longer than %d tokens", dropped, cfg.max_prompt_tokens)
    out["kind"] = ["top"] * len(out["layer"])
    if cfg.contrast > 0 and out["layer"]:
        _add_contrasts(lm, spec, out, cfg)
    split = _split(out["layer"], out["neuron"], out["rank"], out["kind"], cfg)
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
            "kind": pa.array(out["kind"], pa.string()),
            "read_position": pa.array(out["read_position"], pa.int64()),
            "on_token": pa.array(out["on_token"], pa.bool_()),
        }
    )


def _add_contrasts(
    lm: LoadedModel, spec: CorpusSpec, out: dict[str, list], cfg: ExamplesConfig
) -> None:
    """Append each neuron's contrast prompts to the columns of ``out`` (kind "contrast")."""
    from lookuplens.contrast import find_contrasts

    top = pd.DataFrame(
        {k: out[k] for k in ("layer", "neuron", "rank", "doc_id", "tokens", "activation")}
    )
    found = find_contrasts(
        lm,
        spec,
        top,
        cfg.contrast,
        cfg.contrast_fraction,
        cfg.contrast_search_docs,
        cfg.batch_tokens,
    )
    found.sort(key=lambda c: (c.layer, c.neuron, c.mirrors_rank, c.doc_id))
    trimmed = neuron_activation_at(
        lm, [list(c.tokens) for c in found], [(c.layer, c.neuron) for c in found], cfg.batch_tokens
    )
    bos = lm.bos_token_id
    for c, t in zip(found, trimmed, strict=True):
        out["layer"].append(c.layer)
        out["neuron"].append(c.neuron)
        out["rank"].append(-1)
        out["doc_id"].append(c.doc_id)
        out["position"].append(c.position)
        out["activation"].append(c.activation)
        out["start"].append(c.start)
        out["tokens"].append(list(c.tokens))
        body = list(c.tokens[1:] if bos is not None else c.tokens)
        out["text"].append(lm.tokenizer.decode(body).replace("\n", " "))
        out["trimmed_activation"].append(float(t))
        out["kind"].append("contrast")
        out["read_position"].append(-1)
        out["on_token"].append(False)
    log.info("added %d contrast prompts", len(found))


def _split(
    layers: list[int], neurons: list[int], ranks: list[int], kinds: list[str], cfg: ExamplesConfig
) -> list[str]:
    """Per neuron and kind (top prompts, contrasts), a seeded train/test split."""
    split = ["test"] * len(layers)
    groups: dict[tuple[int, int, str], list[int]] = {}
    for i, key in enumerate(zip(layers, neurons, kinds, strict=True)):
        groups.setdefault(key, []).append(i)
    for (layer, neuron, kind), idx in groups.items():
        if cfg.n_train is None:
            n_train = round(cfg.train_fraction * len(idx))
        elif kind == "top":
            n_train = cfg.n_train
        else:  # contrasts: the top prompts' train share
            n_top = len(groups.get((layer, neuron, "top"), idx))
            n_train = round(min(1.0, cfg.n_train / max(n_top, 1)) * len(idx))
        n_train = min(max(n_train, 1), len(idx))
        if cfg.split == "rank":
            order = sorted(idx, key=lambda i: ranks[i])
        else:
            salt = [] if kind == "top" else [1]
            rng = np.random.default_rng([cfg.seed, layer, neuron, *salt])
            order = [idx[j] for j in rng.permutation(len(idx))]
        for i in order[:n_train]:
            split[i] = "train"
    return split
