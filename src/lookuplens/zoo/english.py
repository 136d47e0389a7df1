"""The real-English corpus of the bundled English model, read from Debian's text packages.

Sources (each a Debian package; `SOURCES` names it with its licence):

- the World English Bible (``sword-text-web``, public domain), read from the SWORD
  module's compressed verse blocks, markup and footnotes removed, cut into passages;
- the Jargon File 4.4.7 (``jargon-text``, public domain), paragraphs of prose (its
  tables and indented examples left out);
- the fortune cookie files (``fortunes``, BSD-licensed collection of quotations),
  quotations grouped into documents; the offensive files are not read.

Documents are passages of at most `max_words` words. Each document's split is fixed by a
hash of its source and text (one in `heldout_every` held out), so adding a source never
moves another's documents between train and held-out. Only public-domain sources are
shipped as the bundled model's held-out corpus.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lookuplens.errors import UserError

Split = Literal["train", "heldout"]

SWORD_WEB = Path("/usr/share/sword/modules/texts/ztext/engWEB2015eb")
JARGON = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
FORTUNES = Path("/usr/share/games/fortunes")
_FORTUNE_SKIP = {"ascii-art", "translate-me", "off"}


@dataclass(frozen=True)
class Document:
    source: str
    text: str

    @property
    def split(self) -> Split:
        return split_of(self.source, self.text)


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    licence: str
    shipped: bool
    """Whether its held-out documents may ship with the project (public domain only)."""
    read: Callable[[int], Iterator[str]]


def split_of(source: str, text: str, heldout_every: int = 10) -> Split:
    digest = hashlib.sha256(f"{source}\0{text}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:4], "little") % heldout_every == 0 else "train"


def _words_chunks(paragraphs: Iterator[str], max_words: int) -> Iterator[str]:
    """Paragraphs joined into passages of at most `max_words` words (a longer paragraph is
    cut at sentence ends where it can be)."""
    buf: list[str] = []
    n = 0
    for para in paragraphs:
        words = para.split()
        if not words:
            continue
        if n and n + len(words) > max_words:
            yield "\n".join(buf)
            buf, n = [], 0
        while len(words) > max_words:
            cut = max_words
            for i in range(max_words - 1, max_words // 2, -1):
                if words[i].endswith((".", "?", "!", ";")):
                    cut = i + 1
                    break
            yield " ".join(words[:cut])
            words = words[cut:]
        buf.append(" ".join(words))
        n += len(words)
    if buf:
        yield "\n".join(buf)


_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TITLE = re.compile(r"<title\b.*?</title>", re.S)
_TAG = re.compile(r"<[^>]+>")
_CHAPTER = re.compile(r"<chapter\b[^>]*\bsID=")


def _sword_verses(module: Path) -> Iterator[tuple[bool, str]]:
    """(starts a chapter, plain text) of every entry of a SWORD zText module, in order.

    The module stores, per testament, a block index (``*.bzs``: offset, size, unpacked
    size, little-endian u32 each), a verse index (``*.bzv``: block, offset, size as u32,
    u32, u16) and zlib-compressed blocks of OSIS text (``*.bzz``)."""
    for testament in ("ot", "nt"):
        bzs = (module / f"{testament}.bzs").read_bytes()
        bzv = (module / f"{testament}.bzv").read_bytes()
        bzz = (module / f"{testament}.bzz").read_bytes()
        blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs) - 11, 12)]
        cache: dict[int, bytes] = {}
        for i in range(0, len(bzv) - 9, 10):
            b, off, size = struct.unpack_from("<IIH", bzv, i)
            if size == 0 or b >= len(blocks):
                continue
            if b not in cache:
                cache.clear()
                start, length, _ = blocks[b]
                cache[b] = zlib.decompress(bzz[start : start + length])
            raw = cache[b][off : off + size].decode("utf-8", errors="replace")
            chapter = bool(_CHAPTER.search(raw))
            text = _TAG.sub("", _TITLE.sub("", _NOTE.sub("", raw)))
            yield chapter, " ".join(text.split())


def read_web_bible(max_words: int) -> Iterator[str]:
    """Passages of the World English Bible: a chapter's verses, cut at `max_words`."""
    if not SWORD_WEB.is_dir():
        raise FileNotFoundError(SWORD_WEB)

    def chapters() -> Iterator[list[str]]:
        verses: list[str] = []
        for chapter, text in _sword_verses(SWORD_WEB):
            if chapter and verses:
                yield verses
                verses = []
            if text:
                verses.append(text)
        if verses:
            yield verses

    for verses in chapters():
        yield from _words_chunks(iter([" ".join(verses)]), max_words)


def _prose(paragraph: str) -> bool:
    """A paragraph of running text: mostly letters, no table drawing, not a code block."""
    if any("\u2500" <= ch <= "\u257f" for ch in paragraph):
        return False
    letters = sum(ch.isalpha() for ch in paragraph)
    return len(paragraph.split()) >= 8 and letters >= 0.7 * len(paragraph.replace(" ", ""))


def read_jargon(max_words: int) -> Iterator[str]:
    """Paragraphs of prose from the Jargon File, grouped into passages."""
    text = gzip.decompress(JARGON.read_bytes()).decode("utf-8", errors="replace")
    paras = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    yield from _words_chunks((p for p in paras if _prose(p)), max_words)


def read_fortunes(max_words: int) -> Iterator[str]:
    """Fortune cookies (not the offensive ones), a few to a passage."""
    files = sorted(
        p
        for p in FORTUNES.iterdir()
        if p.is_file() and not p.suffix and p.name not in _FORTUNE_SKIP
    )
    if not files:
        raise FileNotFoundError(FORTUNES)
    for path in files:
        raw = path.read_text(encoding="utf-8", errors="replace")
        cookies = (" ".join(c.split()) for c in re.split(r"^%\s*$", raw, flags=re.M))
        yield from _words_chunks((c for c in cookies if len(c.split()) >= 4), max_words)


SOURCES: tuple[Source, ...] = (
    Source(
        "web-bible", "sword-text-web", "public domain (World English Bible)", True, read_web_bible
    ),  # fmt: skip
    Source("jargon", "jargon-text", "public domain (Jargon File 4.4.7)", True, read_jargon),
    Source(
        "fortunes",
        "fortunes",
        "BSD licence (fortune-mod collection of quotations)",
        False,
        read_fortunes,
    ),  # fmt: skip
)


def documents(max_words: int = 160, sources: tuple[Source, ...] = SOURCES) -> list[Document]:
    """Every document of the installed sources, in a fixed order; raises `UserError`
    naming the Debian packages to install when a source is missing."""
    out: list[Document] = []
    missing = []
    for src in sources:
        try:
            out.extend(Document(src.name, t) for t in src.read(max_words))
        except FileNotFoundError:
            missing.append(src.package)
    if missing:
        raise UserError(
            "the English corpus reads Debian's text packages; install them with "
            f"apt-get install {' '.join(missing)}"
        )
    return out
