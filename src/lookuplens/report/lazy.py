"""The run directory's two large tables, ``attributions`` and ``labels``, read a neuron at
a time.

On a 7-8B model a run holds tens of millions of attribution rows and millions of labels;
the report and the dashboard show a few neurons and pairs at a time. `NeuronTables`
never reads either table whole: a neuron's mean attributions come from the small
``attribution_means`` table (the attribute stage writes it) and its labels from a read of
``labels.parquet`` filtered on (layer, neuron), which the sorted files of this version
answer from a few row groups (see `lookuplens.store.TABLE_SORT`). Both are kept in a
small bounded LRU. For a run directory written before ``attribution_means`` existed, the
means are computed once, a record batch at a time (`stream_attribution_means`), and kept
(they are a few per neuron and head); an unsorted labels table is scanned per neuron,
which is slower but bounded in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lookuplens.errors import RunDirError
from lookuplens.store import RunDir
from lookuplens.store.means import attribution_means, stream_attribution_means, top_example_ids

log = logging.getLogger(__name__)

__all__ = ["LRU", "HeadMeans", "MeansByNeuron", "NeuronTables"]

NeuronKey = tuple[int, int]
HeadKey = tuple[int, int]
PairKey = tuple[int, int, int, int]
HeadMeans = dict[HeadKey, dict[str, float]]
"""(head_layer, head) -> method -> mean attribution, for one neuron."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

NEURONS_CACHED = 64
"""Neurons whose means and labels each LRU keeps."""


class LRU(Generic[K, V]):
    """A bounded least-recently-used cache, safe to share across threads."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"an LRU holds at least one entry, got size {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, build: Callable[[], V]) -> V:
        """The value of `key`, built (outside the lock) and kept when it is not held."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = build()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


def _head_means(means: pa.Table) -> HeadMeans:
    out: HeadMeans = {}
    for hl, h, m, v in zip(
        means.column("head_layer").to_pylist(),
        means.column("head").to_pylist(),
        means.column("method").to_pylist(),
        means.column("mean").to_pylist(),
        strict=True,
    ):
        out.setdefault((int(hl), int(h)), {})[str(m)] = float(v)
    return out


class NeuronTables:
    """A run's attributions (as means per neuron, head and method) and labels, read a
    neuron at a time and cached (`NEURONS_CACHED` neurons each)."""

    def __init__(
        self,
        run: RunDir,
        examples: pd.DataFrame | None,
        cache_neurons: int = NEURONS_CACHED,
    ) -> None:
        self.run = run
        self._top = top_example_ids(examples)
        self.problems: dict[str, str] = {}
        self.has_attributions = self._check("attributions")
        self.has_labels = self._check("labels")
        self.means_table = self.has_attributions and self._means_table_ok()
        self._computed: pa.Table | None = None  # the streamed means (no means table)
        self._computed_index: dict[NeuronKey, tuple[int, int]] = {}
        self._summary: (
            tuple[tuple[str, ...], dict[NeuronKey, HeadKey], frozenset[NeuronKey]] | None
        ) = None
        self._summary_lock = threading.Lock()
        self.means_cache: LRU[NeuronKey, HeadMeans] = LRU(cache_neurons)
        self.labels_cache: LRU[NeuronKey, pd.DataFrame] = LRU(cache_neurons)

    def _check(self, name: str) -> bool:
        if not self.run.has_table(name):
            return False
        try:
            self.run.table_info(name)
        except RunDirError as e:  # TableSchemaError included
            log.warning("skipping table %s: %s", name, e)
            self.problems[name] = str(e)
            return False
        return True

    def _means_table_ok(self) -> bool:
        if not self.run.has_table("attribution_means"):
            log.info(
                "%s has no attribution_means table (written since 2026-12-05): the means "
                "are computed from attributions.parquet once, a batch at a time",
                self.run.path,
            )
            return False
        try:
            self.run.table_info("attribution_means")
        except RunDirError as e:
            log.warning("attribution_means unreadable (%s): computing the means instead", e)
            return False
        return True

    # ------------------------------------------------------------------ means

    def _computed_means(self) -> pa.Table:
        """The streamed means of every neuron (computed once, for runs without the means
        table), with each neuron's row range."""
        with self._summary_lock:
            if self._computed is None:
                t0 = time.perf_counter()
                table = stream_attribution_means(self.run, self._top)
                index: dict[NeuronKey, tuple[int, int]] = {}
                layers = table.column("layer").to_numpy()
                neurons = table.column("neuron").to_numpy()
                start = 0
                for i in range(1, len(layers) + 1):
                    if (
                        i == len(layers)
                        or layers[i] != layers[start]
                        or neurons[i] != neurons[start]
                    ):
                        index[(int(layers[start]), int(neurons[start]))] = (start, i)
                        start = i
                self._computed, self._computed_index = table, index
                log.info(
                    "computed %d attribution means of %s in %.1f s",
                    table.num_rows,
                    self.run.path,
                    time.perf_counter() - t0,
                )
            return self._computed

    def _read_means(self, layer: int, neuron: int) -> pa.Table:
        if self.means_table:
            return self.run.read_neuron("attribution_means", layer, neuron)
        table = self._computed_means()
        start, stop = self._computed_index.get((layer, neuron), (0, 0))
        return table.slice(start, stop - start)

    def head_means(self, layer: int, neuron: int) -> HeadMeans:
        """The neuron's mean attribution per upstream head and method (empty without
        attributions)."""
        if not self.has_attributions:
            return {}
        return self.means_cache.get(
            (layer, neuron), lambda: _head_means(self._read_means(layer, neuron))
        )

    def _summarise(
        self,
    ) -> tuple[tuple[str, ...], dict[NeuronKey, HeadKey], frozenset[NeuronKey]]:
        """The methods present, each neuron's head of largest mean ``direct`` attribution
        (ties: the later head) and the neurons with means, from a pass over the means."""
        if self._summary is not None:
            return self._summary
        methods: set[str] = set()
        neurons: set[NeuronKey] = set()
        direct: list[pa.Table] = []
        cols = ["layer", "neuron", "head_layer", "head", "method", "mean"]
        if self.has_attributions:
            if self.means_table:
                batches: Iterable[pa.RecordBatch] = self.run.scan_table("attribution_means", cols)
            else:
                batches = self._computed_means().select(cols).to_batches()
            for batch in batches:
                t = pa.Table.from_batches([batch])
                methods.update(str(m) for m in pc.unique(t.column("method")).to_pylist())
                keys = t.select(["layer", "neuron"]).group_by(["layer", "neuron"]).aggregate([])
                neurons.update(
                    zip(keys.column(0).to_pylist(), keys.column(1).to_pylist(), strict=True)
                )
                direct.append(t.filter(pc.equal(t.column("method"), "direct")))
        top: dict[NeuronKey, HeadKey] = {}
        if direct:
            d = pa.concat_tables(direct).to_pandas()
            d = d.sort_values(
                ["layer", "neuron", "mean", "head_layer", "head"],
                ascending=[True, True, False, False, False],
                kind="stable",
            ).drop_duplicates(["layer", "neuron"])
            for a, b, hl, h in zip(d.layer, d.neuron, d.head_layer, d["head"], strict=True):
                top[(int(a), int(b))] = (int(hl), int(h))
        with self._summary_lock:
            self._summary = (tuple(sorted(methods)), top, frozenset(neurons))
        return self._summary

    def methods(self) -> tuple[str, ...]:
        """The attribution methods present (sorted by name)."""
        return self._summarise()[0]

    def top_heads(self) -> dict[NeuronKey, HeadKey]:
        """(layer, neuron) -> its upstream head with the largest mean ``direct``
        attribution, for every neuron that has one."""
        return self._summarise()[1]

    def neurons(self) -> frozenset[NeuronKey]:
        """The neurons that have attribution means."""
        return self._summarise()[2]

    def means_frame(self, keys: Iterable[NeuronKey]) -> pd.DataFrame:
        """The means of the neurons `keys`, as the rows of the ``attribution_means``
        table (columns layer, neuron, head_layer, head, method, mean, n)."""
        parts = [self._read_means(a, b) for a, b in dict.fromkeys(keys)]
        if not parts:
            return pd.DataFrame(
                columns=["layer", "neuron", "head_layer", "head", "method", "mean", "n"]
            )
        return pa.concat_tables(parts).to_pandas()

    # ------------------------------------------------------------------ labels

    def _read_labels(self, layer: int, neuron: int) -> pd.DataFrame:
        cols = ["example_id", "head_layer", "head", "active"]
        return self.run.read_neuron("labels", layer, neuron, cols).to_pandas()

    def neuron_labels(self, layer: int, neuron: int) -> pd.DataFrame:
        """The neuron's labels (columns example_id, head_layer, head, active), in the
        table's order; empty without a labels table."""
        if not self.has_labels:
            return pd.DataFrame(columns=["example_id", "head_layer", "head", "active"])
        return self.labels_cache.get((layer, neuron), lambda: self._read_labels(layer, neuron))

    def pair_labels(self, layer: int, neuron: int, head_layer: int, head: int) -> dict[int, bool]:
        """example_id -> whether the head is active on it, for every labelled prompt of
        the pair (a later row of the same prompt wins, as in a dict built from the table)."""
        lab = self.neuron_labels(layer, neuron)
        lab = lab[(lab.head_layer == head_layer) & (lab["head"] == head)]
        return dict(zip(lab.example_id.astype(int), lab.active.astype(bool), strict=True))

    def labels_of_pairs(self, keys: Iterable[PairKey]) -> dict[PairKey, dict[int, bool]]:
        """:meth:`pair_labels` of many pairs, each neuron's labels read once (and offered
        to the LRU). Pairs without labels are left out."""
        by_neuron: dict[NeuronKey, list[HeadKey]] = {}
        for a, b, hl, h in keys:
            by_neuron.setdefault((a, b), []).append((hl, h))
        out: dict[PairKey, dict[int, bool]] = {}
        if not self.has_labels:
            return out
        for (a, b), heads in by_neuron.items():
            lab = self.neuron_labels(a, b)
            wanted = set(heads)
            for (hl, h), g in lab.groupby(["head_layer", "head"], sort=False):
                if (int(hl), int(h)) in wanted:
                    out[(a, b, int(hl), int(h))] = dict(
                        zip(g.example_id.astype(int), g.active.astype(bool), strict=True)
                    )
        return out


class MeansByNeuron(Mapping[NeuronKey, HeadMeans]):
    """(layer, neuron) -> its `HeadMeans`, read on first use (`NeuronTables.head_means`)."""

    def __init__(self, tables: NeuronTables | None) -> None:
        self._tables = tables

    def __getitem__(self, key: NeuronKey) -> HeadMeans:
        got = self._tables.head_means(*key) if self._tables is not None else {}
        if not got:
            raise KeyError(key)
        return got

    def __iter__(self) -> Iterator[NeuronKey]:
        return iter(sorted(self._tables.neurons()) if self._tables is not None else ())

    def __len__(self) -> int:
        return len(self._tables.neurons()) if self._tables is not None else 0


def eager_means(table: pa.Table, examples: pd.DataFrame | None) -> pd.DataFrame:
    """The means of a whole attributions table in memory (tests compare the lazy reads
    with it)."""
    return attribution_means(table, top_example_ids(examples)).to_pandas()
