"""What the report and the dashboard show from the model, stored in the run directory.

The report stage runs the model once on what the report and the dashboard's read-only
pages show and writes it as the ``views`` table (`build_views`; its columns are
documented in ``lookuplens.store.COLUMN_DOCS``): per shown prompt, the activation of its
neuron at every token; per (kept pair, shown prompt), the head's attention from the last
token (the firing position); per tracked neuron, the tokens its output promotes and
suppresses most. Each row carries its tokens' text, so `lookuplens report` and
`lookuplens serve` render a run directory without the model or its tokenizer.

What is stored (`stored_scope`): the report's own plan under the run's report settings,
and for the dashboard every tracked neuron's first `VIEW_PROMPTS` prompts, every kept
pair's first `VIEW_PROMPTS` prompts with the head active and as many with it inactive,
and `VIEW_VOCAB` promoted and suppressed tokens per tracked neuron. `StoredViews` reads
the table back; a row whose tokens no longer match the examples table counts as missing.
"""

from __future__ import annotations

import logging
from collections import ChainMap, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import pyarrow as pa

from lookuplens.errors import RunDirError
from lookuplens.model import LoadedModel
from lookuplens.report.compute import (
    ModelViews,
    VocabTokens,
    last_position_attention,
    neuron_activations,
    vocab_tokens,
)
from lookuplens.report.config import ReportConfig
from lookuplens.report.data import ReportPlan, RunTables, display_order, plan_report
from lookuplens.store import RunDir, table_schema

log = logging.getLogger(__name__)

__all__ = [
    "VIEW_KINDS",
    "VIEW_PROMPTS",
    "VIEW_VOCAB",
    "StoredViews",
    "ViewScope",
    "build_views",
    "congruence_mode",
    "report_scope",
    "stored_scope",
]

VIEW_KINDS: tuple[str, ...] = ("activation", "attention", "promoted", "suppressed")
"""The kinds of row of the ``views`` table."""

VIEW_PROMPTS = 12
"""Prompts stored per tracked neuron, and per class (head active, inactive) of a kept
pair: what the dashboard shows (`ServeConfig.max_prompts`)."""

VIEW_VOCAB = 10
"""Promoted and suppressed tokens stored per tracked neuron (at least; the report's
``n_vocab_tokens`` when larger)."""

NeuronKey = tuple[int, int]
PairKey = tuple[int, int, int, int]
_ALL = 10**9  # "no cap" for plan_report


def congruence_mode(meta: Mapping[str, object]) -> Literal["folded", "raw"]:
    """How the run's neurons stage read W_out @ W_U (``config.neurons.congruence``)."""
    config = meta.get("config")
    neurons = config.get("neurons") if isinstance(config, dict) else None
    mode = neurons.get("congruence") if isinstance(neurons, dict) else None
    return "raw" if mode == "raw" else "folded"


# ------------------------------------------------------------------------ the scope


@dataclass(frozen=True)
class ViewScope:
    """Which prompts, pairs and neurons to run the model on."""

    neuron_prompts: dict[NeuronKey, tuple[int, ...]] = field(default_factory=dict)
    """(layer, neuron) -> example ids whose activations are shown."""
    pair_prompts: dict[PairKey, tuple[int, ...]] = field(default_factory=dict)
    """(layer, neuron, head_layer, head) -> example ids whose attention is shown."""
    vocab_neurons: tuple[NeuronKey, ...] = ()
    """Neurons whose promoted and suppressed tokens are shown."""
    k: int = 0
    """Promoted and suppressed tokens per neuron."""

    @property
    def empty(self) -> bool:
        return not (
            any(self.neuron_prompts.values())
            or any(self.pair_prompts.values())
            or (self.vocab_neurons and self.k > 0)
        )

    def union(self, other: ViewScope) -> ViewScope:
        """Everything either scope holds (prompt order: this one's first)."""

        vocab = tuple(dict.fromkeys((*self.vocab_neurons, *other.vocab_neurons)))
        return ViewScope(
            _merge(self.neuron_prompts, other.neuron_prompts),
            _merge(self.pair_prompts, other.pair_prompts),
            vocab,
            max(self.k, other.k),
        )


K = TypeVar("K")


def _merge(a: Mapping[K, Sequence[int]], b: Mapping[K, Sequence[int]]) -> dict[K, tuple[int, ...]]:
    out = {k: tuple(v) for k, v in a.items()}
    for k, v in b.items():
        out[k] = tuple(dict.fromkeys((*out.get(k, ()), *v)))
    return out


def report_scope(plan: ReportPlan, cfg: ReportConfig) -> ViewScope:
    """Exactly what the report shows from the model under `plan`."""
    return ViewScope(
        {p.key: p.example_ids for p in plan.neurons},
        {q.key: q.example_ids for q in plan.pairs},
        tuple(p.key for p in plan.neurons),
        cfg.n_vocab_tokens,
    )


def _ids_by_neuron(t: RunTables) -> dict[NeuronKey, list[int]]:
    examples = t.get("examples")
    out: dict[NeuronKey, list[int]] = {}
    if examples is None or examples.empty:
        return out
    for (layer, neuron), g in display_order(examples).groupby(["layer", "neuron"], sort=False):
        out[(int(layer), int(neuron))] = [int(i) for i in g.example_id]
    return out


def stored_scope(t: RunTables, cfg: ReportConfig) -> ViewScope:
    """What the report stage stores: the report's plan under `cfg`, and what the
    dashboard's neuron and pair pages show for every tracked neuron and kept pair (see
    the module docstring)."""
    every = plan_report(
        t, ReportConfig(max_neurons=_ALL, max_pairs=_ALL, max_prompts=0, include_baseline=True)
    )
    ids = _ids_by_neuron(t)
    neurons = {p.key: tuple(ids.get(p.key, [])[:VIEW_PROMPTS]) for p in every.neurons}
    pairs: dict[PairKey, tuple[int, ...]] = {}
    for q in every.pairs:
        mine = ids.get((q.layer, q.neuron), [])
        active = [i for i in mine if q.labels.get(i) is True]
        inactive = [i for i in mine if q.labels.get(i) is not True]
        pairs[q.key] = tuple(active[:VIEW_PROMPTS] + inactive[:VIEW_PROMPTS])
    dashboard = ViewScope(neurons, pairs, tuple(neurons), VIEW_VOCAB)
    return report_scope(plan_report(t, cfg), cfg).union(dashboard)


# ------------------------------------------------------------------------ the table


def _tokens_of(t: RunTables) -> dict[int, tuple[tuple[int, ...], NeuronKey]]:
    """example_id -> (its token ids, its neuron)."""
    examples = t.get("examples")
    if examples is None or examples.empty:
        return {}
    return {
        int(i): (tuple(int(x) for x in toks), (int(layer), int(neuron)))
        for i, toks, layer, neuron in zip(
            examples.example_id, examples.tokens, examples.layer, examples.neuron, strict=True
        )
    }


def build_views(
    lm: LoadedModel,
    t: RunTables,
    scope: ViewScope,
    batch_prompts: int = 16,
    mode: Literal["folded", "raw"] | None = None,
) -> pa.Table:
    """Run `lm` on what `scope` names and return the ``views`` table (rows: activations
    by neuron and prompt, attention by pair and prompt, then the vocabulary by neuron).

    `mode` is how W_out @ W_U is read for the vocabulary; None: the run's setting."""
    examples = _tokens_of(t)
    text: dict[int, str] = {}

    def strings(ids: Iterable[int]) -> list[str]:
        out = []
        for i in ids:
            s = text.get(i)
            if s is None:
                s = text[i] = str(lm.token_str(int(i)))
            out.append(s)
        return out

    rows: dict[str, list[object]] = {name: [] for name in table_schema("views").names}

    def add(
        kind: str,
        nkey: NeuronKey,
        head: tuple[int, int] | None,
        example: int | None,
        ids: Sequence[int],
        values: Iterable[float],
    ) -> None:
        rows["kind"].append(kind)
        rows["layer"].append(nkey[0])
        rows["neuron"].append(nkey[1])
        rows["head_layer"].append(None if head is None else head[0])
        rows["head"].append(None if head is None else head[1])
        rows["example_id"].append(example)
        rows["token_ids"].append([int(i) for i in ids])
        rows["tokens"].append(strings(ids))
        rows["values"].append([float(v) for v in values])

    # activations: each prompt once, of its own neuron
    act_ids = [i for ids in scope.neuron_prompts.values() for i in ids if i in examples]
    act_ids = list(dict.fromkeys(act_ids))
    acts = neuron_activations(
        lm, [examples[i][0] for i in act_ids], [examples[i][1] for i in act_ids], batch_prompts
    )
    by_id = dict(zip(act_ids, acts, strict=True))
    for nkey in sorted(scope.neuron_prompts):
        for i in scope.neuron_prompts[nkey]:
            if i in by_id and examples[i][1] == nkey:
                add("activation", nkey, None, i, examples[i][0], by_id[i])
    # attention: one pass per head layer over the prompts of its pairs, every head at once
    by_layer: dict[int, list[int]] = defaultdict(list)
    for pkey, ids in scope.pair_prompts.items():
        by_layer[pkey[2]].extend(i for i in ids if i in examples)
    patterns: dict[tuple[int, int], np.ndarray] = {}
    for hl, todo in sorted(by_layer.items()):
        todo = list(dict.fromkeys(todo))
        pats = last_position_attention(lm, [examples[i][0] for i in todo], hl, batch_prompts)
        patterns.update(((i, hl), p) for i, p in zip(todo, pats, strict=True))
    for pkey in sorted(scope.pair_prompts):
        for i in scope.pair_prompts[pkey]:
            pat = patterns.get((i, pkey[2]))
            if pat is not None:
                add("attention", pkey[:2], pkey[2:], i, examples[i][0], pat[pkey[3]])
    # vocabulary: from the weights
    mode = mode or congruence_mode(t.meta)
    vocab = vocab_tokens(lm, sorted(set(scope.vocab_neurons)), scope.k, mode)
    for nkey in sorted(vocab):
        v = vocab[nkey]
        for kind, items in (("promoted", v.promoted), ("suppressed", v.suppressed)):
            add(kind, nkey, None, None, [i for i, _ in items], [c for _, c in items])
    log.debug(
        "views: %d activation, %d attention, %d vocabulary rows",
        rows["kind"].count("activation"),
        rows["kind"].count("attention"),
        2 * len(vocab),
    )
    return pa.Table.from_pydict(rows, schema=table_schema("views"))


# ------------------------------------------------------------------------ reading it


class _ListColumn:
    """A list column as one flat numpy array and its offsets (no Python objects)."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if len(arr):
            arr = pa.ListArray.from_arrays(arr.offsets, arr.flatten())  # drop any slicing
        self.offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        self.flat = arr.flatten()

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets) if len(self.offsets) else np.zeros(0, np.int64)

    def numpy(self, dtype: type) -> np.ndarray:
        return np.asarray(self.flat.to_numpy(zero_copy_only=False), dtype=dtype)


R = TypeVar("R")


class _Rows(Mapping[K, R]):
    """key -> a value built from one row of the views table when asked for."""

    def __init__(self, index: dict[K, int], build: Callable[[K, int], R]) -> None:
        self._index = index
        self._build = build

    def __getitem__(self, key: K) -> R:
        return self._build(key, self._index[key])

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[K]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class _Strings(Mapping[int, str]):
    """token id -> its text, from the last row of the views table that holds it."""

    def __init__(self, ids: np.ndarray, texts: pa.Array) -> None:
        rev = ids[::-1]
        uniq, first = np.unique(rev, return_index=True)
        self._ids = uniq
        self._pos = (len(ids) - 1 - first).astype(np.int64)
        self._texts = texts

    def _find(self, key: object) -> int:
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            return -1
        i = int(np.searchsorted(self._ids, key))
        return i if i < len(self._ids) and self._ids[i] == key else -1

    def __getitem__(self, key: int) -> str:
        i = self._find(key)
        if i < 0:
            raise KeyError(key)
        return str(self._texts[int(self._pos[i])].as_py())

    def __contains__(self, key: object) -> bool:
        return self._find(key) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(int(i) for i in self._ids)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(frozen=True)
class StoredViews:
    """The ``views`` table indexed for the report and the dashboard. The rows stay in
    Arrow arrays; each mapping builds a row's Python values when it is asked for (a run
    on a large model stores tens of thousands of prompts)."""

    activations: Mapping[tuple[int, int, int], tuple[tuple[int, ...], np.ndarray]]
    """(layer, neuron, example_id) -> (token ids, activation at each token)."""
    attention: Mapping[tuple[int, int, int, int, int], tuple[tuple[int, ...], np.ndarray]]
    """(layer, neuron, head_layer, head, example_id) -> (token ids, attention from the last
    token to each token)."""
    vocab: Mapping[NeuronKey, VocabTokens]
    """(layer, neuron) -> its promoted and suppressed tokens."""
    strings: Mapping[int, str]
    """token id -> its text, for every token the table holds."""

    @classmethod
    def from_table(cls, table: pa.Table) -> StoredViews:
        ids_col = _ListColumn(table.column("token_ids"))
        tok_col = _ListColumn(table.column("tokens"))
        val_col = _ListColumn(table.column("values"))
        n_ids, n_tok, n_val = ids_col.lengths(), tok_col.lengths(), val_col.lengths()
        ok = (n_ids == n_val) & (n_ids == n_tok)  # a malformed row is treated as missing
        flat_ids = ids_col.numpy(np.int64)
        flat_vals = val_col.numpy(np.float64)
        off = ids_col.offsets
        voff = val_col.offsets

        def row(_key: object, i: int) -> tuple[tuple[int, ...], np.ndarray]:
            ids = tuple(flat_ids[off[i] : off[i + 1]].tolist())
            return ids, flat_vals[voff[i] : voff[i + 1]]

        def pairs(i: int) -> tuple[tuple[int, float], ...]:
            ids, vals = row(None, i)
            return tuple(zip(ids, vals.tolist(), strict=True))

        def vocab(key: NeuronKey, i: int) -> VocabTokens:
            return VocabTokens(pairs(i), pairs(suppressed[key]))

        acts: dict[tuple[int, int, int], int] = {}
        attn: dict[tuple[int, int, int, int, int], int] = {}
        promoted: dict[NeuronKey, int] = {}
        suppressed: dict[NeuronKey, int] = {}
        cols = [table.column(c).to_pylist() for c in ("kind", "layer", "neuron", "head_layer")]
        head, ex = table.column("head").to_pylist(), table.column("example_id").to_pylist()
        good = ok.tolist()
        for i, (kind, layer, neuron, hl) in enumerate(zip(*cols, strict=True)):
            if not good[i]:
                continue
            h, e = head[i], ex[i]
            if kind == "activation" and e is not None:
                acts[(layer, neuron, e)] = i
            elif kind == "attention" and e is not None and hl is not None and h is not None:
                attn[(layer, neuron, hl, h, e)] = i
            elif kind == "promoted":
                promoted[(layer, neuron)] = i
            elif kind == "suppressed":
                suppressed[(layer, neuron)] = i
        # token text: only from well-formed rows
        keep = np.repeat(ok, n_ids)
        texts = tok_col.flat.filter(pa.array(np.repeat(ok, n_tok)))
        vocab_index = {k: i for k, i in promoted.items() if k in suppressed}
        return cls(
            _Rows(acts, row),
            _Rows(attn, row),
            _Rows(vocab_index, vocab),
            _Strings(flat_ids[keep], texts),
        )

    @classmethod
    def read(cls, run: RunDir) -> StoredViews | None:
        """The run's views table, or None when it has none (a run made before the table
        existed, or one stopped before the report stage) or it cannot be read."""
        if not run.has_table("views"):
            return None
        try:
            return cls.from_table(run.read_table("views"))
        except RunDirError as e:  # TableSchemaError included
            log.warning("views table of %s skipped: %s", run.path, e)
            return None

    def merged(self, other: StoredViews) -> StoredViews:
        """This table's rows with `other`'s added (other's win)."""
        return StoredViews(
            ChainMap(dict(other.activations), self.activations),  # type: ignore[arg-type]
            ChainMap(dict(other.attention), self.attention),  # type: ignore[arg-type]
            ChainMap(dict(other.vocab), self.vocab),  # type: ignore[arg-type]
            ChainMap(dict(other.strings), self.strings),  # type: ignore[arg-type]
        )

    def activation(self, key: NeuronKey, example: int, ids: Sequence[int]) -> np.ndarray | None:
        """The neuron's activation at each token of the prompt, if stored for these tokens."""
        got = self.activations.get((*key, example))
        return got[1] if got is not None and got[0] == tuple(ids) else None

    def head_attention(self, key: PairKey, example: int, ids: Sequence[int]) -> np.ndarray | None:
        """The head's attention from the last token of the prompt, if stored for these tokens."""
        got = self.attention.get((*key, example))
        return got[1] if got is not None and got[0] == tuple(ids) else None

    def vocab_of(self, key: NeuronKey, k: int) -> VocabTokens | None:
        """The neuron's first `k` promoted and suppressed tokens, if at least `k` are stored."""
        v = self.vocab.get(key)
        if v is None or min(len(v.promoted), len(v.suppressed)) < k:
            return None
        return VocabTokens(v.promoted[:k], v.suppressed[:k])

    def missing(self, scope: ViewScope, tokens: Mapping[int, Sequence[int]]) -> ViewScope:
        """What of `scope` the table does not hold (`tokens`: each example's token ids)."""
        neurons = {
            key: tuple(i for i in ids if self.activation(key, i, tokens.get(i, ())) is None)
            for key, ids in scope.neuron_prompts.items()
        }
        pairs = {
            key: tuple(i for i in ids if self.head_attention(key, i, tokens.get(i, ())) is None)
            for key, ids in scope.pair_prompts.items()
        }
        vocab = tuple(
            k for k in scope.vocab_neurons if scope.k > 0 and self.vocab_of(k, scope.k) is None
        )
        return ViewScope(
            {k: v for k, v in neurons.items() if v},
            {k: v for k, v in pairs.items() if v},
            vocab,
            scope.k,
        )

    def model_views(self, scope: ViewScope, tokens: Mapping[int, Sequence[int]]) -> ModelViews:
        """What the report shows under `scope`, as far as the table holds it."""
        activations: dict[int, np.ndarray] = {}
        for key, ids in scope.neuron_prompts.items():
            for i in ids:
                a = self.activation(key, i, tokens.get(i, ()))
                if a is not None:
                    activations[i] = a
        attention: dict[tuple[int, int, int], np.ndarray] = {}
        for pkey, ids in scope.pair_prompts.items():
            for i in ids:
                a = self.head_attention(pkey, i, tokens.get(i, ()))
                if a is not None:
                    attention[(i, pkey[2], pkey[3])] = a
        vocab: dict[NeuronKey, VocabTokens] = {}
        if scope.k > 0:
            for key in scope.vocab_neurons:
                v = self.vocab_of(key, scope.k)
                if v is not None:
                    vocab[key] = v
        return ModelViews(activations, attention, vocab)
