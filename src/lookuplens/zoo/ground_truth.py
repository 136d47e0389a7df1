"""Compare a run's findings on the storyworld with the mechanisms planted in it.

The planted look-ups fix, for each kind (article, topic, name), the target tokens and the
cue tokens that decide them. Which heads of the trained model read the cue is measured
here directly from the annotations, independently of the pipeline: a head is a
*cue-reading head* of a kind when, averaged over held-out annotated predictions, its
attention from the predicting position to the cue tokens is at least `min_attention`.

Ground-truth pairs are (planted target token, cue-reading head of that kind) for every
target token that has a selected next-token neuron, restricted to heads upstream of
such a neuron. The run's predicted pairs are its kept (neuron, head) pairs whose neuron
is selected (not baseline) and whose token is a planted target. Precision is the share
of predicted pairs that are ground truth; recall the share of ground-truth pairs found.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lookuplens.attribute import upstream_layers
from lookuplens.model import LoadedModel, hook_name
from lookuplens.store import RunDir
from lookuplens.zoo.storyworld import PLANTED, generate_corpus, token_positions


@dataclass(frozen=True)
class GroundTruthConfig:
    """How cue-reading heads are measured."""

    n_docs: int = 300
    """Held-out stories whose annotations are used."""
    seed: int = 99
    """Seed of those stories (distinct from the pipeline's corpus)."""
    min_attention: float = 0.3
    """Mean attention to the cue that makes a head cue-reading."""


def cue_attention(lm: LoadedModel, cfg: GroundTruthConfig) -> dict[str, np.ndarray]:
    """Per kind, the mean attention ``[n_layers, n_heads]`` from predicting position to cue."""
    docs = generate_corpus(cfg.n_docs, cfg.seed, "heldout")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    names = [hook_name(layer, "attn.hook_pattern") for layer in range(lm.n_layers)]
    for doc in docs:
        anns = token_positions(doc, lm.tokenizer)
        if not anns:
            continue
        ids = lm.to_tokens(doc.text)[:, : lm.max_context]
        _, cache = lm.run_with_cache(ids, names)
        pats = torch.stack([cache[n][0] for n in names])  # [L, H, q, k]
        for a in anns:
            if a.predict_index >= ids.shape[1]:
                continue
            cues = [c for c in a.cue_indices if c <= a.predict_index]
            if not cues:
                continue
            att = pats[:, :, a.predict_index, cues].sum(-1).double().numpy()
            sums[a.kind] = sums.get(a.kind, 0) + att
            counts[a.kind] = counts.get(a.kind, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def compare(
    run: RunDir, lm: LoadedModel, cfg: GroundTruthConfig | None = None
) -> dict[str, object]:
    """Precision and recall of the run's kept pairs against the planted mechanisms."""
    cfg = cfg or GroundTruthConfig()
    att = cue_attention(lm, cfg)
    neurons = run.read_df("neurons")
    pairs = run.read_df("pairs") if run.has_table("pairs") else None
    kind_of: dict[str, str] = {}
    for planted_kind, planted in PLANTED.items():
        for t in planted.targets:
            kind_of[t] = planted_kind
    sel = neurons[neurons.selected & neurons.token.isin(list(kind_of))]
    truth: set[tuple[str, int, int]] = set()
    heads_by_kind: dict[str, list[str]] = {}
    for kind, a in att.items():
        heads = [
            (int(layer), int(h))
            for layer, h in zip(*np.nonzero(a >= cfg.min_attention), strict=True)
        ]
        heads_by_kind[kind] = [f"L{layer}H{h}" for layer, h in heads]
        for row in sel[sel.token.map(kind_of) == kind].itertuples():
            ups = set(upstream_layers(lm, int(row.layer)))
            for layer, h in heads:
                if layer in ups:
                    truth.add((str(row.token), layer, h))
    predicted: set[tuple[str, int, int]] = set()
    if pairs is not None:
        kept = pairs[pairs.kept & ~pairs.baseline.astype(bool) & pairs.token.isin(list(kind_of))]
        predicted = {(str(r.token), int(r.head_layer), int(r["head"])) for _, r in kept.iterrows()}
    hits = truth & predicted
    return {
        "precision": len(hits) / len(predicted) if predicted else None,
        "recall": len(hits) / len(truth) if truth else None,
        "n_predicted": len(predicted),
        "n_ground_truth": len(truth),
        "cue_reading_heads": heads_by_kind,
        "planted_targets_with_a_neuron": sorted({t for t, _, _ in truth} | set(sel.token)),
        "found": sorted(f"{t!r} <- L{layer}H{h}" for t, layer, h in hits),
        "missed": sorted(f"{t!r} <- L{layer}H{h}" for t, layer, h in truth - predicted),
        "extra": sorted(f"{t!r} <- L{layer}H{h}" for t, layer, h in predicted - truth),
        "min_attention": cfg.min_attention,
    }
