"""Storyworld documents as tokens: BOS first (index 0), then the text's tokens; the
planted annotations as token indices; the check that a tokenizer fits the storyworld."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookuplens.zoo.storyworld.records import Document, StoryworldError, TokenAnnotation
from lookuplens.zoo.words import BOS_TOKEN, single_token_words

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "check_tokenizer",
    "encode_document",
    "encode_offsets",
    "endoftext_id",
    "token_positions",
]


def encode_offsets(
    text: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    offsets = [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    return ids, offsets


def endoftext_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of ``<|endoftext|>`` (`BOS_TOKEN`), which the storyworld prepends to every
    document and pads with; raises StoryworldError if the tokenizer lacks it. Not the
    tokenizer's own ``bos_token_id`` (compare `lookuplens.corpus.document_prefix_id`)."""
    tid = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    if not isinstance(tid, int) or tokenizer.convert_ids_to_tokens(tid) != BOS_TOKEN:
        raise StoryworldError(
            f"the tokenizer has no {BOS_TOKEN!r} token; use the storyworld tokenizer "
            "(lookuplens.zoo.default_model_path()) or a GPT-2-style tokenizer"
        )
    return tid


def encode_document(doc: Document, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of a document with BOS prepended (index 0 is BOS)."""
    ids, _ = encode_offsets(doc.text, tokenizer)
    return [endoftext_id(tokenizer), *ids]


def token_positions(doc: Document, tokenizer: PreTrainedTokenizerBase) -> list[TokenAnnotation]:
    """Map each annotation of ``doc`` to token indices in the BOS-prepended sequence.

    Index 0 is the BOS token ``<|endoftext|>``; the text's first token has index 1. The
    target must be exactly one token; cue spans map to every token they overlap.
    """
    ids, offsets = encode_offsets(doc.text, tokenizer)
    result: list[TokenAnnotation] = []
    for ann in doc.annotations:
        first_letter = ann.target_char + 1
        hits = [i for i, (s, e) in enumerate(offsets) if s <= first_letter < e]
        if len(hits) != 1:
            raise StoryworldError(f"doc {doc.doc_id}: no token covers offset {first_letter}")
        t = hits[0]
        s, e = offsets[t]
        end = ann.target_char + len(ann.target)
        if not (s <= ann.target_char + 1 and e == end) or tokenizer.decode([ids[t]]) != ann.target:
            raise StoryworldError(
                f"doc {doc.doc_id}: target {ann.target!r} is not a single token of this "
                "tokenizer; use the storyworld tokenizer (lookuplens.zoo.default_model_path())"
            )
        cues = sorted(
            {
                i
                for (cs, ce) in ann.cue_chars
                for i, (s2, e2) in enumerate(offsets)
                if s2 < ce and cs < e2
            }
        )
        result.append(
            TokenAnnotation(
                kind=ann.kind,
                target=ann.target,
                target_token_id=ids[t],
                target_index=t + 1,
                cue_indices=tuple(i + 1 for i in cues),
                cue_word=ann.cue_word,
            )
        )
    return result


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise :class:`StoryworldError` unless every planted target and cue word is one token."""
    bad = []
    for word in single_token_words():
        ids, _ = encode_offsets(word, tokenizer)
        if len(ids) != 1:
            bad.append(word)
    if bad:
        raise StoryworldError(
            f"{len(bad)} storyworld words are not single tokens ({bad[:8]}); train the "
            "tokenizer on more storyworld text or raise its vocab_size"
        )
