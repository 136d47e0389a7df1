"""The corpus records: `CorpusSpec` (which corpus, how much of it), `Document`,
`TokenizedDoc` and `Batch`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from jaxtyping import Int64

from lookuplens.choices import check_choices

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Batch", "CorpusSpec", "Document", "SourceKind", "TokenizedDoc", "TxtMode"]

SourceKind = Literal["txt", "jsonl", "parquet", "storyworld", "hf"]
TxtMode = Literal["auto", "line", "paragraph"]

_TXT_MODES: tuple[str, ...] = ("auto", "line", "paragraph")


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
