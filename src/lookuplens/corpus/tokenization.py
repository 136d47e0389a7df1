"""The one tokenisation rule, and a corpus tokenised by it.

The tokenisation rule
---------------------
Every stage turns text into tokens in exactly one way, :func:`tokenize`:

1. encode the text *without* the tokenizer's special tokens
   (``add_special_tokens=False``);
2. prepend one BOS token: ``tokenizer.bos_token_id``, else
   ``tokenizer.eos_token_id`` (GPT-2 style), else nothing (logged);
3. keep the first ``max_context`` tokens, BOS included.

:func:`iter_tokenized` applies the rule to a corpus, with
``max_context = min(spec.max_context, model maximum)`` and the corpus budgets
``max_docs`` and ``max_tokens``; it is a pure function of its inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Int64

from lookuplens.corpus.sources import iter_documents
from lookuplens.corpus.spec import CorpusSpec, TokenizedDoc

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = ["document_prefix_id", "effective_max_context", "iter_tokenized", "tokenize"]


def document_prefix_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token prepended to every document: BOS, else EOS, else None (no prefix).

    Never raises: a tokenizer without either gets documents with no prefix (compare
    `lookuplens.zoo.storyworld.endoftext_id`, which requires ``<|endoftext|>``)."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return None


def effective_max_context(spec_max: int | None, model_max: int | None) -> int | None:
    """The cut applied to each document: the smaller of the spec's and the model's limit."""
    limits = [m for m in (spec_max, model_max) if m is not None]
    return min(limits) if limits else None


def _warn_no_bos(tokenizer: PreTrainedTokenizerBase) -> None:
    logger.warning(
        "tokenizer %s has neither a BOS nor an EOS token; documents are tokenised "
        "without a leading BOS",
        getattr(tokenizer, "name_or_path", type(tokenizer).__name__) or type(tokenizer).__name__,
    )


def _encode(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    bos: int | None,
    max_context: int | None,
) -> list[np.ndarray]:
    if max_context is not None and max_context < 1:
        raise ValueError(f"max_context must be at least 1, got {max_context}")
    if not texts:
        return []
    encoded = tokenizer(
        list(texts),
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )["input_ids"]
    prefix = [] if bos is None else [bos]
    out: list[np.ndarray] = []
    for ids in encoded:
        arr = np.asarray(prefix + list(ids), dtype=np.int64)
        if max_context is not None:
            arr = arr[:max_context].copy()
        arr.flags.writeable = False
        out.append(arr)
    return out


def tokenize(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_context: int | None,
) -> list[Int64[np.ndarray, " pos"]]:
    """Apply the tokenisation rule to each text (see this module's docstring).

    Encodes without special tokens, prepends :func:`document_prefix_id` (if any) and keeps
    the first ``max_context`` tokens (BOS included; None keeps all). Returns read-only int64
    arrays.
    """
    bos = document_prefix_id(tokenizer)
    if bos is None:
        _warn_no_bos(tokenizer)
    return _encode(texts, tokenizer, bos, max_context)


def iter_tokenized(
    spec: CorpusSpec,
    tokenizer: PreTrainedTokenizerBase,
    max_context: int | None,
    batch_docs: int = 64,
) -> Iterator[TokenizedDoc]:
    """Tokenise the corpus in chunks of ``batch_docs`` documents, in corpus order.

    ``max_context`` is the model's maximum number of positions (None: no limit); each
    document is cut at ``min(spec.max_context, max_context)``. Stops after
    ``spec.max_docs`` documents or ``spec.max_tokens`` tokens (the document crossing
    the budget is cut to fit, and dropped if that would leave it no text token).
    Documents that encode to no tokens at all are skipped. Deterministic.
    """
    if batch_docs < 1:
        raise ValueError(f"batch_docs must be at least 1, got {batch_docs}")
    limit = effective_max_context(spec.max_context, max_context)
    bos = document_prefix_id(tokenizer)
    if bos is None:
        _warn_no_bos(tokenizer)
    n_prefix = 0 if bos is None else 1
    total = 0
    docs = iter_documents(spec)
    while True:
        chunk = list(islice(docs, batch_docs))
        if not chunk:
            return
        arrays = _encode([d.text for d in chunk], tokenizer, bos, limit)
        for doc, tokens in zip(chunk, arrays, strict=True):
            if len(tokens) == 0:
                logger.debug("document %d encodes to no tokens; skipped", doc.doc_id)
                continue
            if spec.max_tokens is not None:
                remaining = spec.max_tokens - total
                if len(tokens) >= remaining:
                    if remaining > n_prefix:
                        yield TokenizedDoc(doc.doc_id, tokens[:remaining])
                    return
            total += len(tokens)
            yield TokenizedDoc(doc.doc_id, tokens)
