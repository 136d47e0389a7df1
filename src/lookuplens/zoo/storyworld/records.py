"""The storyworld's records: a generated `Document` with its planted `Annotation`s, and
an annotation mapped to token indices (`TokenAnnotation`)."""

from __future__ import annotations

from dataclasses import dataclass

from lookuplens.errors import UserError
from lookuplens.zoo.words import Kind

__all__ = ["Annotation", "Document", "StoryworldError", "TokenAnnotation"]


@dataclass(frozen=True)
class Annotation:
    """One planted prediction in a document's text (character offsets into ``text``)."""

    kind: Kind
    target: str
    """The target token text including its leading space, e.g. ``" an"``."""
    target_char: int
    """Offset of the target's first character, i.e. of its leading space."""
    cue_chars: tuple[tuple[int, int], ...]
    """Half-open character spans ``[start, end)`` of the cue words (no leading space)."""
    cue_word: str
    """The word that decides the target: the object, the place, or the name."""


@dataclass(frozen=True)
class Document:
    """One generated story."""

    doc_id: int
    text: str
    annotations: tuple[Annotation, ...]
    article_slots: tuple[int, ...] = ()
    """Offsets (of the leading space) of the recall articles that an adjective decided
    ("a tiny owl"). Not planted predictions; training weights them like the planted
    articles, so the model learns how often an adjective intervenes."""


@dataclass(frozen=True)
class TokenAnnotation:
    """An annotation mapped to token indices of the BOS-prepended token sequence."""

    kind: Kind
    target: str
    target_token_id: int
    target_index: int
    """Index of the target token (index 0 is BOS); the model predicts it at ``target_index - 1``."""
    cue_indices: tuple[int, ...]
    """Indices of every token overlapping a cue span."""
    cue_word: str

    @property
    def predict_index(self) -> int:
        """The position whose next-token prediction is the target."""
        return self.target_index - 1


class StoryworldError(UserError):
    """A storyworld input is invalid, or a tokenizer does not fit the storyworld."""
