"""Corpus sources: what a source names, and its non-blank documents in order.

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
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from lookuplens.corpus.spec import CorpusSpec, Document, SourceKind, TxtMode
from lookuplens.errors import CorpusError

logger = logging.getLogger(__name__)

__all__ = ["iter_documents", "source_kind"]

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


def _names_local_file(source: str) -> bool:
    """Whether a corpus source that is not an existing file was meant as one (so a missing
    file is reported as such, not looked up on the Hugging Face Hub as a dataset name).

    A path prefix (``/``, ``./``, ``../``, ``~``, Windows ``.\\``, ``..\\``) or any
    backslash, or a suffix of a data file (`_FILE_LIKE_SUFFIXES`). A slash alone does not
    count: dataset names are ``org/name``. The rule differs from
    `lookuplens.model.loading._names_local_dir`, because what is named differs: a corpus is
    one file, told apart by its suffix, while a model is a folder, and hub model ids often
    hold a dot (``Qwen/Qwen2.5-0.5B``), so a suffix there says nothing.
    """
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
    if _names_local_file(source):
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
