"""How big the corpus is, in the model's tokens: documents, tokens, and a sample of
document lengths (they decide the scan's padding and the prompts' lengths).

Measured where it can be: a local or bundled corpus is read and a sample of it tokenised
with the model's own tokenizer (when its folder holds one); without a tokenizer, lengths
are characters / 4. ``--corpus-tokens`` overrides the total; a streamed hub dataset with
no ``--corpus-tokens`` is assumed to have `DEFAULT_CORPUS_TOKENS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from lookuplens.corpus import CorpusSpec

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CORPUS_TOKENS", "CorpusProfile", "profile_corpus"]

SAMPLE_DOCS = 2000
"""Documents tokenised to measure lengths (the rest are counted, not tokenised)."""
COUNT_DOCS = 200_000
"""Documents counted at most; a larger local corpus is extrapolated from its file size."""
DEFAULT_CORPUS_TOKENS = 1_000_000
"""Assumed size of a corpus that cannot be read here (a streamed hub dataset)."""
STORYWORLD_DOC_S = 1.8e-4
"""Generating one storyworld document (the bundled corpus is generated, not read)."""
FILE_DOC_S = 2e-5
"""Reading one document of a local file."""
CHARS_PER_TOKEN = 4.0
"""Characters per token when no tokenizer is at hand (English BPE)."""
DEFAULT_DOC_TOKENS = 1024
"""Assumed document length where no document can be read."""


@dataclass(frozen=True)
class CorpusProfile:
    """What the scan will read."""

    docs: int
    tokens: int
    """Tokens scanned (BOS included), after the max_docs / max_tokens / context caps."""
    lengths: tuple[int, ...]
    """Token counts of a sample of documents (each cut at the context), in corpus order."""
    how: str
    """How it was measured, for the assumptions list."""
    source_docs: int = 0
    """Documents in the source before the max_tokens cap (the scan counts them all)."""
    doc_seconds: float = 2e-5
    """Reading (or generating) one document: the storyworld generator's are slower."""

    @property
    def mean_length(self) -> float:
        return sum(self.lengths) / max(len(self.lengths), 1)


def profile_corpus(
    spec: CorpusSpec, model_folder: Path | None, max_context: int, corpus_tokens: int | None
) -> CorpusProfile:
    """The `CorpusProfile` of `spec` for a model of `max_context` positions."""
    from lookuplens.corpus import iter_documents, iter_tokenized, source_kind
    from lookuplens.corpus.tokenization import effective_max_context

    limit = effective_max_context(spec.max_context, max_context) or max_context
    if source_kind(spec.source) == "hf":
        n = corpus_tokens or spec.max_tokens or DEFAULT_CORPUS_TOKENS
        how = "given" if corpus_tokens else "assumed (a hub dataset is not read here)"
        return _uniform(
            n,
            min(limit, DEFAULT_DOC_TOKENS),
            how + f"; documents assumed cut at {min(limit, DEFAULT_DOC_TOKENS)} tokens",
        )
    tokenizer = _tokenizer(model_folder)
    lengths: list[int] = []
    if tokenizer is not None:
        sample = islice(iter_tokenized(spec, tokenizer, max_context), SAMPLE_DOCS)
        lengths = [len(d.tokens) for d in sample]
        how = "tokenised with the model's tokenizer"
    else:
        for doc in islice(iter_documents(spec), SAMPLE_DOCS):
            lengths.append(min(limit, 1 + max(1, round(len(doc.text) / CHARS_PER_TOKEN))))
        how = f"characters / {CHARS_PER_TOKEN:g} (no tokenizer in the model folder)"
    if not lengths:
        return _uniform(corpus_tokens or DEFAULT_CORPUS_TOKENS, DEFAULT_DOC_TOKENS, "assumed")
    doc_s = STORYWORLD_DOC_S if source_kind(spec.source) == "storyworld" else FILE_DOC_S
    if len(lengths) < SAMPLE_DOCS:
        docs = len(lengths)
        tokens = sum(lengths)
        how += f", all {docs:,} documents"
        source_docs = docs if spec.max_tokens is None else _count_docs(spec)
    else:
        docs = source_docs = _count_docs(spec)
        tokens = round(sum(lengths) / len(lengths) * docs)
        how += (
            f", {len(lengths):,} of {docs:,} documents"
            if docs > len(lengths)
            else (f", all {docs:,} documents")
        )
    if spec.max_tokens is not None and tokens > spec.max_tokens:
        docs = max(1, round(docs * spec.max_tokens / tokens))
        tokens = spec.max_tokens
    if corpus_tokens:
        docs = max(1, round(docs * corpus_tokens / max(tokens, 1)))
        tokens = corpus_tokens
        how = f"--corpus-tokens {corpus_tokens:,}; document lengths {how}"
    return CorpusProfile(
        docs=docs,
        tokens=tokens,
        lengths=tuple(lengths),
        how=how,
        source_docs=max(source_docs, docs),
        doc_seconds=doc_s,
    )


def _uniform(tokens: int, doc_len: int, how: str) -> CorpusProfile:
    docs = max(1, round(tokens / doc_len))
    lengths = (doc_len,) * min(docs, 64)
    return CorpusProfile(docs=docs, tokens=tokens, lengths=lengths, how=how, source_docs=docs)


def _count_docs(spec: CorpusSpec) -> int:
    from lookuplens.corpus import iter_documents

    n = sum(1 for _ in islice(iter_documents(spec), COUNT_DOCS))
    if n == COUNT_DOCS:
        path = Path(spec.source)
        if path.is_file():
            from itertools import islice as _islice

            read = sum(len(d.text.encode()) for d in _islice(iter_documents(spec), 2000))
            per_doc = read / 2000 if read else 1
            n = max(n, round(path.stat().st_size / per_doc))
    return n if spec.max_docs is None else min(n, spec.max_docs)


def _tokenizer(folder: Path | None) -> Any:
    """The model folder's tokenizer (local files only), or None."""
    if folder is None:
        return None
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((folder / n).is_file() for n in names):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # a broken or exotic tokenizer: fall back to characters
        log.debug("no tokenizer for the plan: %s", e)
        return None
