"""Contrast prompts: where a neuron stays silent on the token it fires on.

A neuron's top prompts alone cannot show what context switches it on: when one head
drives it on all of them, the head is "active" on all, and nothing is left to contrast.
So the examples stage adds, per neuron, *contrast* prompts from the same corpus: each
ends on the same token as one of the neuron's top prompts and has the same length, but
there the neuron's activation is at most `contrast_fraction` of its median top
activation. Holding the last token fixed leaves the earlier context as the only
difference, which is what a context look-up reads ("draw" followed by " an" when an
owl was mentioned earlier, by " a" when a cake was). Heads are then labelled on both
kinds with the same rule, and a pair's explanation has to say which context makes the
head drive the neuron.

The search reads documents in corpus order, skips each neuron's own top documents, takes
at most one contrast per neuron and document, and stops once every neuron has its
contrasts or after `contrast_search_docs` documents: deterministic for a given corpus.
"Silent" is measured with the whole document before the position as context, as the top
firings are; cut to the mirrored length, a contrast prompt may fire the neuron after all
(its `trimmed_activation` says so), and its heads are labelled by the same rule.
`--preset paper` turns contrasts off (the paper used the top prompts only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import pandas as pd
import torch

from lookuplens.corpus import CorpusSpec, iter_tokenized, make_batches
from lookuplens.model import LoadedModel, hook_name, pad_id

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    """One contrast prompt still to be found: the top prompt it mirrors."""

    layer: int
    neuron: int
    token: int
    body_len: int
    """Tokens of the mirrored prompt after BOS."""
    rank: int


@dataclass(frozen=True)
class Contrast:
    layer: int
    neuron: int
    doc_id: int
    position: int
    activation: float
    """The neuron's activation at `position` with the whole document prefix as context."""
    start: int
    mirrors_rank: int
    tokens: tuple[int, ...]
    """The prompt: ``[BOS] + doc[start : position + 1]``, as long as the prompt it mirrors."""


def silent_limit(fraction: float, top_activations: Sequence[float] | np.ndarray) -> float:
    """The activation at or below which a neuron counts as silent: ``fraction`` of the
    median over its top prompts (0 when that median is not positive)."""
    return fraction * max(float(np.median(np.asarray(top_activations, dtype=float))), 0.0)


def find_contrasts(
    lm: LoadedModel,
    spec: CorpusSpec,
    top: pd.DataFrame,
    per_neuron: int,
    fraction: float,
    search_docs: int,
    batch_tokens: int = 8192,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Contrast]:
    """Up to ``per_neuron`` contrast prompts for each neuron of ``top``.

    ``top`` holds the neuron's trimmed top prompts (columns layer, neuron, rank, doc_id,
    tokens, activation); contrast ``i`` mirrors its ``i``-th strongest prompt (its last
    token and its length), cycling when it has fewer prompts than ``per_neuron``.
    """
    if per_neuron < 1 or top.empty:
        return []
    # wanted token -> neuron -> its open slots for that token, in rank order
    slots: dict[int, dict[tuple[int, int], list[_Slot]]] = {}
    open_slots = 0
    threshold: dict[tuple[int, int], float] = {}
    own_docs: dict[tuple[int, int], set[int]] = {}
    for (layer, neuron), g in top.sort_values("rank", kind="stable").groupby(
        ["layer", "neuron"], sort=True
    ):
        key = (int(layer), int(neuron))
        threshold[key] = silent_limit(fraction, g.activation.to_numpy())
        own_docs[key] = set(int(d) for d in g.doc_id)
        rows = g.to_dict("records")
        for i in range(per_neuron):
            r = rows[i % len(rows)]
            toks = list(r["tokens"])
            body = len(toks) - (1 if lm.bos_token_id is not None else 0)
            s = _Slot(key[0], key[1], int(toks[-1]), max(body, 1), int(r["rank"]))
            slots.setdefault(s.token, {}).setdefault(key, []).append(s)
            open_slots += 1
    layers = sorted({k[0] for k in threshold})
    names = [hook_name(layer, "mlp.hook_post") for layer in layers]
    used: set[tuple[int, int, int]] = set()  # (layer, neuron, doc_id)
    found: list[Contrast] = []
    bos = lm.bos_token_id
    first = 1 if bos is not None else 0
    n_docs = 0
    docs = islice(iter_tokenized(spec, lm.tokenizer, lm.max_context), search_docs)
    for batch in make_batches(docs, batch_tokens, pad_id(lm)):
        if open_slots == 0:
            break
        n_docs += len(batch.doc_ids)
        wanted = torch.tensor([t for t, by_neuron in slots.items() if by_neuron])
        hit = torch.isin(batch.input_ids, wanted) & batch.attention_mask.bool()
        if not hit.any():
            continue
        _, cache = lm.run_with_cache(
            batch.input_ids, names, attention_mask=batch.attention_mask, stop_after_layer=layers[-1]
        )
        acts = {
            layer: cache[n].float().cpu().numpy() for layer, n in zip(layers, names, strict=True)
        }
        for i, doc_id in enumerate(batch.doc_ids):
            tokens = batch.input_ids[i, : batch.lengths[i]].tolist()
            for p in torch.nonzero(hit[i]).flatten().tolist():
                by_neuron = slots.get(tokens[p])
                if p == 0 or not by_neuron:
                    continue  # the BOS position, or nothing left to find for this token
                for key, open_ in list(by_neuron.items()):
                    key3 = (key[0], key[1], doc_id)
                    if key3 in used or doc_id in own_docs[key]:
                        continue
                    a = float(acts[key[0]][i, p, key[1]])
                    if a > threshold[key]:
                        continue
                    s = open_.pop(0)
                    if not open_:
                        del by_neuron[key]
                    start = max(first, p + 1 - s.body_len)
                    prompt = ((bos,) if bos is not None else ()) + tuple(tokens[start : p + 1])
                    found.append(Contrast(s.layer, s.neuron, doc_id, p, a, start, s.rank, prompt))
                    used.add(key3)
                    open_slots -= 1
        if on_progress is not None:
            on_progress(n_docs, search_docs)
    if open_slots:
        log.info(
            "%d contrast prompts not found in %d documents (their token is rare, or the "
            "neuron fires wherever it occurs)",
            open_slots,
            n_docs,
        )
    return found
