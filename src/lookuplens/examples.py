"""Stage 3: prompts cut to end at the firing token, trimmed from the left, split.

Each top firing (document, position) becomes a prompt that ends at the firing token.
Its start then moves right as far as the activation at the last token stays at least
`keep_fraction` (0.8, the paper's rule) of the original, found by the paper's binary
search on the start, batched: each round evaluates several candidate starts of every
firing in one forward pass (`trim_prompts`). By default (`keep_read_word`) the start then
moves left, where needed, to the word the neuron's top head reads on the untrimmed
prompt, so the trimmed prompt keeps the context the look-up uses (the 0.8x rule alone
cuts it off on many prompts of real text). A trimmed prompt is
``[BOS] + doc_tokens[start : position + 1]`` (the BOS rule of `lookuplens.corpus`,
so every stage sees prompts the same way); `start` indexes the BOS-prefixed document.
Prompts longer than `max_prompt_tokens` are dropped, duplicates (same neuron, same
tokens) removed. Then `contrast` prompts per neuron are added (`lookuplens.contrast`:
same last token and length as a top prompt, the neuron silent; column ``kind`` is
``"top"`` or ``"contrast"``, and contrasts have ``rank`` -1), and each neuron's examples
of each kind are split into train and test with a seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor

from lookuplens.attribute import frozen_norm_direction, mlp_stream_point, neuron_act
from lookuplens.choices import check_choices
from lookuplens.corpus import CorpusSpec, iter_tokenized
from lookuplens.model import LoadedModel, hook_name, pad_right

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExamplesConfig:
    """How top firings become prompts."""

    keep_fraction: float = 0.8
    """Trim from the left while the activation stays at least this fraction (the paper: 0.8)."""
    max_prompt_tokens: int = 100
    """Drop prompts of this many tokens or more, BOS included (the paper: 100)."""
    window: int = 8
    """Candidate starts evaluated per example in each round of the batched binary search."""
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
    contrast: int = 20
    """Contrast prompts per neuron (`lookuplens.contrast`): same last token and length as
    one of its top prompts, but the neuron silent there (with the whole document as
    context). 0 turns them off (the paper's setup)."""
    contrast_fraction: float = 0.2
    """A contrast's activation is at most this fraction of the neuron's median top one."""
    contrast_search_docs: int = 5000
    """Documents read, at most, to find the contrasts."""
    keep_heads: int = 3
    """Trimming also keeps at least `keep_fraction` of the direct attribution of the
    neuron's driving heads: the (up to) this many upstream heads with the largest direct
    attribution on the untrimmed prompt that carry at least `keep_head_min` of the
    activation. A look-up that adds a modest share of the activation then keeps the word
    it reads. 0: the activation alone (the paper's rule)."""
    keep_head_min: float = 0.1
    """Least share of the activation a head's direct attribution needs to be kept."""
    keep_read_word: bool = True
    """Never trim past the word the neuron's top head reads: on the untrimmed prompt (as
    long as `max_prompt_tokens` allows), the upstream head with the largest direct
    attribution and the position it attends to most from the firing token (BOS and the
    firing token left out); the trimmed prompt starts there at the latest. False: the
    paper's rule alone."""

    def __post_init__(self) -> None:
        check_choices(self)
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
        if self.contrast < 0 or self.contrast_search_docs < 0:
            raise ValueError("contrast and contrast_search_docs must be 0 or more")
        if self.keep_heads < 0 or not 0 <= self.keep_head_min <= 1:
            raise ValueError("keep_heads must be 0 or more and keep_head_min in [0, 1]")
        if not 0 <= self.contrast_fraction < 1:
            raise ValueError(f"contrast_fraction must be in [0, 1), got {self.contrast_fraction}")


def neuron_activation_at(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    neurons: Sequence[tuple[int, int]],
    batch_tokens: int = 8192,
) -> np.ndarray:
    """The activation of ``neurons[i]`` at the last token of ``prompts[i]``, for every i.

    Prompts are grouped by the neuron's layer and right-padded into batches; each forward
    stops where that layer's MLP reads the residual stream, and only the wanted neurons
    are computed there, at the last positions (the layer's own MLP is never run).
    """
    return activation_and_heads_at(lm, prompts, neurons, None, batch_tokens)[0]


def activation_and_heads_at(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    neurons: Sequence[tuple[int, int]],
    heads: Sequence[Sequence[tuple[int, int]]] | None,
    batch_tokens: int = 8192,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """`neuron_activation_at`, and with `heads` also the exact direct attribution of each
    head ``heads[i][j]`` (layer, head) to ``neurons[i]`` at the last token (the norm-aware
    `direct` method of `lookuplens.attribute`), from the same forward passes."""
    out = np.empty(len(prompts), dtype=np.float64)
    head_out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    layer_of = [int(n[0]) for n in neurons]
    order: np.ndarray | list[int] = (
        np.lexsort(([len(p) for p in prompts], layer_of)) if len(prompts) else []
    )
    start = 0
    while start < len(order):
        layer = layer_of[order[start]]
        stop = start + 1
        while (
            stop < len(order)
            and layer_of[order[stop]] == layer
            and len(prompts[order[stop]]) * (stop - start + 1) <= batch_tokens
        ):
            stop += 1
        rows = order[start:stop]
        ids, mask = pad_right(lm, [prompts[r] for r in rows])
        last = torch.tensor([len(prompts[r]) - 1 for r in rows])
        cols = torch.tensor([int(neurons[r][1]) for r in rows])
        point = mlp_stream_point(lm, layer)
        got: dict[str, Tensor] = {}

        def grab(x: Tensor, _n: str, got: dict[str, Tensor] = got, last: Tensor = last) -> None:
            got["x"] = x[torch.arange(len(last)), last]

        z_layers = sorted({hl for r in rows for hl, _ in heads[r]}) if heads else []
        z_names = [hook_name(hl, "attn.hook_z") for hl in z_layers]
        _, cache = lm.run_with_cache(
            ids, z_names, attention_mask=mask, extra_hooks=[(point, grab)], stop_at=point
        )
        with torch.no_grad():
            x = lm.mlp_norm(layer)(got["x"])
            out[rows] = neuron_act(lm, layer, x, cols.to(x.device)).double().cpu().numpy()
            if z_layers and heads is not None:
                w_in = lm.W_in(layer)[cols.to(x.device)].detach()
                w_eff, _ = frozen_norm_direction(lm, layer, got["x"], w_in)  # [B, d]
                at = torch.arange(len(rows))
                for i, r in enumerate(rows):
                    vals = []
                    for hl, h in heads[r]:
                        z = cache[hook_name(hl, "attn.hook_z")][at[i], last[i], h].double()
                        vals.append(float(z @ lm.W_O(hl)[h].double() @ w_eff[i].double()))
                    head_out[r] = np.array(vals, dtype=np.float64)
        start = stop
    return out, head_out


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
        }
    )


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


def top_head_reads(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    neurons: Sequence[tuple[int, int]],
    batch_tokens: int = 8192,
) -> list[int]:
    """For each prompt, the index of the token the neuron's top head reads: the upstream
    head with the largest exact direct attribution to ``neurons[i]`` at the last position,
    and the position it attends to most from there (BOS, when the model has one, and the
    last token itself left out); -1 when it attends to nothing else."""
    from lookuplens.attribute import decompose_neuron_input
    from lookuplens.explain.offline import last_token_attention

    bos_first = lm.bos_token_id is not None
    out = [-1] * len(prompts)
    jobs: dict[tuple[int, int], list[int]] = {}
    for i, (prompt, (layer, neuron)) in enumerate(zip(prompts, neurons, strict=True)):
        dec = decompose_neuron_input(lm, torch.tensor(list(prompt)), layer, neuron, len(prompt) - 1)
        heads = {k: v for k, v in dec.terms.items() if k.startswith("L") and "H" in k}
        if not heads:
            continue
        top = max(heads, key=lambda k: (heads[k], k))
        hl, h = (int(x) for x in top[1:].split("H"))
        jobs.setdefault((hl, h), []).append(i)
    for (hl, h), idx in jobs.items():
        pats = last_token_attention(lm, [prompts[i] for i in idx], hl, h, batch_tokens)
        for i, att in zip(idx, pats, strict=True):
            att = att.copy()
            att[-1] = 0.0  # the last token itself
            if bos_first:
                att[0] = 0.0
            if len(att) >= 2 and att.max() > 0:
                out[i] = int(np.argmax(att))
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
