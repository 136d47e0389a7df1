"""Compare a run's findings on a planted world with the mechanisms planted in it, causally.

A planted world (`WORLDS`: the storyworld, the tripworld) fixes, for each annotated
prediction, the target token and the cue word that decides it. The truth is measured on
the model from held-out documents, independently of the pipeline, by swapping the cue:

- the cue word is replaced by another word of its class that decides another target (an
  "owl" by a "kettle"-like consonant object, "bakery" by another place, a name by another
  name of the same gender, "winter" by a season of another item); `cue_decides` is the
  share of annotated predictions whose p(target) at least halves, proof that the cue
  decides it;
- an annotation counts for a next-token neuron of its target when it fires the neuron:
  above `min_firing` of the neuron's median activation on its top prompts in the run (a
  neuron that is off where the world plants its token has no look-up to find there, and
  shares of a near-zero activation are ratios of noise); a neuron with fewer than
  `min_annotations` such annotations takes no part;
- a head is a *cue-reading head* of such a neuron when its output, patched from the
  cue-swapped run into the clean run, lowers the neuron's activation at the predicting
  position by at least `min_share` of it (mean drop over mean activation, over the
  annotations that count). Attention to the cue is measured and reported, not used as truth.

Ground-truth pairs are (selected neuron whose token is a planted target and that takes
part, cue-reading head). The run's predicted pairs are its headline findings
(`lookuplens.findings`) on selected neurons whose token is a planted target and whose cue
(the word the head carries most often) is a word the world plants as a cue of that
target (`PlantedWorld.cues_of`: "spring" or "april" for " umbrella"). A finding with
another cue (a head carrying "sold" from "she sold her kettle") claims a look-up the
world does not plant: it is listed as ``other_findings`` and counted neither way.
Precision is the share of predicted pairs that are ground truth; recall the share of
ground-truth pairs found.

The neuron explanations are checked against the same cue words: for each selected neuron
whose token is a planted target, whether its neuron explanation quotes a word that the
world plants as a cue of that target (`explanations_naming_a_cue`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lookuplens.attribute import upstream_layers
from lookuplens.model import LoadedModel, hook_name, pad_right
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
    min_firing: float = 0.5
    """An annotation counts for a neuron when it fires the neuron above this share of the
    neuron's median activation on its top prompts."""
    min_annotations: int = 3
    """A neuron takes part when at least this many annotations fire it."""
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
    cues_of: Callable[[str], tuple[str, ...]]
    """Planted target (running text) -> the cue words that make it likely: a finding on a
    neuron of that target whose cue (the word its head carries most often) is one of them
    claims the planted look-up."""


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


def _story_cues(target: str) -> tuple[str, ...]:
    word = target.strip()
    if word == "an":
        return VOWEL_OBJECTS
    if word == "a":
        return CONSONANT_OBJECTS
    places = tuple(p for p, topic in TOPICS.items() if topic == word)
    return places or (word,)  # a name recalls itself


def _trip_cues(target: str) -> tuple[str, ...]:
    item = target.strip()
    return tuple(
        s
        for s in tripworld.SEASONS
        if any(tripworld.item_for(s, t) == item for t in tripworld.TRIGGERS)
    )


WORLDS: dict[str, PlantedWorld] = {
    "storyworld": PlantedWorld(
        "storyworld",
        {t: kind for kind, planted in PLANTED.items() for t in planted.targets},
        lambda n, seed: storyworld.generate_corpus(n, seed, "heldout"),
        storyworld.token_positions,
        _story_replacement,
        _story_cues,
    ),
    "tripworld": PlantedWorld(
        "tripworld",
        {f" {item}": tripworld.KIND for item in tripworld.ITEMS},
        lambda n, seed: tripworld.generate_corpus(n, seed, "heldout"),
        tripworld.token_positions,
        _trip_replacement,
        _trip_cues,
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
    reference: dict[tuple[int, int], float] | None = None,
) -> dict[str, object]:
    """Cue-reading heads per neuron, measured by patching from cue-swapped runs.

    `targets` maps a planted target token id to the selected neurons predicting it.
    Only the annotations that fire the neuron count: its activation there is above
    `GroundTruthConfig.min_firing` of `reference` (its median top activation in the run;
    without `reference`, above 0), on at least `GroundTruthConfig.min_annotations`.
    Returns ``pairs`` (set of (layer, neuron, head_layer, head)), ``share`` (share of the
    neuron's mean activation that patching the head removes on average, every upstream
    head measured), ``firing`` (per neuron, how many of its annotations fire it),
    ``cue_decides`` (per kind, the share of predictions whose p(target) at least halves
    when the cue is swapped) and ``n_swaps``.
    """
    from lookuplens.interventions import Row as _Row
    from lookuplens.interventions import forward as _forward
    from lookuplens.interventions import head_edit as _head_edit

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
    shares: dict[tuple[int, int, int, int], list[tuple[float, float]]] = {}
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
        ids, mask = pad_right(lm, [swaps[k].swapped for k, _, _ in part_j])
        hls = sorted({h[0] for _, _, h in part_j})
        names = {hl: hook_name(hl, "attn.hook_z") for hl in hls}
        _, donor = lm.run_with_cache(
            ids, list(names.values()), attention_mask=mask, stop_after_layer=max(hls)
        )
        edit = _head_edit([h for _, _, h in part_j], {hl: donor[n] for hl, n in names.items()})
        _, act2 = _forward(lm, rows, edit)
        for (k, nrn, head), a2 in zip(part_j, act2.tolist(), strict=True):
            a = clean[(k, *nrn)]
            shares.setdefault((*nrn, *head), []).append((a, a - float(a2)))
    floor = {
        nrn: max(cfg.min_firing * (reference or {}).get(nrn, 0.0), 0.0)
        for nrns in targets.values()
        for nrn in nrns
    }
    fired: dict[tuple[int, int, int, int], list[tuple[float, float]]] = {}
    for key, v in shares.items():
        kept = [(a, d) for a, d in v if a > floor[key[:2]]]
        if len(kept) >= cfg.min_annotations:
            fired[key] = kept
    firing: dict[tuple[int, int], list[float]] = {}
    for (_k, layer, neuron), a in clean.items():
        firing.setdefault((layer, neuron), []).append(a)
    n_firing = {key: int(sum(a > floor[key] for a in v)) for key, v in firing.items()}
    share = {key: _ratio_of_means(v) for key, v in fired.items()}
    return {
        "pairs": {key for key, v in share.items() if v >= cfg.min_share},
        "share": share,
        "firing": n_firing,
        "cue_decides": {k: float(np.mean(v)) for k, v in decides.items()},
        "n_swaps": len(swaps),
    }


def _cue_token_ids(lm: LoadedModel, words: Sequence[str]) -> set[int]:
    """Every token of each word, as running text (after a space)."""
    return {int(t) for w in words for t in lm.tokenizer.encode(" " + w, add_special_tokens=False)}


def _ratio_of_means(pairs: list[tuple[float, float]]) -> float:
    """Mean removed over mean activation: a prompt where the neuron barely fires weighs
    by what it has to lose, instead of dividing by a near-zero activation."""
    act, removed = np.array(pairs).T
    return float(removed.mean() / act.mean())


_QUOTED = re.compile(r'"([^"]+)"')
_SENTENCE = re.compile(r"(?<=[.)]) (?=The |After |It |From |No )")
_AGAINST = re.compile(r"^It is (silent|inactive) when| unless ")


def names_a_cue(explanation: str, cues: Sequence[str]) -> bool:
    """Whether `explanation` quotes one of the words `cues` (as a whole word of a quote) as
    something that makes the neuron fire: the sentences of the offline explainer that say
    when it is silent ("It is silent when ...", "... unless the prompt ...") do not count."""
    words = {w.lower() for w in cues}
    return any(
        w.lower() in words
        for sentence in _SENTENCE.split(explanation)
        if not _AGAINST.search(sentence)
        for q in _QUOTED.findall(sentence)
        for w in q.split()
    )


def _neuron_explanations(
    run: RunDir,
    world: PlantedWorld,
    name_of: dict[tuple[int, int], str],
    taking_part: Collection[tuple[int, int]] = (),
) -> dict[str, dict[str, object]]:
    """Per selected target neuron: its neuron explanation (None unless its status is
    ``ok``; ``silent`` when the neuron never fires), whether it names a cue, and whether
    the neuron takes part in the ground truth (fires on enough annotations)."""
    if not run.has_table("explanations"):
        return {}
    ex = run.read_df("explanations")
    ex = ex[ex.target == "neuron"]
    out: dict[str, dict[str, object]] = {}
    for (layer, neuron), token in sorted(name_of.items()):
        rows = ex[(ex.layer == layer) & (ex.neuron == neuron)]
        status = str(rows.status.iloc[0]) if len(rows) else None
        text = str(rows.explanation.iloc[0]) if status == "ok" else None
        out[f"{token!r} L{layer}N{neuron}"] = {
            "explanation": text,
            "status": status,
            "names_a_cue": bool(text) and names_a_cue(str(text), world.cues_of(token)),
            "takes_part": (layer, neuron) in taking_part,
        }
    return out


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
    ex = run.read_df("examples")
    if "kind" in ex:
        ex = ex[ex.kind == "top"]
    reference = {
        (int(k[0]), int(k[1])): float(v)
        for k, v in ex.groupby(["layer", "neuron"]).trimmed_activation.median().items()
    }
    truth_info = causal_truth(lm, targets, cfg, planted_world, reference)
    firing: dict[tuple[int, int], int] = truth_info["firing"]  # type: ignore[assignment]
    truth: set[tuple[int, int, int, int]] = truth_info["pairs"]  # type: ignore[assignment]
    predicted: set[tuple[int, int, int, int]] = set()
    other: list[str] = []
    if run.has_table("findings"):
        f = run.read_df("findings")
        f = f[~f.baseline & f.token.isin(list(kind_of))]
        cue_ids: dict[str, set[int]] = {}
        for r in f.itertuples():
            key = (int(r.layer), int(r.neuron), int(r.head_layer), int(r.head))
            if r.token not in cue_ids:
                cue_ids[r.token] = _cue_token_ids(lm, planted_world.cues_of(str(r.token)))
            mine = cue_ids[r.token]
            if len(r.cue_token_ids) and int(r.cue_token_ids[0]) in mine:
                predicted.add(key)
            else:
                other.append(f"{r.token!r} L{key[0]}N{key[1]} <- L{key[2]}H{key[3]} ({r.cue})")
    hits = truth & predicted
    att = cue_attention(lm, cfg, planted_world)

    def show(key: tuple[int, int, int, int]) -> str:
        layer, neuron, hl, h = key
        return f"{name_of.get((layer, neuron), '?')!r} L{layer}N{neuron} <- L{hl}H{h}"

    explained = _neuron_explanations(
        run, planted_world, name_of, {k for k, n in firing.items() if n >= cfg.min_annotations}
    )
    with_text = [v for v in explained.values() if v["explanation"] is not None]
    taking_part = [v for v in with_text if v["takes_part"]]

    def share_naming(rows: list[dict[str, object]]) -> float | None:
        return sum(bool(v["names_a_cue"]) for v in rows) / len(rows) if rows else None

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
        "min_firing": cfg.min_firing,
        "annotations_firing": {
            show((*key, -1, -1)).split(" <-")[0]: n for key, n in sorted(firing.items())
        },
        "truth_pairs": sorted(list(k) for k in truth),
        "predicted_pairs": sorted(list(k) for k in predicted),
        "found": sorted(show(k) for k in hits),
        "missed": sorted(show(k) for k in truth - predicted),
        "extra": sorted(show(k) for k in predicted - truth),
        "other_findings": sorted(other),
        "heads_attending_to_the_cue": {
            kind: [
                f"L{layer}H{h}"
                for layer, h in zip(*np.nonzero(a >= cfg.min_attention), strict=True)
            ]
            for kind, a in att.items()
        },
        "min_attention": cfg.min_attention,
        "neuron_explanations": explained,
        "explanations_naming_a_cue": share_naming(with_text),
        "explanations_naming_a_cue_taking_part": share_naming(taking_part),
    }
