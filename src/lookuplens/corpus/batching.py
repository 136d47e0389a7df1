"""Consecutive tokenised documents packed into right-padded batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from lookuplens.corpus.spec import Batch, TokenizedDoc

__all__ = ["make_batches"]


def _collate(docs: list[TokenizedDoc], width: int, pad_id: int) -> Batch:
    import torch

    ids = np.full((len(docs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(docs), width), dtype=np.int64)
    for row, doc in enumerate(docs):
        n = len(doc.tokens)
        ids[row, :n] = doc.tokens
        mask[row, :n] = 1
    return Batch(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        doc_ids=tuple(d.doc_id for d in docs),
        lengths=tuple(len(d.tokens) for d in docs),
    )


def make_batches(
    tokenized_docs: Iterable[TokenizedDoc],
    max_batch_tokens: int,
    pad_id: int,
) -> Iterator[Batch]:
    """Pack consecutive documents, in order, into right-padded int64 batches.

    Each batch holds as many consecutive documents as fit ``rows * longest <=
    max_batch_tokens``; a single document longer than the budget gets a batch of its
    own (cut documents with ``max_context`` to avoid that).
    """
    if isinstance(max_batch_tokens, bool) or max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens}")
    pending: list[TokenizedDoc] = []
    width = 0
    for doc in tokenized_docs:
        n = len(doc.tokens)
        if n == 0:
            raise ValueError(f"document {doc.doc_id} has no tokens; drop it before batching")
        new_width = max(width, n)
        if pending and new_width * (len(pending) + 1) > max_batch_tokens:
            yield _collate(pending, width, pad_id)
            pending, new_width = [], n
        pending.append(doc)
        width = new_width
    if pending:
        yield _collate(pending, width, pad_id)
