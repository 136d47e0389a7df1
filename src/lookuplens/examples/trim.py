"""Trimming a firing's prompt from the left (see `lookuplens.examples`): the paper's
batched binary search on the start (`trim_prompts`), the driving heads whose direct
attribution it also keeps, and the word the top head reads, which it never cuts off."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lookuplens.examples.config import ExamplesConfig
from lookuplens.examples.reads import (
    activation_and_heads_at,
    neuron_activation_at,
    top_head_reads,
)
from lookuplens.model import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["Trimmed", "capped_start", "trim_prompts", "untrimmed_prompt"]


def capped_start(position: int, cfg: ExamplesConfig, bos_first: bool) -> int:
    """The earliest start of a prompt ending at `position` (an index of the BOS-prefixed
    document) that keeps it under `max_prompt_tokens`: the untrimmed prompt."""
    body_cap = cfg.max_prompt_tokens - 1 - bos_first
    return max(1 if bos_first else 0, position + 1 - body_cap)


def untrimmed_prompt(
    doc: np.ndarray, position: int, cfg: ExamplesConfig, bos: int | None
) -> tuple[list[int], int]:
    """The longest prompt ending at `position` that the cap allows, BOS first when the
    model has one, and its start (`capped_start`)."""
    first = capped_start(position, cfg, bos is not None)
    return ([bos] if bos is not None else []) + doc[first : position + 1].tolist(), first


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
    head_refs: Sequence[Sequence[tuple[int, int, float]]] | None = None,
) -> list[Trimmed | None]:
    """The trimmed start of each firing; None when no start within the cap keeps it.

    With `head_refs` (per firing: the driving heads as (layer, head, direct attribution on
    the untrimmed prompt)), a start passes only when each of those heads also keeps at
    least `keep_fraction` of its direct attribution, so the context a driving head reads
    is kept even where it adds only a small share of the activation.

    ``contexts[i]`` is the BOS-prefixed document, ``positions[i]`` the firing position in
    it, ``activations[i]`` the activation there. The search is the paper's binary search
    on the start, batched: a first round gallops from the right (starts 1, 2, 4, ...
    tokens before the firing token, so short contexts cost little), then it keeps an
    interval (lo, hi) where start lo keeps at least
    `keep_fraction` of the activation and start hi does not (hi = position + 1 means the
    empty prompt), evaluates `window` evenly spaced starts inside it in one forward pass
    for all examples at once, and narrows it to the latest passing start and the first
    failing start after it, until hi = lo + 1. The result keeps the activation, and
    trimming one more token does not.
    """
    bos = int(contexts[0][0]) if len(contexts) and lm.bos_token_id is not None else None
    n = len(contexts)
    first_start = 1 if bos is not None else 0
    lo = [capped_start(int(positions[i]), cfg, bos is not None) for i in range(n)]
    hi = [int(positions[i]) + 1 for i in range(n)]
    lo_val: list[float | None] = [None] * n

    head_vals: dict[tuple[int, int], np.ndarray] = {}

    def passes(i: int, v: float, start: int | None = None) -> bool:
        a = activations[i]
        # the rule needs a positive activation; a non-positive one must not drop further
        if v < (cfg.keep_fraction * a if a > 0 else a):
            return False
        if head_refs is None or start is None or not head_refs[i]:
            return True
        got = head_vals[(i, start)]
        refs = np.array([r[2] for r in head_refs[i]])
        return bool(np.all(got >= cfg.keep_fraction * refs))

    def evaluate(jobs: list[tuple[int, int]]) -> np.ndarray:
        prompts = [
            ([bos] if bos is not None else []) + contexts[i][s : positions[i] + 1].tolist()
            for i, s in jobs
        ]
        wanted = None if head_refs is None else [[r[:2] for r in head_refs[i]] for i, _ in jobs]
        acts, heads = activation_and_heads_at(
            lm, prompts, [neurons[i] for i, _ in jobs], wanted, cfg.batch_tokens
        )
        if head_refs is not None:
            for job, hv in zip(jobs, heads, strict=True):
                head_vals[job] = hv
        return acts

    # round 0, galloping from the right: starts 1, 2, 4, 8, ... tokens before the end and
    # the furthest start the cap allows; the latest passing one becomes lo, the next
    # later candidate (failing) hi. No passing start at all: the firing is dropped.
    jobs0: list[tuple[int, int]] = []
    full: dict[int, float] = {}
    for i in range(n):
        # the whole document prefix is the scanned context itself: it keeps the activation
        starts = set() if lo[i] == first_start else {lo[i]}
        if lo[i] == first_start:
            full[i] = float(activations[i])
        d = 1
        while hi[i] - d > lo[i]:
            starts.add(hi[i] - d)
            d *= 2
        jobs0 += [(i, st) for st in sorted(starts)]
    vals = evaluate(jobs0)
    alive = []
    by_ex0: dict[int, list[tuple[int, float]]] = {}
    for (i, st), v in zip(jobs0, vals, strict=True):
        by_ex0.setdefault(i, []).append((st, float(v)))
    for i, a in full.items():
        by_ex0[i] = [(first_start, a), *by_ex0.get(i, [])]
    for i, pts in sorted(by_ex0.items()):
        best = max(
            (
                j
                for j, (st, v) in enumerate(pts)
                if st == first_start and i in full or passes(i, v, st)
            ),
            default=None,
        )
        if best is None:
            continue
        lo[i], lo_val[i] = pts[best]
        if best + 1 < len(pts):
            hi[i] = pts[best + 1][0]
        alive.append(i)
    pending = [i for i in alive if hi[i] - lo[i] > 1]
    while pending:
        jobs: list[tuple[int, int]] = []
        for i in pending:
            gap = hi[i] - lo[i]
            k = min(cfg.window, gap - 1)
            points = sorted({lo[i] + round(gap * (j + 1) / (k + 1)) for j in range(k)})
            jobs += [(i, s) for s in points if lo[i] < s < hi[i]]
        vals = evaluate(jobs)
        by_example: dict[int, list[tuple[int, float]]] = {}
        for (i, s), v in zip(jobs, vals, strict=True):
            by_example.setdefault(i, []).append((s, float(v)))
        for i, pts in by_example.items():
            last_pass = None
            for j, (st, v) in enumerate(pts):
                if passes(i, v, st):
                    last_pass = j
            if last_pass is not None:
                lo[i], lo_val[i] = pts[last_pass]
            if last_pass is None:
                hi[i] = pts[0][0]
            elif last_pass + 1 < len(pts):
                hi[i] = pts[last_pass + 1][0]
        pending = [i for i in pending if hi[i] - lo[i] > 1]
    return [
        Trimmed(lo[i], float(lo_val[i])) if lo_val[i] is not None else None  # type: ignore[arg-type]
        for i in range(n)
    ]


def _driving_heads(
    lm: LoadedModel, rows: list[dict], docs: dict[int, np.ndarray], cfg: ExamplesConfig
) -> list[list[tuple[int, int, float]]]:
    """Per firing, its driving heads as (layer, head, direct attribution) on the untrimmed
    prompt (as long as `max_prompt_tokens` allows): see `ExamplesConfig.keep_heads`."""
    prompts, neurons, heads = [], [], []
    for r in rows:
        prompts.append(
            untrimmed_prompt(docs[r["doc_id"]], int(r["position"]), cfg, lm.bos_token_id)[0]
        )
        layer = int(r["layer"])
        neurons.append((layer, int(r["neuron"])))
        top_layer = layer + (0 if lm.parallel_residual else 1)
        heads.append([(hl, h) for hl in range(top_layer) for h in range(lm.n_heads)])
    acts, vals = activation_and_heads_at(lm, prompts, neurons, heads, cfg.batch_tokens)
    out = []
    for a, v, hs in zip(acts, vals, heads, strict=True):
        order = np.argsort(-v, kind="stable")[: cfg.keep_heads]
        floor = cfg.keep_head_min * a if a > 0 else np.inf
        out.append([(*hs[j], float(v[j])) for j in order if v[j] > 0 and v[j] >= floor])
    return out


def _keep_read_words(
    lm: LoadedModel,
    rows: list[dict],
    docs: dict[int, np.ndarray],
    trimmed: list[Trimmed | None],
    cfg: ExamplesConfig,
    bos_first: bool,
) -> tuple[list[int], list[Trimmed | None]]:
    """Per firing, the document position the neuron's top head reads on the untrimmed
    prompt (-1: none), and the trimmed starts moved left to keep it (see
    `ExamplesConfig.keep_read_word`), their activations measured again."""
    bos = lm.bos_token_id
    read_at = [-1] * len(rows)
    live = [i for i, t in enumerate(trimmed) if t is not None]
    firsts: dict[int, int] = {}
    prompts = []
    for i in live:
        prompt, firsts[i] = untrimmed_prompt(
            docs[rows[i]["doc_id"]], int(rows[i]["position"]), cfg, bos
        )
        prompts.append(prompt)
    reads = top_head_reads(
        lm, prompts, [(int(rows[i]["layer"]), int(rows[i]["neuron"])) for i in live],
        cfg.batch_tokens,
    )  # fmt: skip
    moved: list[int] = []
    for i, read in zip(live, reads, strict=True):
        if read < 0:
            continue
        at = firsts[i] + read - (1 if bos_first else 0)
        read_at[i] = at
        t = trimmed[i]
        if t is not None and at < t.start:
            moved.append(i)
            trimmed[i] = Trimmed(at, t.activation)
    if moved:
        prompts = [
            ([bos] if bos_first else [])
            + docs[rows[i]["doc_id"]][trimmed[i].start : int(rows[i]["position"]) + 1].tolist()  # type: ignore[union-attr]
            for i in moved
        ]
        neurons = [(int(rows[i]["layer"]), int(rows[i]["neuron"])) for i in moved]
        acts = neuron_activation_at(lm, prompts, neurons, cfg.batch_tokens)
        for i, a in zip(moved, acts, strict=True):
            trimmed[i] = Trimmed(trimmed[i].start, float(a))  # type: ignore[union-attr]
    log.info(
        "kept the top head's most-read word in %d prompts by starting them earlier", len(moved)
    )
    return read_at, trimmed
