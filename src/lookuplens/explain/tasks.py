"""Tasks to explain and score, read from the run directory.

* A pair task is a kept (neuron, head) pair of ``pairs.parquet``; its prompts are the
  neuron's examples, labelled active or not by ``labels.parquet`` (train and test split
  as there).
* A neuron task contrasts a neuron's own examples (firing) with other neurons' examples
  on which this neuron's activation, recomputed at their last token, stays low
  (non-firing); each non-firing context keeps the split of the example it comes from, and
  there are at most as many per split as the neuron has examples there.

Tasks come in a fixed order (pairs, then neurons, each sorted by their ids), so a rerun
asks the same questions in the same order and hits the LLM cache.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookuplens.examples import neuron_activation_at
from lookuplens.explain.base import Item, Task
from lookuplens.explain.config import TaskConfig
from lookuplens.model import LoadedModel
from lookuplens.store import RunDir

log = logging.getLogger(__name__)

NeuronKey = tuple[int, int]
_PAIR_KEYS = ["layer", "neuron", "head_layer", "head"]


@dataclass(frozen=True)
class NeuronInfo:
    token_id: int
    token: str
    baseline: bool


@dataclass(frozen=True)
class _Example:
    example_id: int
    key: NeuronKey
    tokens: tuple[int, ...]
    text: str
    split: str
    activation: float
    kind: str = "top"
    """``"top"`` (a top firing) or ``"contrast"`` (the neuron silent, see
    `lookuplens.contrast`)."""


def load_tasks(lm: LoadedModel, run: RunDir, cfg: TaskConfig) -> list[Task]:
    """The pair and neuron tasks of a run directory, in a fixed order (see module doc)."""
    info = neuron_info(lm, run.read_table("neurons"), cfg.include_baseline)
    examples = _read_examples(run.read_table("examples"))
    tasks: list[Task] = []
    if cfg.pairs:
        tasks += pair_tasks(examples, run.read_table("labels"), run.read_table("pairs"), info)
    if cfg.neurons:
        tasks += neuron_tasks(lm, examples, info, cfg)
    return tasks


def neuron_info(
    lm: LoadedModel, neurons: pa.Table, include_baseline: bool
) -> dict[NeuronKey, NeuronInfo]:
    """Token and baseline flag of each tracked neuron (selected, and baseline if asked)."""
    cols = neurons.to_pydict()
    has_target = "target_token_id" in cols
    out: dict[NeuronKey, NeuronInfo] = {}
    for i in range(neurons.num_rows):
        selected, baseline = bool(cols["selected"][i]), bool(cols["baseline"][i])
        if not (selected or (include_baseline and baseline)):
            continue
        top = int(cols["token_id"][i])
        target = int(cols["target_token_id"][i]) if has_target else -1
        tid = target if target >= 0 else top
        token = str(cols["token"][i]) if tid == top else lm.token_str(tid)
        out[(int(cols["layer"][i]), int(cols["neuron"][i]))] = NeuronInfo(
            tid, token, baseline and not selected
        )
    return out


def _read_examples(table: pa.Table) -> list[_Example]:
    cols = table.select(
        ["example_id", "layer", "neuron", "tokens", "text", "split", "trimmed_activation"]
    ).to_pydict()
    kinds = (
        table.column("kind").to_pylist()
        if "kind" in table.column_names
        else ["top"] * table.num_rows
    )
    rows = [
        _Example(
            int(cols["example_id"][i]),
            (int(cols["layer"][i]), int(cols["neuron"][i])),
            tuple(int(t) for t in cols["tokens"][i]),
            str(cols["text"][i]),
            str(cols["split"][i]),
            float(cols["trimmed_activation"][i]),
            str(kinds[i]),
        )
        for i in range(table.num_rows)
    ]
    rows.sort(key=lambda e: e.example_id)
    return rows


def pair_tasks(
    examples: Sequence[_Example],
    labels: pa.Table,
    pairs: pa.Table,
    info: dict[NeuronKey, NeuronInfo],
) -> list[Task]:
    """One task per kept pair of a tracked neuron, sorted by (layer, neuron, head_layer, head)."""
    kept = pairs.filter(pc.equal(pairs.column("kept"), True)).select(_PAIR_KEYS)
    kept_keys = sorted(
        {tuple(int(v) for v in row.values()) for row in kept.to_pylist()}  # type: ignore[misc]
    )
    kept_keys = [k for k in kept_keys if (k[0], k[1]) in info]
    if not kept_keys:
        return []
    wanted = pa.table(
        {name: pa.array([k[j] for k in kept_keys], pa.int64()) for j, name in enumerate(_PAIR_KEYS)}
    )
    lab = labels.select([*_PAIR_KEYS, "example_id", "active", "split"]).join(
        wanted, keys=_PAIR_KEYS, join_type="inner"
    )
    cols = lab.to_pydict()
    by_pair: dict[tuple[int, ...], list[tuple[int, bool, str]]] = defaultdict(list)
    for i in range(lab.num_rows):
        key = tuple(int(cols[k][i]) for k in _PAIR_KEYS)
        by_pair[key].append((int(cols["example_id"][i]), bool(cols["active"][i]), cols["split"][i]))
    by_id = {e.example_id: e for e in examples}
    tasks = []
    for key in kept_keys:
        nk = (key[0], key[1])
        train: list[Item] = []
        test: list[Item] = []
        missing = 0
        for eid, active, split in sorted(by_pair.get(key, [])):
            ex = by_id.get(eid)
            if ex is None or ex.key != nk:
                missing += 1
                continue
            item = Item(eid, ex.tokens, ex.text, active, ex.activation)
            (train if split == "train" else test).append(item)
        if missing:
            log.warning(
                "pair L%dN%d/L%dH%d: %d labels refer to no example of the neuron; they are "
                "ignored (rerun the attribute stage if examples changed)",
                *key,
                missing,
            )
        ni = info[nk]
        tasks.append(
            Task(
                key[0],
                key[1],
                key[2],
                key[3],
                ni.token_id,
                ni.token,
                ni.baseline,
                tuple(train),
                tuple(test),
            )
        )
    return tasks


def neuron_tasks(
    lm: LoadedModel,
    examples: Sequence[_Example],
    info: dict[NeuronKey, NeuronInfo],
    cfg: TaskConfig,
) -> list[Task]:
    """One task per tracked neuron with examples: its top prompts against non-firing
    contexts, its own contrast prompts first."""
    own: dict[NeuronKey, list[_Example]] = defaultdict(list)
    contrasts: dict[NeuronKey, list[_Example]] = defaultdict(list)
    for e in examples:
        (own if e.kind == "top" else contrasts)[e.key].append(e)
    keys = sorted(k for k in info if k in own)
    # distinct prompts, first occurrence wins (examples are sorted by id)
    distinct: dict[tuple[int, ...], _Example] = {}
    for e in examples:
        distinct.setdefault(e.tokens, e)
    pool = list(distinct.values())
    plans: dict[NeuronKey, list[_Example]] = {}
    prompts: list[tuple[int, ...]] = []
    owners: list[NeuronKey] = []
    for key in keys:
        own_tokens = {e.tokens for e in own[key]} | {e.tokens for e in contrasts[key]}
        cands = [e for e in pool if e.key != key and e.tokens not in own_tokens]
        rng = np.random.default_rng([cfg.seed, key[0], key[1]])
        order = rng.permutation(len(cands))[: cfg.negative_candidates * len(own[key])]
        plans[key] = [cands[j] for j in order]
        prompts += [c.tokens for c in plans[key]]
        owners += [key] * len(plans[key])
    acts = (
        neuron_activation_at(lm, prompts, owners, cfg.batch_tokens)
        if prompts
        else np.empty(0, dtype=np.float64)
    )
    tasks = []
    at = 0
    for key in keys:
        cand = plans[key]
        vals = acts[at : at + len(cand)]
        at += len(cand)
        pos = own[key]
        median = float(np.median([e.activation for e in pos]))
        room = {s: sum(e.split == s for e in pos) for s in ("train", "test")}
        neg: list[_Example] = []
        for e in contrasts[key]:  # silent by construction (below 0.2x the median)
            if room.get(e.split, 0) > 0:
                room[e.split] -= 1
                neg.append(e)
        if median > 0:
            limit = cfg.negative_fraction * median
            for e, v in zip(cand, vals, strict=True):
                if v <= limit and room.get(e.split, 0) > 0:
                    room[e.split] -= 1
                    neg.append(e)
        else:
            log.warning(
                "neuron L%dN%d: median activation over its examples is %.3g <= 0, so no "
                "context counts as non-firing; its task has one class",
                *key,
                median,
            )
        items = [(e, True) for e in pos] + [(e, False) for e in neg]
        items.sort(key=lambda p: p[0].example_id)
        # the neuron's activation is known on its own prompts (top and contrast)
        train = tuple(
            Item(e.example_id, e.tokens, e.text, a, e.activation if e.key == key else None)
            for e, a in items
            if e.split == "train"
        )
        test = tuple(
            Item(e.example_id, e.tokens, e.text, a, e.activation if e.key == key else None)
            for e, a in items
            if e.split != "train"
        )
        ni = info[key]
        tasks.append(
            Task(key[0], key[1], None, None, ni.token_id, ni.token, ni.baseline, train, test)
        )
    return tasks
