"""Measure a model on the storyworld: planted look-up accuracy and ordinary-token loss.

Every document is scored with the BOS token prepended (index 0 is ``<|endoftext|>``), the
project-wide rule. The prediction for a planted target at token index ``i`` is the
model's top-1 next token at index ``i - 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lookuplens.model.padding import pad_rows
from lookuplens.zoo.storyworld import (
    KINDS,
    Document,
    Kind,
    TokenAnnotation,
    encode_document,
    endoftext_id,
    token_positions,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedDocument:
    """A document's token ids (BOS first) and its annotations as token indices."""

    doc: Document
    ids: tuple[int, ...]
    planted: tuple[TokenAnnotation, ...]


@dataclass(frozen=True)
class Evaluation:
    """Held-out measurements of a storyworld model."""

    accuracy: dict[str, tuple[int, int]]
    """Per kind: (correct, total) top-1 predictions of the planted target."""
    by_target: dict[str, tuple[int, int]]
    """Article look-ups split by target (``" a"``, ``" an"``): (correct, total)."""
    ordinary_loss: float
    """Mean cross-entropy (nats) on every predicted token that is not a planted target."""
    ordinary_tokens: int
    n_docs: int

    def rate(self, kind: str) -> float:
        """Accuracy of one kind as a fraction (0.0 when it has no examples)."""
        correct, total = self.accuracy.get(kind, (0, 0))
        return correct / total if total else 0.0

    def as_json(self) -> dict[str, object]:
        """A JSON-serialisable summary."""
        return {
            "n_docs": self.n_docs,
            "accuracy": {
                k: {"correct": c, "total": t, "rate": c / t if t else None}
                for k, (c, t) in self.accuracy.items()
            },
            "article_by_target": {
                k: {"correct": c, "total": t, "rate": c / t if t else None}
                for k, (c, t) in self.by_target.items()
            },
            "ordinary_loss": self.ordinary_loss,
            "ordinary_tokens": self.ordinary_tokens,
        }


def encode_documents(
    docs: Sequence[Document], tokenizer: PreTrainedTokenizerBase, max_len: int | None = None
) -> list[EncodedDocument]:
    """Tokenise documents (BOS prepended); drops planted targets beyond ``max_len``."""
    out = []
    for doc in docs:
        ids = encode_document(doc, tokenizer)
        planted = token_positions(doc, tokenizer)
        if max_len is not None and len(ids) > max_len:
            ids = ids[:max_len]
            planted = [p for p in planted if p.target_index < max_len]
        out.append(EncodedDocument(doc, tuple(ids), tuple(planted)))
    return out


def _batches(items: Sequence[EncodedDocument], size: int) -> Iterator[list[EncodedDocument]]:
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
    for s in range(0, len(order), size):
        yield [items[i] for i in order[s : s + size]]


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[Document],
    batch_size: int = 64,
) -> Evaluation:
    """Top-1 accuracy at every planted target and the mean loss on all other tokens."""
    was_training = model.training
    model.eval()
    pad = endoftext_id(tokenizer)
    max_len = int(getattr(model.config, "n_positions", 0) or 0) or None
    encoded = encode_documents(docs, tokenizer, max_len)
    correct = dict.fromkeys(KINDS, 0)
    total = dict.fromkeys(KINDS, 0)
    by_target: dict[str, list[int]] = {" a": [0, 0], " an": [0, 0]}
    loss_sum, loss_n = 0.0, 0
    try:
        for batch in _batches(encoded, batch_size):
            ids, mask = pad_rows([e.ids for e in batch], pad, torch.bool)
            logits = model(input_ids=ids, attention_mask=mask.long()).logits.float()
            # Next-token loss on every real position; planted targets are excluded below.
            labels = ids[:, 1:].clone()
            keep = mask[:, 1:].clone()
            top = logits[:, :-1].argmax(-1)
            for b, e in enumerate(batch):
                for p in e.planted:
                    keep[b, p.predict_index] = False
                    ok = int(top[b, p.predict_index].item() == p.target_token_id)
                    correct[p.kind] += ok
                    total[p.kind] += 1
                    if p.kind == "article" and p.target in by_target:
                        by_target[p.target][0] += ok
                        by_target[p.target][1] += 1
            ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none")
            loss_sum += float(ce[keep].sum())
            loss_n += int(keep.sum())
    finally:
        model.train(was_training)
    return Evaluation(
        accuracy={k: (correct[k], total[k]) for k in KINDS},
        by_target={k: (v[0], v[1]) for k, v in by_target.items()},
        ordinary_loss=loss_sum / max(loss_n, 1),
        ordinary_tokens=loss_n,
        n_docs=len(docs),
    )


def planted_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, docs: Sequence[Document]
) -> dict[Kind, tuple[int, int]]:
    """Per kind, (correct, total) top-1 predictions of the planted target tokens.

    The prediction for a target at token index ``i`` (BOS at index 0) is the argmax of the
    logits at index ``i - 1``. :func:`evaluate` also gives the loss on ordinary tokens.
    """
    result = evaluate(model, tokenizer, docs).accuracy
    return {k: result[k] for k in KINDS}
