"""What was scanned: a streaming content hash of a tokenised corpus, its counts, and the
``corpus`` entry of run.json."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from lookuplens.corpus.spec import CorpusSpec, TokenizedDoc

__all__ = ["CorpusFingerprint", "CorpusHasher", "corpus_fingerprint", "corpus_meta"]


@dataclass(frozen=True)
class CorpusFingerprint:
    """What was scanned: a content hash and counts."""

    fingerprint: str
    """sha256 (hex) over each document's id, length and token ids, in order."""

    documents: int
    """Number of tokenised documents."""

    tokens: int
    """Number of tokens, BOS included."""


class CorpusHasher:
    """Streaming corpus fingerprint; feed it every :class:`TokenizedDoc` in order."""

    _DOMAIN = b"lookuplens-corpus-v1\0"

    def __init__(self) -> None:
        self._hash = hashlib.sha256(self._DOMAIN)
        self.documents = 0
        self.tokens = 0

    def update(self, doc: TokenizedDoc) -> None:
        """Add one document (its id, length and tokens as little-endian int64)."""
        tokens = np.ascontiguousarray(doc.tokens, dtype="<i8")
        self._hash.update(struct.pack("<qq", int(doc.doc_id), len(tokens)))
        self._hash.update(tokens.tobytes())
        self.documents += 1
        self.tokens += len(tokens)

    def track(self, docs: Iterable[TokenizedDoc]) -> Iterator[TokenizedDoc]:
        """Pass ``docs`` through unchanged while hashing them (one pass for scan + hash)."""
        for doc in docs:
            self.update(doc)
            yield doc

    def hexdigest(self) -> str:
        """The fingerprint of the documents seen so far."""
        return self._hash.hexdigest()

    def result(self) -> CorpusFingerprint:
        """Fingerprint and counts of the documents seen so far."""
        return CorpusFingerprint(self.hexdigest(), self.documents, self.tokens)


def corpus_fingerprint(tokenized: Iterable[TokenizedDoc]) -> CorpusFingerprint:
    """Hash a whole tokenised corpus (see :class:`CorpusHasher`)."""
    hasher = CorpusHasher()
    for doc in tokenized:
        hasher.update(doc)
    return hasher.result()


def corpus_meta(spec: CorpusSpec, fingerprint: CorpusFingerprint) -> dict[str, object]:
    """The ``corpus`` entry of run.json: source, counts, fingerprint and reading options."""
    return {
        "source": spec.source,
        "documents": fingerprint.documents,
        "tokens": fingerprint.tokens,
        "fingerprint": fingerprint.fingerprint,
        "text_field": spec.text_field,
        "split": spec.split,
        "txt_mode": spec.txt_mode,
        "max_docs": spec.max_docs,
        "max_tokens": spec.max_tokens,
        "max_context": spec.max_context,
        "storyworld_docs": spec.storyworld_docs,
        "storyworld_seed": spec.storyworld_seed,
    }
