"""Compare a run's findings on a planted world with the mechanisms planted in it, causally.

A planted world (`WORLDS`: the storyworld, the tripworld) fixes, for each annotated
prediction, the target token and the cue word that decides it. The truth is measured on
the model from held-out documents, independently of the pipeline, by swapping the cue:

- the cue word is replaced by another word of its class that decides another target (an
  "owl" by a "kettle"-like consonant object, "bakery" by another place, a name by another
  name of the same gender, "winter" by a season of another item); `cue_decides` is the
  share of annotated predictions whose p(target) at least halves, proof that the cue
  decides it;
- a head is a *cue-reading head* of a next-token neuron when its output, patched from the
  cue-swapped run into the clean run, lowers the neuron's activation at the predicting
  position by at least `min_share` of it, averaged over the annotations whose target is
  the neuron's token. Attention to the cue is measured and reported, not used as truth.

Ground-truth pairs are (selected neuron whose token is a planted target, cue-reading
head). The run's predicted pairs are its headline findings (`lookuplens.findings`) on
selected neurons whose token is a planted target. Precision is the share of predicted
pairs that are ground truth; recall the share of ground-truth pairs found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lookuplens.attribute import _pad, upstream_layers
from lookuplens.model import LoadedModel, hook_name
from lookuplens.store import RunDir
from lookuplens.zoo import storyworld, tripworld
from lookuplens.zoo.storyworld import PLANTED
from lookuplens.zoo.words import (
    CONSONANT_OBJECTS,
    FEMALE_NAMES,
    MALE_NAMES,
    TOPICS,
    VOWEL_OBJECTS,
)


@dataclass(frozen=True)
class GroundTruthConfig:
    """How cue-reading heads are measured."""

    n_docs: int = 200
    """Held-out stories whose annotations are used."""
    seed: int = 99
    """Seed of those stories (distinct from the pipeline's corpus)."""
    min_attention: float = 0.3
    """Mean attention to the cue reported as "attends to the cue" (not used as truth)."""
    min_share: float = 0.2
    """Share of a neuron's activation that patching a head from the cue-swapped run must
    remove, on average, for the head to be cue-reading."""
    batch_rows: int = 64
    """Prompts per forward batch."""


@dataclass(frozen=True)
class PlantedWorld:
    """What the ground truth needs from a planted world's generator."""

    name: str
    targets: dict[str, str]
    """Planted target (running text, e.g. " an") -> its kind."""
    heldout: Callable[[int, int], Sequence[Any]]
    """(n_docs, seed) -> held-out documents with ``text``."""
    positions: Callable[[Any, Any], Sequence[Any]]
    """(document, tokenizer) -> its annotations in token indices (``kind``, ``target``,
    ``target_token_id``, ``predict_index``, ``cue_indices``, ``cue_word``)."""
    replacement: Callable[[str, str, str, np.random.Generator], str | None]
    """(kind, cue word, document text, rng) -> a word of the cue's class deciding another
    target and absent from the text, or None."""


def _story_replacement(kind: str, cue: str, text: str, rng: np.random.Generator) -> str | None:
    """A word of the cue's class that decides another target, not already in the story."""
    if kind == "article":
        pool = CONSONANT_OBJECTS if cue in VOWEL_OBJECTS else VOWEL_OBJECTS
    elif kind == "topic":
        pool = tuple(p for p in TOPICS if p != cue)
    else:
        pool = FEMALE_NAMES if cue in FEMALE_NAMES else MALE_NAMES
    words = set(text.replace(".", " ").replace(",", " ").split())
    options = [w for w in pool if w != cue and w not in words]
    return str(rng.choice(options)) if options else None


def _trip_replacement(_kind: str, cue: str, text: str, rng: np.random.Generator) -> str | None:
    options = tripworld.replacements(cue, text)
    return str(rng.choice(options)) if options else None


WORLDS: dict[str, PlantedWorld] = {
    "storyworld": PlantedWorld(
        "storyworld",
        {t: kind for kind, planted in PLANTED.items() for t in planted.targets},
        lambda n, seed: storyworld.generate_corpus(n, seed, "heldout"),
        storyworld.token_positions,
        _story_replacement,
    ),
    "tripworld": PlantedWorld(
        "tripworld",
        {f" {item}": tripworld.KIND for item in tripworld.ITEMS},
        lambda n, seed: tripworld.generate_corpus(n, seed, "heldout"),
        tripworld.token_positions,
        _trip_replacement,
    ),
}
"""The bundled planted worlds, by the name of their bundled model."""


def _annotated(lm: LoadedModel, world: PlantedWorld, cfg: GroundTruthConfig) -> Iterator[Any]:
    """(document, token ids, annotation) for each held-out annotation within the context."""
    for doc in world.heldout(cfg.n_docs, cfg.seed):
        ids = lm.to_tokens(doc.text)[0, : lm.max_context].tolist()
        for a in world.positions(doc, lm.tokenizer):
            if a.predict_index < len(ids):
                yield doc, ids, a


def cue_attention(
    lm: LoadedModel, cfg: GroundTruthConfig, world: PlantedWorld | None = None
) -> dict[str, np.ndarray]:
    """Per kind, the mean attention ``[n_layers, n_heads]`` from predicting position to cue."""
    world = world or WORLDS["storyworld"]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    names = [hook_name(layer, "attn.hook_pattern") for layer in range(lm.n_layers)]
    cache_of: dict[int, torch.Tensor] = {}
    for doc, ids, a in _annotated(lm, world, cfg):
        if id(doc) not in cache_of:
            cache_of.clear()
            _, cache = lm.run_with_cache(torch.tensor([ids]), names)
            cache_of[id(doc)] = torch.stack([cache[n][0] for n in names])  # [L, H, q, k]
        pats = cache_of[id(doc)]
        cues = [c for c in a.cue_indices if c <= a.predict_index]
        if not cues:
            continue
        att = pats[:, :, a.predict_index, cues].sum(-1).double().numpy()
        sums[a.kind] = sums.get(a.kind, 0) + att
        counts[a.kind] = counts.get(a.kind, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


@dataclass(frozen=True)
class CueSwap:
    """One annotated prediction and its cue-swapped twin (same length, one token differs)."""

    kind: str
    target: str
    target_id: int
    tokens: list[int]
    """The prompt: BOS-prefixed story up to the predicting position."""
    swapped: list[int]
    cue_index: int


def cue_swaps(
    lm: LoadedModel, cfg: GroundTruthConfig, world: PlantedWorld | None = None
) -> list[CueSwap]:
    """Every annotated held-out prediction with its cue swapped."""
    world = world or WORLDS["storyworld"]
    rng = np.random.default_rng(cfg.seed)
    out = []
    for doc, ids, a in _annotated(lm, world, cfg):
        cue_id = lm.resolve_token(" " + a.cue_word)
        at = [i for i in a.cue_indices if i <= a.predict_index and ids[i] == cue_id]
        word = world.replacement(a.kind, a.cue_word, doc.text, rng)
        if not at or word is None:
            continue
        tokens = ids[: a.predict_index + 1]
        swapped = list(tokens)
        swapped[at[0]] = lm.resolve_token(" " + word)
        out.append(CueSwap(a.kind, a.target, a.target_token_id, tokens, swapped, at[0]))
    return out


def causal_truth(
    lm: LoadedModel,
    targets: dict[int, list[tuple[int, int]]],
    cfg: GroundTruthConfig,
    world: PlantedWorld | None = None,
) -> dict[str, object]:
    """Cue-reading heads per neuron, measured by patching from cue-swapped runs.

    `targets` maps a planted target token id to the selected neurons predicting it.
    Returns ``pairs`` (set of (layer, neuron, head_layer, head)), ``share`` (mean share
    removed per such key, every upstream head measured), ``cue_decides`` (per kind, the
    share of predictions whose p(target) at least halves when the cue is swapped) and
    ``n_swaps``.
    """
    from lookuplens.verify import _forward, _head_edit, _Row

    swaps = cue_swaps(lm, cfg, world)
    decides: dict[str, list[bool]] = {}
    for j in range(0, len(swaps), cfg.batch_rows):
        part = swaps[j : j + cfg.batch_rows]
        rows = [_Row(i, 0, 0, s.tokens, s.target_id) for i, s in enumerate(part)]
        lp, _ = _forward(lm, rows, None)
        lp2, _ = _forward(
            lm, [_Row(i, 0, 0, s.swapped, s.target_id) for i, s in enumerate(part)], None
        )
        for i, s in enumerate(part):
            drop = float(lp2[i][s.target_id] - lp[i][s.target_id])
            decides.setdefault(s.kind, []).append(drop <= -np.log(2))
    jobs: list[tuple[int, tuple[int, int], tuple[int, int]]] = []
    for k, s in enumerate(swaps):
        for layer, neuron in targets.get(s.target_id, []):
            for hl in upstream_layers(lm, layer):
                jobs += [(k, (layer, neuron), (hl, h)) for h in range(lm.n_heads)]
    jobs.sort(key=lambda job: (len(swaps[job[0]].tokens), job[0]))
    clean: dict[tuple[int, int, int], float] = {}
    shares: dict[tuple[int, int, int, int], list[float]] = {}
    for j in range(0, len(jobs), cfg.batch_rows):
        part_j = jobs[j : j + cfg.batch_rows]
        rows = [
            _Row(k, nrn[0], nrn[1], swaps[k].tokens, swaps[k].target_id) for k, nrn, _ in part_j
        ]
        need = [(k, nrn) for k, nrn, _ in part_j if (k, *nrn) not in clean]
        if need:
            _, act = _forward(lm, [_Row(k, n[0], n[1], swaps[k].tokens, 0) for k, n in need], None)
            for (k, n), a in zip(need, act.tolist(), strict=True):
                clean[(k, *n)] = float(a)
        ids, mask = _pad(lm, [swaps[k].swapped for k, _, _ in part_j])
        hls = sorted({h[0] for _, _, h in part_j})
        names = {hl: hook_name(hl, "attn.hook_z") for hl in hls}
        _, donor = lm.run_with_cache(
            ids, list(names.values()), attention_mask=mask, stop_after_layer=max(hls)
        )
        edit = _head_edit([h for _, _, h in part_j], {hl: donor[n] for hl, n in names.items()})
        _, act2 = _forward(lm, rows, edit)
        for (k, nrn, head), a2 in zip(part_j, act2.tolist(), strict=True):
            a = clean[(k, *nrn)]
            if a > 0:
                shares.setdefault((*nrn, *head), []).append((a - float(a2)) / a)
    share = {key: float(np.mean(v)) for key, v in shares.items()}
    return {
        "pairs": {key for key, v in share.items() if v >= cfg.min_share},
        "share": share,
        "cue_decides": {k: float(np.mean(v)) for k, v in decides.items()},
        "n_swaps": len(swaps),
    }


def compare(
    run: RunDir, lm: LoadedModel, cfg: GroundTruthConfig | None = None, world: str = "storyworld"
) -> dict[str, object]:
    """Precision and recall of the run's headline findings against the causal truth of
    the planted `world` (a key of `WORLDS`)."""
    cfg = cfg or GroundTruthConfig()
    planted_world = WORLDS[world]
    neurons = run.read_df("neurons")
    kind_of = planted_world.targets
    sel = neurons[neurons.selected & neurons.token.isin(list(kind_of))]
    targets: dict[int, list[tuple[int, int]]] = {}
    name_of: dict[tuple[int, int], str] = {}
    for row in sel.itertuples():
        targets.setdefault(int(row.token_id), []).append((int(row.layer), int(row.neuron)))
        name_of[(int(row.layer), int(row.neuron))] = str(row.token)
    truth_info = causal_truth(lm, targets, cfg, planted_world)
    truth: set[tuple[int, int, int, int]] = truth_info["pairs"]  # type: ignore[assignment]
    predicted: set[tuple[int, int, int, int]] = set()
    if run.has_table("findings"):
        f = run.read_df("findings")
        f = f[~f.baseline & f.token.isin(list(kind_of))]
        predicted = {
            (int(r.layer), int(r.neuron), int(r.head_layer), int(r.head)) for r in f.itertuples()
        }
    hits = truth & predicted
    att = cue_attention(lm, cfg, planted_world)

    def show(key: tuple[int, int, int, int]) -> str:
        layer, neuron, hl, h = key
        return f"{name_of.get((layer, neuron), '?')!r} L{layer}N{neuron} <- L{hl}H{h}"

    return {
        "world": world,
        "precision": len(hits) / len(predicted) if predicted else None,
        "recall": len(hits) / len(truth) if truth else None,
        "n_predicted": len(predicted),
        "n_ground_truth": len(truth),
        "truth": "causal: head output patched from a cue-swapped run",
        "min_share": cfg.min_share,
        "cue_decides": truth_info["cue_decides"],
        "n_cue_swaps": truth_info["n_swaps"],
        "planted_targets_with_a_neuron": sorted(set(sel.token)),
        "truth_pairs": sorted(list(k) for k in truth),
        "predicted_pairs": sorted(list(k) for k in predicted),
        "found": sorted(show(k) for k in hits),
        "missed": sorted(show(k) for k in truth - predicted),
        "extra": sorted(show(k) for k in predicted - truth),
        "heads_attending_to_the_cue": {
            kind: [
                f"L{layer}H{h}"
                for layer, h in zip(*np.nonzero(a >= cfg.min_attention), strict=True)
            ]
            for kind, a in att.items()
        },
        "min_attention": cfg.min_attention,
    }
