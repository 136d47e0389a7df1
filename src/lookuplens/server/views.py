"""What the dashboard's neuron and pair pages show from the model: per-prompt activations,
each pair's attention from the firing position, and the promoted and suppressed tokens.

They are read from the run's ``views`` table (written by the report stage, see
`lookuplens.report.views`), so these pages never load the model. Only what the table
lacks goes to the model (`ModelWorker`, loaded on first use): everything for a run
directory made before the table existed, and for newer ones the pages the report stage
does not store (a pair that was not kept, a neuron outside the tracked ones, more
vocabulary tokens than it keeps).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

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
        self.stored = StoredViews.read(data.run)
        self._told = False

    def _to_model(self, what: str) -> None:
        """Log (once at INFO, then at DEBUG) that the model computes `what`."""
        if self.stored is None:
            line = (
                "dashboard: %s has no views table (made before it existed): the model is "
                "loaded to compute %s"
            )
            args: tuple[object, ...] = (self.data.run.path, what)
        else:
            line, args = "dashboard: the views table lacks %s: the model computes it", (what,)
        log.log(logging.DEBUG if self._told else logging.INFO, line, *args)
        self._told = True

    def _stored_values(self, ids: Sequence[int], values: Sequence[float], i: int) -> TokenValues:
        assert self.stored is not None
        strings = tuple(self.stored.strings[int(t)] for t in ids)
        return TokenValues(i, tuple(int(t) for t in ids), strings, tuple(values))

    async def activations(self, layer: int, neuron: int, ids: Sequence[int]) -> list[TokenValues]:
        """The neuron's activation at every token of each prompt `ids`."""
        out: dict[int, TokenValues] = {}
        todo: list[tuple[int, list[int]]] = []
        for i in ids:
            tokens = self.data.example_tokens(i)
            got = self.stored.activation((layer, neuron), i, tokens) if self.stored else None
            if got is None:
                todo.append((i, tokens))
            else:
                out[i] = self._stored_values(tokens, got.tolist(), i)
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
        for i in ids:
            tokens = self.data.example_tokens(i)
            got = self.stored.head_attention(key, i, tokens) if self.stored else None
            if got is None:
                todo.append((i, tokens))
            else:
                out[i] = self._stored_values(tokens, got.tolist(), i)
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
        v = self.stored.vocab_of((layer, neuron), k) if self.stored else None
        if v is None:
            self._to_model(f"the vocabulary of L{layer}N{neuron}")
            return await self.worker.call(self.worker.vocab, layer, neuron, k, self.mode)
        text = self.stored.strings if self.stored else {}
        return {
            "promoted": [(i, text[i], c) for i, c in v.promoted],
            "suppressed": [(i, text[i], c) for i, c in v.suppressed],
        }
