"""The worker actor: loads the model once, then scans shards and attributes batches.

`ShardWorker` is a plain class; the backend wraps it with ``ray.remote`` when it starts
the workers, so importing this module needs no Ray. Subclass it to change how a worker
loads its model or to instrument it, and pass the subclass as ``worker_class``.

A worker keeps no state between calls beyond its model (and a cache derived from the
call arguments), so a restarted worker (Ray reruns the constructor) serves any shard.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from lookuplens.attribute import (
    AttributeConfig,
    Attributor,
    ExampleBatch,
    attribute_batch,
    head_means,
)
from lookuplens.corpus import TokenizedDoc
from lookuplens.model import LoadedModel, load_model, pad_id
from lookuplens.scan import NeuronReader, ScanConfig, bound_native_heap, scan_shard

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads, and how it runs."""

    model: str
    """Model folder or hub id; it must be loadable on every node of the cluster."""
    device: str
    """``cpu`` or ``cuda`` (the GPU Ray assigned to the worker)."""
    dtype: str
    """float32, bfloat16, float16 or auto."""
    threads: int
    """torch CPU threads of the worker."""


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs."""

    pid: int
    host: str
    device: str
    dtype: str


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs to tokenise the corpus exactly as the workers' model does."""

    tokenizer: PreTrainedTokenizerBase
    max_context: int


@dataclass(frozen=True, eq=False)
class TokenShard:
    """One shard of tokenised documents, packed into three numpy arrays for transfer."""

    doc_ids: np.ndarray
    """``[docs]`` int64 document ids, in corpus order."""
    offsets: np.ndarray
    """``[docs + 1]`` int64 start of each document in `tokens`."""
    tokens: np.ndarray
    """``[tokens]`` int64 token ids of every document, concatenated."""

    @classmethod
    def pack(cls, docs: Sequence[TokenizedDoc]) -> TokenShard:
        lengths = np.array([len(d.tokens) for d in docs], dtype=np.int64)
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = (
            np.concatenate([np.asarray(d.tokens, dtype=np.int64) for d in docs])
            if docs
            else np.zeros(0, dtype=np.int64)
        )
        return cls(np.array([d.doc_id for d in docs], dtype=np.int64), offsets, tokens)

    def docs(self) -> list[TokenizedDoc]:
        """The documents, as `iter_tokenized` yielded them."""
        out = []
        for j, doc_id in enumerate(self.doc_ids.tolist()):
            t = self.tokens[self.offsets[j] : self.offsets[j + 1]]
            t.flags.writeable = False
            out.append(TokenizedDoc(int(doc_id), t))
        return out

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


_ReaderKey = tuple[tuple[tuple[int, int], ...], tuple[int, ...] | None]
"""The neurons a scan reads, and their tokens (`lookuplens.scan.NeuronReader`)."""


class ShardWorker:
    """One model copy on one device (see the module docstring)."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        self.spec = spec
        self._error: BaseException | None = None
        self._lm: LoadedModel | None = None
        self._readers: dict[_ReaderKey, NeuronReader] = {}
        torch.set_num_threads(max(1, spec.threads))
        try:
            self._lm = self.load()
        except Exception as e:  # raised again by each call, as a typed task error
            self._error = e

    def load(self) -> LoadedModel:
        """Load the model (override to load it differently)."""
        return load_model(self.spec.model, device=self.spec.device, dtype=self.spec.dtype)

    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            assert self._error is not None
            raise self._error
        return self._lm

    def info(self) -> WorkerInfo:
        """Where this worker runs (also raises a model loading error)."""
        lm = self.lm
        return WorkerInfo(os.getpid(), socket.gethostname(), str(lm.device), str(lm.dtype))

    def model_info(self) -> ModelInfo:
        return ModelInfo(self.lm.tokenizer, self.lm.max_context)

    def scan(
        self,
        index: int,
        shard: TokenShard,
        neurons: tuple[tuple[int, int], ...],
        cfg: ScanConfig,
        tokens: tuple[int, ...] | None = None,
    ) -> pa.Table:
        """Shard `index`'s partial scan result (`lookuplens.scan.scan_shard`)."""
        reader = self._readers.get((neurons, tokens))
        if reader is None:
            reader = self._readers[(neurons, tokens)] = NeuronReader(self.lm, neurons, tokens)
        if cfg.bound_heap:  # the worker process's memory, as in a local scan
            bound_native_heap()
        return scan_shard(reader, shard.docs(), cfg, pad_id(self.lm))

    def head_means(self, prompts: list[list[int]], max_layer: int, batch: int) -> dict[int, Tensor]:
        """`lookuplens.attribute.head_means`, on the CPU for transfer."""
        return {k: v.cpu() for k, v in head_means(self.lm, prompts, max_layer, batch).items()}

    def attribute(
        self,
        index: int,
        batch: ExampleBatch,
        cfg: AttributeConfig,
        means: dict[int, Tensor] | None,
    ) -> pa.Table:
        """Attribution batch `index`'s table (`lookuplens.attribute.attribute_batch`)."""
        lm = self.lm
        dev = None if means is None else {k: v.to(lm.device) for k, v in means.items()}
        return attribute_batch(Attributor(lm, cfg, dev), batch)
