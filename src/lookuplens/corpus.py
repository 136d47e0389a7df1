"""Corpus sources, the one tokenisation rule, batching and fingerprints.

Sources
-------
A :class:`CorpusSpec` names one source:

- a ``.txt`` file: one document per line (``txt_mode="line"``), or paragraphs
  separated by blank lines (``"paragraph"``); ``"auto"`` picks paragraphs when a
  blank line stands between two non-blank lines, else lines;
- a ``.jsonl`` file: one JSON object per line, the text in ``text_field``;
- a ``.parquet`` file: a string column ``text_field``;
- ``"storyworld"``: the bundled synthetic corpus (its held-out split);
- a Hugging Face dataset name, optionally ``hf:``-prefixed (``hf:NAME`` or
  ``hf:NAME:CONFIG``), streamed with the optional ``datasets`` package.

Document ids
------------
:func:`iter_documents` yields the non-blank documents in source order. Blank
documents (empty or whitespace-only text, or a null value in a jsonl, parquet or
Hugging Face column) are skipped, and ``doc_id`` is the 0-based index among the
*non-blank* documents, so ids are consecutive and stable for a given source.
For ``"storyworld"`` the generator's own ``doc_id`` is kept, so that its ground
truth lines up. Newlines inside a document are kept as they are.

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

import codecs
import hashlib
import json
import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from jaxtyping import Int64

from lookuplens.choices import check_choices
from lookuplens.errors import CorpusError

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "CorpusFingerprint",
    "CorpusHasher",
    "CorpusSpec",
    "Document",
    "SourceKind",
    "TokenizedDoc",
    "bos_id",
    "corpus_fingerprint",
    "corpus_meta",
    "effective_max_context",
    "iter_documents",
    "iter_tokenized",
    "make_batches",
    "source_kind",
    "tokenize",
]

SourceKind = Literal["txt", "jsonl", "parquet", "storyworld", "hf"]
TxtMode = Literal["auto", "line", "paragraph"]

_TXT_MODES: tuple[str, ...] = ("auto", "line", "paragraph")
_FILE_KINDS: dict[str, SourceKind] = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
# Suffixes that mark a source as meant to be a local file (so a missing one is
# reported as a missing file instead of being looked up on the Hugging Face Hub).
_FILE_LIKE_SUFFIXES = frozenset(
    {
        ".txt",
        ".text",
        ".jsonl",
        ".ndjson",
        ".json",
        ".parquet",
        ".csv",
        ".tsv",
        ".md",
        ".gz",
        ".bz2",
        ".xz",
        ".zst",
        ".arrow",
    }
)
_ACCEPTED = (
    ".txt (one document per line or per blank-line-separated paragraph), "
    ".jsonl (one JSON object per line) or .parquet (a string column)"
)


def _check_optional_int(name: str, value: int | None, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer or None, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum} (or None for no limit), got {value}")


@dataclass(frozen=True)
class CorpusSpec:
    """Which corpus to read, and how much of it."""

    source: str
    """A path to a .txt, .jsonl or .parquet file; "storyworld" for the bundled corpus;
    or a Hugging Face dataset name, optionally written "hf:NAME" or "hf:NAME:CONFIG"."""

    text_field: str = "text"
    """The field (jsonl), column (parquet) or feature (Hugging Face) holding the text."""

    split: str = "train"
    """The Hugging Face dataset split to stream."""

    txt_mode: TxtMode = "auto"
    """How a .txt file is cut into documents: "line" (one per line), "paragraph"
    (separated by blank lines) or "auto" (paragraphs if a blank line stands between two
    non-blank lines, else lines)."""

    max_docs: int | None = None
    """Stop after this many non-blank documents; None reads the whole source."""

    max_tokens: int | None = None
    """Stop after this many tokens in total (BOS included); the last document is cut
    to fit. None means no limit."""

    max_context: int | None = None
    """Cut each document at this many tokens, BOS included; None uses the model's
    maximum number of positions (passed in at tokenisation)."""

    storyworld_docs: int = 2000
    """How many documents the bundled storyworld generator writes."""

    storyworld_seed: int = 1
    """The storyworld generator's seed."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(
                "source must be a non-empty string: a .txt/.jsonl/.parquet path, "
                "'storyworld', or a Hugging Face dataset name"
            )
        if self.source.startswith("hf:") and not self.source[3:].split(":", 1)[0].strip():
            raise ValueError("source 'hf:' needs a dataset name after the prefix, e.g. 'hf:NAME'")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError("text_field must be a non-empty field name such as 'text'")
        if not isinstance(self.split, str) or not self.split:
            raise ValueError("split must be a non-empty split name such as 'train'")
        if self.txt_mode not in _TXT_MODES:
            raise ValueError(
                f"txt_mode must be one of {', '.join(_TXT_MODES)}, got {self.txt_mode!r}"
            )
        _check_optional_int("max_docs", self.max_docs, 1)
        _check_optional_int("max_tokens", self.max_tokens, 1)
        _check_optional_int("max_context", self.max_context, 2)
        _check_optional_int("storyworld_docs", self.storyworld_docs, 1)
        if isinstance(self.storyworld_seed, bool) or not isinstance(self.storyworld_seed, int):
            raise ValueError(f"storyworld_seed must be an integer, got {self.storyworld_seed!r}")


@dataclass(frozen=True)
class Document:
    """One non-blank document of a corpus, in source order."""

    doc_id: int
    """0-based index among the source's non-blank documents (stable for a source)."""

    text: str
    """The document's text, inner newlines kept as they are."""


@dataclass(frozen=True, eq=False)
class TokenizedDoc:
    """A document after the tokenisation rule (BOS first, cut at max_context)."""

    doc_id: int
    """The :class:`Document`'s id."""

    tokens: Int64[np.ndarray, " pos"]
    """Token ids, int64, read-only."""


@dataclass(frozen=True, eq=False)
class Batch:
    """Consecutive documents packed into right-padded tensors."""

    input_ids: Int64[Tensor, "batch pos"]
    """Token ids, right-padded with the pad id."""

    attention_mask: Int64[Tensor, "batch pos"]
    """1 on real tokens, 0 on padding."""

    doc_ids: tuple[int, ...]
    """The document id of each row, in corpus order."""

    lengths: tuple[int, ...]
    """The number of real tokens in each row."""

    @property
    def n_tokens(self) -> int:
        """Real (unpadded) tokens in the batch."""
        return sum(self.lengths)


# --------------------------------------------------------------------------- sources


def _looks_like_path(source: str) -> bool:
    if source.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in source:
        return True
    return Path(source).suffix.lower() in _FILE_LIKE_SUFFIXES


def source_kind(source: str) -> SourceKind:
    """Which kind of source ``source`` names (checks the file system for paths).

    Raises CorpusError for a missing file, a directory or an unknown extension.
    """
    if source == "storyworld":
        return "storyworld"
    if source.startswith("hf:"):
        return "hf"
    path = Path(source).expanduser()
    if path.is_dir():
        raise CorpusError(f"corpus source {source} is a directory; pass one file: {_ACCEPTED}")
    if path.is_file():
        kind = _FILE_KINDS.get(path.suffix.lower())
        if kind is None:
            raise CorpusError(
                f"corpus file {source} has extension {path.suffix or '(none)'!r}, which "
                f"lookuplens cannot read; convert it to {_ACCEPTED}"
            )
        return kind
    if _looks_like_path(source):
        raise CorpusError(
            f"corpus file {source} does not exist; pass an existing {_ACCEPTED}, "
            "'storyworld' for the bundled corpus, or a Hugging Face dataset name (hf:NAME)"
        )
    return "hf"


def _iter_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line including its terminator), UTF-8 checked."""
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start = 0
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                start = len(codecs.BOM_UTF8)
            try:
                text = raw[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                bad = offset + start + e.start
                raise CorpusError(
                    f"corpus file {path} is not UTF-8: invalid byte 0x{raw[start + e.start]:02x} "
                    f"at byte offset {bad} (line {lineno}); re-encode it as UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`"
                ) from None
            offset += len(raw)
            yield lineno, text


def _strip_terminator(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line


def _has_inner_blank_line(path: Path) -> bool:
    seen_text = False
    pending_blank = False
    for _, line in _iter_text_lines(path):
        if line.strip():
            if pending_blank:
                return True
            seen_text = True
        elif seen_text:
            pending_blank = True
    return False


def _iter_txt(path: Path, mode: TxtMode) -> Iterator[str]:
    if mode == "auto":
        mode = "paragraph" if _has_inner_blank_line(path) else "line"
        logger.debug("corpus %s: txt_mode auto chose %s", path, mode)
    if mode == "line":
        for _, line in _iter_text_lines(path):
            yield _strip_terminator(line)
        return
    buffer: list[str] = []
    for _, line in _iter_text_lines(path):
        if line.strip():
            buffer.append(line)
        elif buffer:
            yield _strip_terminator("".join(buffer))
            buffer = []
    if buffer:
        yield _strip_terminator("".join(buffer))


def _text_value(value: object, where: str, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise CorpusError(
        f"{where}: field {field!r} holds a {type(value).__name__}, not a string; "
        "set text_field to the field that holds the document text"
    )


def _iter_jsonl(path: Path, field: str) -> Iterator[str | None]:
    for lineno, line in _iter_text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(
                f"corpus file {path} line {lineno} is not valid JSON ({e.msg} at column "
                f"{e.colno}); each line must be one JSON object such as "
                f'{{"{field}": "..."}}'
            ) from None
        if not isinstance(record, dict):
            raise CorpusError(
                f"corpus file {path} line {lineno} is a JSON {type(record).__name__}, not an "
                f'object; each line must be one JSON object such as {{"{field}": "..."}}'
            )
        if field not in record:
            fields = ", ".join(repr(k) for k in record) or "none"
            raise CorpusError(
                f"corpus file {path} line {lineno} has no field {field!r} (its fields: "
                f"{fields}); set text_field to the field that holds the document text"
            )
        yield _text_value(record[field], f"corpus file {path} line {lineno}", field)


def _iter_parquet(path: Path, field: str) -> Iterator[str | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(
            f"corpus file {path} is not a readable parquet file ({e}); "
            "check the file or convert it to .jsonl or .txt"
        ) from None
    names = pf.schema_arrow.names
    if field not in names:
        raise CorpusError(
            f"parquet file {path} has no column {field!r} (its columns: "
            f"{', '.join(repr(n) for n in names) or 'none'}); set text_field to the column "
            "that holds the document text"
        )
    col_type = pf.schema_arrow.field(field).type
    if pa.types.is_dictionary(col_type):
        col_type = col_type.value_type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise CorpusError(
            f"parquet file {path} column {field!r} has type {col_type}, not string; "
            "set text_field to the column that holds the document text"
        )
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        yield from batch.column(0).to_pylist()


def _iter_storyworld(spec: CorpusSpec) -> Iterator[tuple[int, str]]:
    try:
        from lookuplens.zoo.storyworld import iter_corpus
    except ModuleNotFoundError as e:
        if e.name not in ("lookuplens.zoo", "lookuplens.zoo.storyworld"):
            raise
        raise CorpusError(
            "the bundled storyworld corpus is not available in this installation "
            "(lookuplens.zoo.storyworld is missing); reinstall lookuplens or pass a corpus file"
        ) from e
    for doc in iter_corpus(spec.storyworld_docs, spec.storyworld_seed, split="heldout"):
        yield int(doc.doc_id), str(doc.text)


def _iter_hf(spec: CorpusSpec) -> Iterator[str | None]:
    name = spec.source[3:] if spec.source.startswith("hf:") else spec.source
    config: str | None = None
    if spec.source.startswith("hf:") and ":" in name:
        name, config = name.split(":", 1)
    hint = (
        ""
        if spec.source.startswith("hf:")
        else f" ('{spec.source}' is not a local file, so it was read as a dataset name)"
    )
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"reading the Hugging Face dataset {name!r}{hint} needs the optional 'datasets' "
            "package: pip install 'lookuplens[datasets]', or pass a local .txt, .jsonl or "
            ".parquet file"
        ) from None
    where = f"Hugging Face dataset {name!r} (split {spec.split!r})"
    try:
        dataset = datasets.load_dataset(name, config, split=spec.split, streaming=True)
        rows = iter(dataset)
    except Exception as e:
        raise CorpusError(
            f"the {where}{hint} cannot be fetched ({type(e).__name__}: {e}); check the name "
            "and split and that the network is reachable, or pass a local .txt, .jsonl or "
            ".parquet file instead"
        ) from e
    index = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:
            raise CorpusError(
                f"the {where} stopped after {index} rows ({type(e).__name__}: {e}); check the "
                "network, or pass a local .txt, .jsonl or .parquet file instead"
            ) from e
        if not isinstance(row, dict) or spec.text_field not in row:
            fields = ", ".join(repr(k) for k in row) if isinstance(row, dict) else "none"
            raise CorpusError(
                f"the {where} has no feature {spec.text_field!r} (its features: {fields}); "
                "set text_field to the feature that holds the document text"
            )
        yield _text_value(row[spec.text_field], f"the {where} row {index}", spec.text_field)
        index += 1


def _describe(spec: CorpusSpec) -> str:
    return "the storyworld corpus" if spec.source == "storyworld" else f"corpus {spec.source}"


def iter_documents(spec: CorpusSpec) -> Iterator[Document]:
    """Yield the corpus's non-blank documents in source order (at most ``spec.max_docs``).

    Blank documents are skipped; ``doc_id`` counts non-blank documents from 0 (the
    storyworld generator's own ids are kept). Raises CorpusError, naming the fix, for a
    missing, unreadable, malformed or empty source.
    """
    kind = source_kind(spec.source)
    raw: Iterator[tuple[int, str]] | Iterator[str | None]
    if kind == "storyworld":
        raw = _iter_storyworld(spec)
    elif kind == "hf":
        raw = _iter_hf(spec)
    else:
        path = Path(spec.source).expanduser()
        if kind == "txt":
            raw = _iter_txt(path, spec.txt_mode)
        elif kind == "jsonl":
            raw = _iter_jsonl(path, spec.text_field)
        else:
            raw = _iter_parquet(path, spec.text_field)

    count = 0
    for item in raw:
        text: str | None
        if isinstance(item, tuple):
            doc_id, text = item
        else:
            doc_id, text = count, item
        if text is None or not text.strip():
            continue
        yield Document(doc_id=doc_id, text=text)
        count += 1
        if spec.max_docs is not None and count >= spec.max_docs:
            return
    if count == 0:
        field_hint = "" if kind in ("txt", "storyworld") else f" or check {spec.text_field=}"
        raise CorpusError(
            f"{_describe(spec)} is empty (no non-blank documents); pass a source with text"
            + field_hint
        )


# --------------------------------------------------------------------- tokenisation


def bos_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token prepended to every document: BOS, else EOS, else None."""
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
    """Apply the tokenisation rule to each text (see the module docstring).

    Encodes without special tokens, prepends :func:`bos_id` (if any) and keeps the first
    ``max_context`` tokens (BOS included; None keeps all). Returns read-only int64 arrays.
    """
    bos = bos_id(tokenizer)
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
    bos = bos_id(tokenizer)
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


# -------------------------------------------------------------------------- batching


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


# ----------------------------------------------------------------------- fingerprint


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
