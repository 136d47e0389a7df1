"""What the dashboard's neuron and pair pages show from the model: per-prompt activations,
each pair's attention from the firing position, and the promoted and suppressed tokens.

They are read from the run's ``views`` table (written by the report stage, see
`lookuplens.report.views`), a neuron at a time (a filtered read, kept in a small LRU: a
run on a large model stores tens of thousands of prompts), so these pages never load the
model. Only what the table
lacks goes to the model (`ModelWorker`, loaded on first use): everything for a run
directory made before the table existed, and for newer ones the pages the report stage
does not store (a pair that was not kept, a neuron outside the tracked ones, more
vocabulary tokens than it keeps).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from lookuplens.errors import RunDirError
from lookuplens.report.lazy import LRU, NEURONS_CACHED
from lookuplens.report.views import StoredViews
from lookuplens.server.data import RunData
from lookuplens.server.worker import ModelWorker, TokenValues

log = logging.getLogger(__name__)

__all__ = ["DashboardViews"]


class DashboardViews:
    """The views table of a run, with the model as the fallback for what it lacks."""

    def __init__(self, data: RunData, worker: ModelWorker, mode: Literal["folded", "raw"]) -> None:
        self.data = data
        self.worker = worker
        self.mode = mode
        self.has_table = _readable_views(data)
        self.cache: LRU[tuple[int, int], StoredViews] = LRU(NEURONS_CACHED)
        self._told = False

    def stored(self, layer: int, neuron: int) -> StoredViews | None:
        """The views table's rows of the neuron (None without a views table)."""
        if not self.has_table:
            return None
        run = self.data.run
        return self.cache.get(
            (layer, neuron),
            lambda: StoredViews.from_table(run.read_neuron("views", layer, neuron)),
        )

    def _to_model(self, what: str) -> None:
        """Log (once at INFO, then at DEBUG) that the model computes `what`."""
        if not self.has_table:
            line = (
                "dashboard: %s has no views table (made before it existed): the model is "
                "loaded to compute %s"
            )
            args: tuple[object, ...] = (self.data.run.path, what)
        else:
            line, args = "dashboard: the views table lacks %s: the model computes it", (what,)
        log.log(logging.DEBUG if self._told else logging.INFO, line, *args)
        self._told = True

    def _stored_values(
        self, stored: StoredViews, ids: Sequence[int], values: Sequence[float], i: int
    ) -> TokenValues:
        strings = tuple(stored.strings[int(t)] for t in ids)
        return TokenValues(i, tuple(int(t) for t in ids), strings, tuple(values))

    async def activations(self, layer: int, neuron: int, ids: Sequence[int]) -> list[TokenValues]:
        """The neuron's activation at every token of each prompt `ids`."""
        out: dict[int, TokenValues] = {}
        todo: list[tuple[int, list[int]]] = []
        stored = self.stored(layer, neuron)
        for i in ids:
            tokens = self.data.example_tokens(i)
            got = stored.activation((layer, neuron), i, tokens) if stored else None
            if got is None or stored is None:
                todo.append((i, tokens))
            else:
                out[i] = self._stored_values(stored, tokens, got.tolist(), i)
        if todo:
            self._to_model(f"the activations of L{layer}N{neuron}")
            w = self.worker
            for tv in await w.call(w.prompt_activations, layer, neuron, todo):
                out[tv.example_id] = tv
        return [out[i] for i in ids]

    async def attention(
        self, key: tuple[int, int, int, int], ids: Sequence[int]
    ) -> list[TokenValues]:
        """The head's attention from the last token of each prompt `ids` of the pair `key`
        (layer, neuron, head_layer, head)."""
        out: dict[int, TokenValues] = {}
        todo: list[tuple[int, list[int]]] = []
        stored = self.stored(key[0], key[1])
        for i in ids:
            tokens = self.data.example_tokens(i)
            got = stored.head_attention(key, i, tokens) if stored else None
            if got is None or stored is None:
                todo.append((i, tokens))
            else:
                out[i] = self._stored_values(stored, tokens, got.tolist(), i)
        if todo:
            layer, neuron, head_layer, head = key
            self._to_model(f"the attention of L{head_layer}H{head} for L{layer}N{neuron}")
            w = self.worker
            for tv in await w.call(w.prompt_attention, head_layer, head, todo):
                out[tv.example_id] = tv
        return [out[i] for i in ids]

    async def vocab(
        self, layer: int, neuron: int, k: int
    ) -> dict[str, list[tuple[int, str, float]]]:
        """The `k` tokens the neuron's output promotes and suppresses most."""
        stored = self.stored(layer, neuron)
        v = stored.vocab_of((layer, neuron), k) if stored else None
        if v is None or stored is None:
            self._to_model(f"the vocabulary of L{layer}N{neuron}")
            return await self.worker.call(self.worker.vocab, layer, neuron, k, self.mode)
        text = stored.strings
        return {
            "promoted": [(i, text[i], c) for i, c in v.promoted],
            "suppressed": [(i, text[i], c) for i, c in v.suppressed],
        }


def _readable_views(data: RunData) -> bool:
    """Whether the run has a views table with the format's columns (else the model
    computes everything, as for a run made before the table existed)."""
    if not data.run.has_table("views"):
        return False
    try:
        data.run.table_info("views")
    except RunDirError as e:  # TableSchemaError included
        log.warning("views table of %s skipped: %s", data.run.path, e)
        return False
    return True
