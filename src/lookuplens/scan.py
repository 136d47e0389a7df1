"""Stage 2: one streaming pass over a corpus, the exact top-k firings of every tracked neuron.

For every selected and baseline neuron at once, the scan keeps the k (document,
position) pairs with the largest activation (post-activation value, the MLP neuron's
output coefficient), by default one entry per document (its maximum over positions, as
in the paper), plus activation statistics over every token (mean, std, fraction
positive, max).

Next-token neurons also keep their *on-token* firings (``ScanConfig.on_token``): the
strongest firings, again one per document, at positions where the neuron's own token comes
next, where the neuron does the job its token names. A neuron that fires hardest in
another context ("Before" for a " books" neuron) would otherwise show none of them, and
the look-up that decides its token there would go unseen. They are added after the top k
(``on_token`` true, ranks from k on) when they reach ``on_token_fraction`` of the
neuron's median top activation and are not top firings already.

Ties are broken deterministically: a larger activation first, then the earlier document,
then the earlier position. The forward pass stops after the last layer that holds a
tracked neuron; the final norm and the LM head are never computed.

The corpus is cut into shards of consecutive documents. Each finished shard is written
atomically, so an interrupted scan continues from its last shard; since a shard's top-k
contains every member of the global top-k that lies in it, merging shard results is
exact, and the result is identical to an uninterrupted scan.

Peak memory does not grow with the corpus: on glibc the scan serves allocations of 1 MiB
and more (the batch activations) with ``mmap``, so each is returned to the system when
freed (``ScanConfig.bound_heap``). With glibc's default, a dynamic threshold, batches of
changing shapes leave a fragmented heap that kept growing with the number of batches
(+27% peak RSS from 100k to 1M storyworld tokens). The cost is fresh pages for every
batch: about 6% of scan time on the bundled model, and on a GPT-2-small-shaped model the
scan fell from 1.52x to 1.28x a plain HF forward (runs on different days). When the scan
ends, the threshold is raised to `RELEASED_MMAP_THRESHOLD` (glibc cannot turn its dynamic
threshold back on): left at 1 MiB, every later stage of the process pays for fresh pages
on each allocation (the storyworld's verify stage took 116 s instead of 57 s, 100 s of it
in the kernel); at 256 MiB it takes 59 s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor

from lookuplens.corpus import (
    CorpusFingerprint,
    CorpusHasher,
    CorpusSpec,
    TokenizedDoc,
    iter_documents,
    iter_tokenized,
    make_batches,
    source_kind,
)
from lookuplens.errors import CorpusError
from lookuplens.model import LoadedModel, hook_name, pad_id
from lookuplens.store import ShardStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanConfig:
    """How the corpus is scanned."""

    k: int = 30
    """Top firings kept per neuron (the paper: 30)."""
    one_per_doc: bool = True
    """Keep at most one firing per document (its maximum over positions), as the paper."""
    batch_tokens: int = 16384
    """Padded tokens per forward batch (rows times the longest row)."""
    shard_docs: int = 256
    """Documents per shard; an interrupted scan resumes at a shard boundary."""
    on_token: int = 6
    """On-token firings kept per neuron besides the top k: its strongest where its token
    comes next (see the module docstring); 0: none (the paper)."""
    on_token_fraction: float = 0.5
    """An on-token firing is kept when it reaches this share of the neuron's median top
    activation (a neuron that is silent where its token comes has nothing to show there)."""

    bound_heap: bool = True
    """On glibc, serve allocations of 1 MiB or more with ``mmap`` while the scan runs, so
    that peak memory does not grow with the corpus (see the module docstring); False
    leaves the allocator alone."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1 (the number of top firings kept), got {self.k}")
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {self.batch_tokens}")
        if self.shard_docs < 1:
            raise ValueError(f"shard_docs must be positive, got {self.shard_docs}")
        if self.on_token < 0:
            raise ValueError(f"on_token must be 0 or more, got {self.on_token}")
        if not 0 <= self.on_token_fraction:
            raise ValueError(f"on_token_fraction must be 0 or more, got {self.on_token_fraction}")


@dataclass(frozen=True)
class ScanProgress:
    """Reported after each batch."""

    docs: int
    tokens: int
    total_docs: int | None
    seconds: float


@dataclass(frozen=True)
class ScanResult:
    """The merged top-k table, the per-neuron statistics, and what was scanned."""

    topk: pa.Table
    """layer, neuron, rank (0 = strongest), doc_id, position, activation, on_token (the
    on-token firings, ranked from k on)."""
    stats: pa.Table
    """layer, neuron, act_mean, act_std, act_frac_pos, act_max, n_tokens."""
    corpus: CorpusFingerprint


class _TopK:
    """Running top-k per neuron over candidates arriving in corpus order."""

    def __init__(self, n: int, k: int) -> None:
        self.k = k
        self.val = np.empty((n, 0), dtype=np.float64)
        self.doc = np.empty((n, 0), dtype=np.int64)
        self.pos = np.empty((n, 0), dtype=np.int64)

    def add(self, val: np.ndarray, doc: np.ndarray, pos: np.ndarray) -> None:
        """Candidates ``[n, m]``, each row in (doc, position) order, later than all before."""
        v = np.concatenate([self.val, val], axis=1)
        d = np.concatenate([self.doc, doc], axis=1)
        p = np.concatenate([self.pos, pos], axis=1)
        # stable sort on -value keeps the earlier (doc, position) first among equals
        order = np.argsort(-v, axis=1, kind="stable")[:, : self.k]
        self.val = np.take_along_axis(v, order, axis=1)
        self.doc = np.take_along_axis(d, order, axis=1)
        self.pos = np.take_along_axis(p, order, axis=1)


class _Stats:
    def __init__(self, n: int) -> None:
        self.sum = np.zeros(n)
        self.sumsq = np.zeros(n)
        self.pos = np.zeros(n, dtype=np.int64)
        self.count = np.zeros(n, dtype=np.int64)
        self.max = np.full(n, -np.inf)

    def add(self, acts: Tensor, valid: Tensor) -> None:
        a = acts[valid].double()  # [tokens, n]
        self.sum += a.sum(0).numpy()
        self.sumsq += (a * a).sum(0).numpy()
        self.pos += (a > 0).sum(0).numpy()
        self.count += a.shape[0]
        if a.shape[0]:
            self.max = np.maximum(self.max, a.max(0).values.numpy())


def _candidates(neurons: Sequence[tuple[int, int]], top: _TopK, kind: str) -> dict[str, Any]:
    n, k = top.val.shape
    idx = np.repeat(np.arange(n), k)
    layer = np.array([a for a, _ in neurons], dtype=np.int64)
    neuron = np.array([b for _, b in neurons], dtype=np.int64)
    valid = np.isfinite(top.val.reshape(-1))
    return {
        "kind": [kind] * int(valid.sum()),
        "layer": layer[idx][valid],
        "neuron": neuron[idx][valid],
        "doc_id": top.doc.reshape(-1)[valid],
        "position": top.pos.reshape(-1)[valid],
        "activation": top.val.reshape(-1)[valid],
    }


def _shard_table(
    neurons: Sequence[tuple[int, int]], top: _TopK, stats: _Stats, on: _TopK | None = None
) -> pa.Table:
    n = len(neurons)
    layer = np.array([a for a, _ in neurons], dtype=np.int64)
    neuron = np.array([b for _, b in neurons], dtype=np.int64)
    cand = _candidates(neurons, top, "top")
    if on is not None:
        more = _candidates(neurons, on, "on_token")
        cand = {key: np.concatenate([np.asarray(cand[key]), np.asarray(more[key])]) for key in cand}
    st = {
        "kind": ["stats"] * n,
        "layer": layer,
        "neuron": neuron,
        "doc_id": np.full(n, -1, dtype=np.int64),
        "position": np.full(n, -1, dtype=np.int64),
        "activation": stats.max,
    }
    t1 = pa.table({**cand, "kind": pa.array(list(cand["kind"]), pa.string())})
    t2 = pa.table(st)
    t1 = t1.append_column("s_sum", pa.nulls(t1.num_rows, pa.float64()))
    t1 = t1.append_column("s_sumsq", pa.nulls(t1.num_rows, pa.float64()))
    t1 = t1.append_column("s_pos", pa.nulls(t1.num_rows, pa.int64()))
    t1 = t1.append_column("s_count", pa.nulls(t1.num_rows, pa.int64()))
    t2 = t2.append_column("s_sum", pa.array(stats.sum))
    t2 = t2.append_column("s_sumsq", pa.array(stats.sumsq))
    t2 = t2.append_column("s_pos", pa.array(stats.pos))
    t2 = t2.append_column("s_count", pa.array(stats.count))
    return pa.concat_tables([t1, t2])


def _fill(top: _TopK, tops: pd.DataFrame, index: dict[tuple[int, int], int], n: int) -> None:
    """Add one shard's candidates of one kind to `top`."""
    if not len(tops):
        return
    # each neuron's candidates in (doc, position) order, as _TopK.add expects
    tops = tops.sort_values(["doc_id", "position"], kind="stable")
    rows = np.array([index[(a, b)] for a, b in zip(tops.layer, tops.neuron, strict=True)])
    m = int(np.bincount(rows, minlength=n).max())
    val = np.full((n, m), -np.inf)
    doc = np.zeros((n, m), dtype=np.int64)
    pos = np.zeros((n, m), dtype=np.int64)
    fill = np.zeros(n, dtype=np.int64)
    for r, d, p, v in zip(rows, tops.doc_id, tops.position, tops.activation, strict=True):
        val[r, fill[r]], doc[r, fill[r]], pos[r, fill[r]] = v, d, p
        fill[r] += 1
    top.add(val, doc, pos)


def merge_shards(
    neurons: Sequence[tuple[int, int]],
    shards: list[pa.Table],
    k: int,
    on_token: int = 0,
    on_token_fraction: float = 0.5,
) -> tuple[pa.Table, pa.Table]:
    """The top-k table and the statistics from shard results, in shard order; with
    `on_token`, each neuron's on-token firings follow its top k (see the module
    docstring)."""
    n = len(neurons)
    index = {nk: i for i, nk in enumerate(neurons)}
    top = _TopK(n, k)
    # k more than kept: an on-token firing that is a top firing too is left out
    on = _TopK(n, on_token + k)
    stats = _Stats(n)
    for t in shards:
        df = t.to_pandas()
        _fill(top, df[df.kind == "top"], index, n)
        if on_token:
            _fill(on, df[df.kind == "on_token"], index, n)
        st = df[df.kind == "stats"]
        rows = np.array([index[(a, b)] for a, b in zip(st.layer, st.neuron, strict=True)])
        stats.sum[rows] += st.s_sum.to_numpy()
        stats.sumsq[rows] += st.s_sumsq.to_numpy()
        stats.pos[rows] += st.s_pos.to_numpy().astype(np.int64)
        stats.count[rows] += st.s_count.to_numpy().astype(np.int64)
        stats.max[rows] = np.maximum(stats.max[rows], st.activation.to_numpy())
    cols: dict[str, list[Any]] = {
        key: [] for key in ("layer", "neuron", "rank", "doc_id", "position", "activation")
    }
    flag: list[bool] = []
    for i, (layer, neuron) in enumerate(neurons):
        ok = np.isfinite(top.val[i])
        vals = top.val[i][ok]
        picked = [(d, p, v) for d, p, v in zip(top.doc[i][ok], top.pos[i][ok], vals, strict=True)]
        n_top = len(picked)
        if on_token and n_top:
            floor = on_token_fraction * float(np.median(vals))
            have = {(d, p) for d, p, _ in picked}
            extra = [
                (d, p, v)
                for d, p, v in zip(on.doc[i], on.pos[i], on.val[i], strict=True)
                if np.isfinite(v) and v >= floor and v > 0 and (d, p) not in have
            ]
            picked += extra[:on_token]
        for r, (d, p, v) in enumerate(picked):
            cols["layer"].append(layer)
            cols["neuron"].append(neuron)
            cols["rank"].append(r)
            cols["doc_id"].append(int(d))
            cols["position"].append(int(p))
            cols["activation"].append(float(v))
            flag.append(r >= n_top)
    topk = pa.table(
        {
            "layer": pa.array(cols["layer"], pa.int64()),
            "neuron": pa.array(cols["neuron"], pa.int64()),
            "rank": pa.array(cols["rank"], pa.int64()),
            "doc_id": pa.array(cols["doc_id"], pa.int64()),
            "position": pa.array(cols["position"], pa.int64()),
            "activation": pa.array(cols["activation"], pa.float64()),
            "on_token": pa.array(flag, pa.bool_()),
        }
    )
    layer_a = np.array([a for a, _ in neurons], dtype=np.int64)
    neuron_a = np.array([b for _, b in neurons], dtype=np.int64)
    count = np.maximum(stats.count, 1)
    mean = stats.sum / count
    stats_t = pa.table(
        {
            "layer": layer_a,
            "neuron": neuron_a,
            "act_mean": mean,
            "act_std": np.sqrt(np.maximum(stats.sumsq / count - mean**2, 0.0)),
            "act_frac_pos": stats.pos / count,
            "act_max": stats.max,
            "n_tokens": stats.count,
        }
    )
    return topk, stats_t


class NeuronReader:
    """Hooks that gather tracked neurons' activations during a forward pass."""

    def __init__(
        self,
        lm: LoadedModel,
        neurons: Sequence[tuple[int, int]],
        tokens: Sequence[int] | None = None,
    ) -> None:
        self.lm = lm
        self.neurons = list(neurons)
        self.tokens = None if tokens is None else torch.tensor([int(t) for t in tokens])
        """Each neuron's token (for its on-token firings), or None."""
        if self.tokens is not None and len(self.tokens) != len(self.neurons):
            raise ValueError("one token per neuron")
        layers = sorted({a for a, _ in neurons})
        self.last_layer = max(layers)
        self.cols: dict[int, tuple[Tensor, Tensor]] = {}
        for layer in layers:
            where = [i for i, (a, _) in enumerate(neurons) if a == layer]
            self.cols[layer] = (
                torch.tensor(where, dtype=torch.long),
                torch.tensor([neurons[i][1] for i in where], dtype=torch.long, device=lm.device),
            )

    def run(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Activations ``[batch, pos, n_tracked]`` (float32, on the CPU)."""
        b, p = input_ids.shape
        out = torch.empty(b, p, len(self.neurons), dtype=torch.float32)
        hooks = []
        for layer, (where, idx) in self.cols.items():

            def grab(x: Tensor, _name: str, where: Tensor = where, idx: Tensor = idx) -> None:
                out[:, :, where] = x[:, :, idx].float().cpu()

            hooks.append((hook_name(layer, "mlp.hook_post"), grab))
        self.lm.run_with_cache(
            input_ids,
            [],
            attention_mask=attention_mask,
            stop_after_layer=self.last_layer,
            extra_hooks=hooks,
        )
        return out


def scan_shard(
    reader: NeuronReader,
    chunk: Sequence[TokenizedDoc],
    cfg: ScanConfig,
    pad: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """The partial result of one shard: its top-k candidates and activation sums.

    Shards are independent: results of any shards, in shard order, merge exactly with
    `merge_shards` (used by the local loop and by distributed backends).
    """
    n = len(reader.neurons)
    top = _TopK(n, cfg.k)
    # enough to stay exact after the top firings are left out (`merge_shards`)
    on = _TopK(n, cfg.on_token + cfg.k) if cfg.on_token and reader.tokens is not None else None
    stats = _Stats(n)
    for batch in make_batches(chunk, cfg.batch_tokens, pad):
        acts = reader.run(batch.input_ids, batch.attention_mask)
        valid = batch.attention_mask.bool()
        stats.add(acts, valid)
        masked = acts.masked_fill(~valid[:, :, None], -torch.inf).double()
        doc_ids = np.array(batch.doc_ids, dtype=np.int64)
        _add_batch(top, masked, doc_ids, cfg.one_per_doc)
        if on is not None and reader.tokens is not None:
            ids = batch.input_ids.cpu()
            nxt = torch.full_like(ids, -1)
            nxt[:, :-1] = ids[:, 1:].masked_fill(~valid[:, 1:], -1)
            here = nxt[:, :, None] == reader.tokens[None, None, :]  # [b, p, n]
            _add_batch(on, masked.masked_fill(~here, -torch.inf), doc_ids, cfg.one_per_doc)
        if on_batch is not None:
            on_batch(len(batch.doc_ids), batch.n_tokens)
    return _shard_table(reader.neurons, top, stats, on)


def _add_batch(top: _TopK, masked: Tensor, doc_ids: np.ndarray, one_per_doc: bool) -> None:
    """Offer one batch's activations ``[b, p, n]`` (-inf where not a candidate) to `top`."""
    b, p_len, n = masked.shape
    if one_per_doc:
        v, p = masked.max(dim=1)  # [b, n]
        top.add(
            v.T.numpy(),
            np.broadcast_to(doc_ids, (n, len(doc_ids))).copy(),
            p.T.numpy().astype(np.int64),
        )
        return
    flat = masked.reshape(b * p_len, n).T.numpy()  # rows in (doc, pos) order
    kk = min(top.k, flat.shape[1])
    part = np.argpartition(-flat, kk - 1, axis=1)[:, :kk]
    part.sort(axis=1)  # back to (doc, position) order
    top.add(np.take_along_axis(flat, part, axis=1), doc_ids[part // p_len], part % p_len)


def count_documents(spec: CorpusSpec) -> int | None:
    """Documents in a local or bundled source (None for streamed hub datasets)."""
    if source_kind(spec.source) == "hf":
        return None
    n = 0
    for _ in iter_documents(spec):
        n += 1
        if spec.max_docs is not None and n >= spec.max_docs:
            break
    return n


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


RELEASED_MMAP_THRESHOLD = 256 << 20
"""The ``mmap`` threshold after a bounded scan: only very large buffers bypass the heap."""


def bound_native_heap(threshold: int = 1 << 20) -> bool:
    """Make glibc serve allocations of ``threshold`` bytes or more with ``mmap`` (returned
    to the system on free), which also turns off its dynamic threshold. Process-wide and
    idempotent; True when applied, False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def scan_corpus(
    lm: LoadedModel,
    neurons: Sequence[tuple[int, int]],
    spec: CorpusSpec,
    cfg: ScanConfig,
    shards: ShardStore | None = None,
    on_progress: Callable[[ScanProgress], None] | None = None,
    tokens: Sequence[int] | None = None,
) -> ScanResult:
    """Scan the corpus for the top-k firings of `neurons` (see the module docstring), and
    the on-token firings when `tokens` gives each neuron's token."""
    if not neurons:
        raise CorpusError(
            "no neurons to scan; the neurons stage selected none (check --layers "
            "and the token filter)"
        )
    bounded = cfg.bound_heap and bound_native_heap()
    try:
        return _scan(lm, neurons, spec, cfg, shards, on_progress, tokens)
    finally:
        if bounded:
            bound_native_heap(RELEASED_MMAP_THRESHOLD)


def _scan(
    lm: LoadedModel,
    neurons: Sequence[tuple[int, int]],
    spec: CorpusSpec,
    cfg: ScanConfig,
    shards: ShardStore | None,
    on_progress: Callable[[ScanProgress], None] | None,
    tokens: Sequence[int] | None,
) -> ScanResult:
    reader = NeuronReader(lm, neurons, tokens)
    pad = pad_id(lm)
    total_docs = count_documents(spec)
    hasher = CorpusHasher()
    docs: Iterator[TokenizedDoc] = hasher.track(iter_tokenized(spec, lm.tokenizer, lm.max_context))
    done = shards.done() if shards is not None else set()
    if done:
        log.info("resuming the scan: %d shards already written", len(done))
    results: list[pa.Table] = []
    t0 = time.perf_counter()
    seen_docs = seen_tokens = 0
    i = 0
    while True:
        chunk = list(islice(docs, cfg.shard_docs))
        if not chunk:
            break
        if i in done and shards is not None:
            results.append(shards.read(i))
        else:

            def on_batch(docs_: int, tokens_: int) -> None:
                nonlocal seen_docs, seen_tokens
                seen_docs += docs_
                seen_tokens += tokens_
                if on_progress is not None:
                    on_progress(
                        ScanProgress(seen_docs, seen_tokens, total_docs, time.perf_counter() - t0)
                    )

            table = scan_shard(reader, chunk, cfg, pad, on_batch)
            if shards is not None:
                shards.write(i, table)
            results.append(table)
        if i in done:
            seen_docs += len(chunk)
            seen_tokens += sum(len(d.tokens) for d in chunk)
            if on_progress is not None:
                on_progress(
                    ScanProgress(seen_docs, seen_tokens, total_docs, time.perf_counter() - t0)
                )
        i += 1
    if i == 0:
        raise CorpusError(f"corpus {spec.source!r} has no document with tokens; nothing to scan")
    stale = {j for j in done if j >= i}
    if stale:
        raise CorpusError(
            f"the run directory holds scan shards {sorted(stale)} beyond the corpus's {i} shards; "
            "the corpus changed since the scan started: pass --overwrite scan"
        )
    on_token = cfg.on_token if tokens is not None else 0
    topk, stats_t = merge_shards(neurons, results, cfg.k, on_token, cfg.on_token_fraction)
    return ScanResult(topk=topk, stats=stats_t, corpus=hasher.result())
