"""What a token id means as text, under each tokenizer convention.

Tokenizers mark where a word starts in different ways, and decoding one token on its
own loses that mark under some of them (a SentencePiece decoder strips the leading
space of "▁an", a word-level decoder has no spaces at all). Everything in lookuplens
that shows or matches a token goes through `Vocab`, which knows the convention:

========== ================================ ======================== =================
convention  detected from                    "an" as a word start     continuation
========== ================================ ======================== =================
byte_level  ByteLevel pre-tokenizer/decoder  "Ġan" (GPT-2, Pythia,    "an"
                                             Llama-3, Qwen2)
metaspace   Metaspace, or "▁" in the         "▁an" (Llama-2, Mistral, "an"; byte pieces
            decoder/normaliser               Gemma; SentencePiece)    "<0x41>" -> "A"
wordpiece   WordPiece model or decoder       "an"                     "##an" -> "an"
word_level  WordLevel model                  "an" (every token is a   none
                                             whole word)
plain       none of these                    whatever decode gives
========== ================================ ======================== =================

`Vocab.text(id)` is the text the token adds in running text: " an" for "Ġan", "▁an" and
a word-level "an"; "an" for a continuation piece; special tokens as written ("<s>").
`Vocab.starts_word(id)` tells whether the token begins a word. `Vocab.resolve(text)`
maps a string as people type it (" an", "an", "▁an", "Ġan") to one token id.
The convention is read from the tokenizer itself (its model, pre-tokenizer, decoder and
vocabulary), never from the model's name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Literal

from lookuplens.errors import UserError

Convention = Literal["byte_level", "metaspace", "wordpiece", "word_level", "plain"]
CONVENTIONS: tuple[str, ...] = ("byte_level", "metaspace", "wordpiece", "word_level", "plain")

_METASPACE = "\u2581"  # ▁
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_level_alphabet() -> dict[str, int]:
    """The printable character GPT-2's byte-level BPE uses for each byte, inverted.

    Printable Latin-1 bytes stand for themselves; the others (control characters, space,
    0x7F-0xA0, 0xAD) are shifted to 256 + their rank, so a space is "Ġ" (U+0120).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    kept = set(keep)
    out = {chr(b): b for b in keep}
    shift = 0
    for b in range(256):
        if b not in kept:
            out[chr(256 + shift)] = b
            shift += 1
    return out


_BYTE_OF_CHAR = _byte_level_alphabet()


def _backend_spec(tokenizer: Any) -> dict[str, Any] | None:
    """The fast tokenizer's model type, pre-tokenizer, decoder and normaliser (no vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    out: dict[str, Any] = {"model": type(backend.model).__name__}
    for part in ("pre_tokenizer", "decoder", "normalizer"):
        obj = getattr(backend, part, None)
        state = obj.__getstate__() if obj is not None else None
        out[part] = json.loads(state) if state else None
    prefix = getattr(backend.model, "continuing_subword_prefix", None)
    out["continuing_subword_prefix"] = prefix
    return out


def detect_convention(tokenizer: Any, spec: dict[str, Any] | None = None) -> Convention:
    """The convention of a tokenizer, from its parts (`spec`: its `_backend_spec`, read
    when not given), else from its vocabulary."""
    spec = spec if spec is not None else _backend_spec(tokenizer)
    if spec is not None:
        if spec["model"] == "WordLevel":
            return "word_level"
        if spec["model"] == "WordPiece":
            return "wordpiece"
        blob = json.dumps(
            [spec["pre_tokenizer"], spec["decoder"], spec["normalizer"]], ensure_ascii=False
        )
        if '"ByteLevel"' in blob:
            return "byte_level"
        if '"Metaspace"' in blob or _METASPACE in blob:
            return "metaspace"
        if '"WordPiece"' in blob:
            return "wordpiece"
    # slow tokenizers and hand-made backends: the vocabulary's marks
    try:
        pieces = list(tokenizer.get_vocab())
    except (AttributeError, NotImplementedError):
        return "plain"
    n = max(len(pieces), 1)
    share = {
        "byte_level": sum(p.startswith("\u0120") for p in pieces) / n,
        "metaspace": sum(p.startswith(_METASPACE) for p in pieces) / n,
        "wordpiece": sum(p.startswith("##") for p in pieces) / n,
    }
    best = max(share, key=lambda k: share[k])
    return best if share[best] >= 0.05 else "plain"  # type: ignore[return-value]


class Vocab:
    """A tokenizer's tokens as running text, word starts, and look-up of typed strings."""

    def __init__(self, tokenizer: Any, size: int | None = None) -> None:
        self.tokenizer = tokenizer
        spec = _backend_spec(tokenizer)
        self.convention: Convention = detect_convention(tokenizer, spec)
        self.size = int(size) if size is not None else len(tokenizer)
        prefix = spec.get("continuing_subword_prefix") if spec else None
        self._cont_prefix = prefix or "##"
        self._texts: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"Vocab({self.convention}, {self.size} tokens)"

    @cached_property
    def special_ids(self) -> frozenset[int]:
        ids = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        added = getattr(self.tokenizer, "added_tokens_decoder", None) or {}
        ids.update(int(i) for i, t in added.items() if getattr(t, "special", False))
        return frozenset(int(i) for i in ids)

    def piece(self, token_id: int) -> str | None:
        """The raw vocabulary entry ("Ġan", "▁an", "##an"), None outside the tokenizer."""
        if not 0 <= int(token_id) < len(self.tokenizer):
            return None
        p = self.tokenizer.convert_ids_to_tokens(int(token_id))
        return p if isinstance(p, str) else None

    def text(self, token_id: int) -> str:
        """The text this token adds in running text (see the module docstring)."""
        tid = int(token_id)
        t = self._texts.get(tid)
        if t is None:
            t = self._render(tid)
            self._texts[tid] = t
        return t

    def texts(self, ids: Sequence[int]) -> list[str]:
        return [self.text(int(i)) for i in ids]

    def join(self, ids: Sequence[int]) -> str:
        """The running text of several tokens, bytes split across tokens joined first."""
        if self.convention not in ("byte_level", "metaspace"):
            return "".join(self.text(int(i)) for i in ids)
        out: list[str] = []
        pending = bytearray()
        for i in ids:
            tid = int(i)
            piece = self.piece(tid)
            raw: bytes | None = None
            if piece is not None and tid not in self.special_ids:
                if self.convention == "byte_level" and all(ch in _BYTE_OF_CHAR for ch in piece):
                    raw = bytes(_BYTE_OF_CHAR[ch] for ch in piece)
                elif self.convention == "metaspace":
                    m = _BYTE_PIECE.match(piece)
                    raw = bytes([int(m.group(1), 16)]) if m else None
            if raw is not None:
                pending += raw
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            out.append(self.text(tid))
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def _render(self, tid: int) -> str:
        piece = self.piece(tid)
        if piece is None:
            # an embedding row the tokenizer does not know (vocabularies padded for speed)
            return f"<{tid}>"
        if tid in self.special_ids:
            return piece
        c = self.convention
        if c == "byte_level":
            if all(ch in _BYTE_OF_CHAR for ch in piece):
                raw = bytes(_BYTE_OF_CHAR[ch] for ch in piece)
                return raw.decode("utf-8", errors="replace")
            return piece  # an added token written as plain text
        if c == "metaspace":
            m = _BYTE_PIECE.match(piece)
            if m:
                return bytes([int(m.group(1), 16)]).decode("utf-8", errors="replace")
            return piece.replace(_METASPACE, " ")
        if c == "wordpiece":
            if piece.startswith(self._cont_prefix):
                return piece[len(self._cont_prefix) :]
            return " " + piece
        if c == "word_level":
            return " " + piece
        return str(self.tokenizer.decode([tid]))

    def starts_word(self, token_id: int) -> bool:
        """Whether the token begins a word (its running text starts with a space)."""
        tid = int(token_id)
        if tid in self.special_ids or self.piece(tid) is None:
            return False
        return self.text(tid).startswith(" ")

    def word(self, token_id: int) -> str:
        """The token's text without the space that separates it from the word before."""
        return self.text(token_id).removeprefix(" ")

    @cached_property
    def _by_text(self) -> dict[str, int]:
        """Running text -> token id (the first non-special id when several share a text)."""
        out: dict[str, int] = {}
        n = len(self.tokenizer)
        for tid in range(n):
            if tid in self.special_ids:
                continue
            out.setdefault(self.text(tid), tid)
        return out

    @cached_property
    def _by_piece(self) -> dict[str, int]:
        return {str(p): int(i) for p, i in self.tokenizer.get_vocab().items()}

    def resolve(self, text: str, what: str = "token") -> int:
        """The one token id a typed string means, or a `UserError` listing its pieces.

        Tried in order: the running text of a token (" an" is the word-start token, "an"
        the continuation piece where the vocabulary has one); a raw vocabulary entry
        ("▁an", "Ġan", a word-level "an"); a leading "▁" or "Ġ" read as the space it marks
        (so "▁an" also works on a byte-level model); the bare word as a word start ("an"
        -> " an" where no continuation piece "an" exists).
        """
        if not text:
            raise UserError(f"the {what} is empty; pass a token such as ' an'")
        by_text = self._by_text
        if text in by_text:
            return by_text[text]
        tid = self._by_piece.get(text)
        if tid is not None and tid < self.size:
            return tid
        if text[0] in (_METASPACE, "\u0120") and " " + text[1:] in by_text:
            return by_text[" " + text[1:]]
        if not text.startswith(" ") and " " + text in by_text:
            return by_text[" " + text]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        shown = ", ".join(repr(self.text(int(i))) for i in ids)
        how = (
            f"it splits into {len(ids)} pieces [{shown}]; pass one of them"
            if len(ids) > 1
            else f"it is read as [{shown}]; pass a token of the vocabulary"
        )
        raise UserError(
            f"{what} {text!r} is not a single token of this model's tokenizer "
            f"({self.convention.replace('_', '-')}): {how}"
        )
