"""Corpus sources, the one tokenisation rule, batching and fingerprints.

- `lookuplens.corpus.spec`: `CorpusSpec` (which corpus, how much of it) and the records
  `Document`, `TokenizedDoc`, `Batch`;
- `lookuplens.corpus.sources`: the sources a `CorpusSpec` may name (.txt, .jsonl,
  .parquet, the bundled storyworld, Hugging Face datasets) and `iter_documents`, with
  the document id rule;
- `lookuplens.corpus.tokenization`: the tokenisation rule every stage uses (`tokenize`)
  and `iter_tokenized`;
- `lookuplens.corpus.batching`: `make_batches`;
- `lookuplens.corpus.fingerprint`: `CorpusHasher`, `corpus_fingerprint`, `corpus_meta`.

Import the names from ``lookuplens.corpus``.
"""

from __future__ import annotations

from lookuplens.corpus.batching import make_batches
from lookuplens.corpus.fingerprint import (
    CorpusFingerprint,
    CorpusHasher,
    corpus_fingerprint,
    corpus_meta,
)
from lookuplens.corpus.sources import iter_documents, source_kind
from lookuplens.corpus.spec import Batch, CorpusSpec, Document, SourceKind, TokenizedDoc
from lookuplens.corpus.tokenization import (
    document_prefix_id,
    effective_max_context,
    iter_tokenized,
    tokenize,
)

__all__ = [
    "Batch",
    "CorpusFingerprint",
    "CorpusHasher",
    "CorpusSpec",
    "Document",
    "SourceKind",
    "TokenizedDoc",
    "corpus_fingerprint",
    "corpus_meta",
    "document_prefix_id",
    "effective_max_context",
    "iter_documents",
    "iter_tokenized",
    "make_batches",
    "source_kind",
    "tokenize",
]
