"""Tripworld: a second planted world, built so that what the storyworld lets through fails.

Every document tells of a trip. Its first sentence may name the season of the trip (the
*cue*: "in winter , nora went to the lake ."); several sentences later comes a trigger,
"then she packed her" or "on the way she lost her", and an item. The item is decided by
the trigger and the season together (`TRIGGERS`: packed in winter a coat, lost in winter
a hat), and only in part: with probability `CUE_P` the season's item, otherwise any of
the four, and documents without a season take any item. So the trigger makes every item
likely and the season raises one of them: a look-up that adds a share of the item
neuron's activation on top of a trigger, the case where an explanation must say what
*modulates* the neuron rather than what makes it fire. Because the item is a conjunction
(no sum of a trigger's and a season's contributions to the logits expresses it), the
model needs item neurons that combine the two.

What makes it harder than the storyworld:

- **a word-level tokenizer** (every word and punctuation mark one token, no leading-space
  marks), trained by the recipe on the generated text;
- **far back**: three to six sentences stand between the cue and the trigger;
- **distractors of the cue's class**: half of the documents mention another season later,
  in a frame that does not decide the item ("she remembered a song about summer ."). The
  deciding season is the one after the trip's "in", not the nearest one, so a head that
  reads the cue must tell the two apart by their context: the word before the season
  reaches the season's position through an earlier head, which the reading head's query
  matches (a two-hop look-up);
- **near-misses**: "she sold her bike ." shares the triggers' frame and must not fire the
  item neurons (the sold object is never an item and never depends on the season);
- **redundancy**: the recipe trains with attention dropout, so that several heads learn
  to read the cue (measured on the model card, not assumed).

The generator's annotations are the ground truth: each item that the season decided is
annotated with its cue word. Token positions follow the project-wide rule (BOS first).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lookuplens.errors import UserError
from lookuplens.zoo.storyworld.tokens import encode_offsets

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

KIND = "season"
"""The one planted kind: the season (with the trigger) decides the item."""

CUE_P = 0.6
"""Probability that the item is the season's (otherwise any of the four)."""

SEASONS: dict[str, str] = {
    "winter": "coat",
    "january": "coat",
    "summer": "hat",
    "july": "hat",
    "spring": "umbrella",
    "april": "umbrella",
    "autumn": "scarf",
    "october": "scarf",
}
"""Cue word -> the item it makes likely (two cue words per item)."""

ITEMS: tuple[str, ...] = ("coat", "hat", "umbrella", "scarf")
"""The planted targets."""

TRIGGERS: dict[str, dict[str, str]] = {
    "packed": {"coat": "coat", "hat": "hat", "umbrella": "umbrella", "scarf": "scarf"},
    "lost": {"coat": "hat", "hat": "scarf", "umbrella": "coat", "scarf": "umbrella"},
}
"""Trigger verb -> (the season's item -> the item that follows the trigger). "then she
packed her" takes the season's item; "on the way she lost her" another one. The item is
a conjunction of trigger and season, which no sum of a trigger's and a season's
contributions to the logits can express: the model needs a neuron for it."""


def item_for(cue: str, trigger: str) -> str:
    """The item the season `cue` makes likely after `trigger`."""
    return TRIGGERS[trigger][SEASONS[cue]]


NAMES_SHE: tuple[str, ...] = ("nora", "mia", "ella", "rosa", "lily", "anna", "tess", "clara")
NAMES_HE: tuple[str, ...] = ("ben", "tom", "max", "leo", "omar", "hugo", "ivan", "paul")
PLACES: tuple[str, ...] = (
    "lake", "coast", "hills", "village", "city", "farm", "island", "valley", "forest", "harbour",
)  # fmt: skip
OBJECTS: tuple[str, ...] = ("bike", "lamp", "book", "chair", "radio", "clock", "desk", "kettle")
"""What near-misses ("she sold her bike") name; never an item."""
FOODS: tuple[str, ...] = ("bread", "apples", "cheese", "soup", "rice", "fish", "tea", "cake")
FRIENDS: tuple[str, ...] = ("friend", "cousin", "neighbour", "teacher", "brother", "sister")

Split = str  # "train" or "heldout"


@dataclass(frozen=True)
class Annotation:
    """One planted prediction (character offsets into the document's text)."""

    kind: str
    target: str
    """The target as running text, with its leading space: ``" coat"``."""
    target_char: int
    """Offset of the target's leading space."""
    cue_chars: tuple[tuple[int, int], ...]
    """Half-open spans of the cue word."""
    cue_word: str


@dataclass(frozen=True)
class Document:
    """One generated trip."""

    doc_id: int
    text: str
    annotations: tuple[Annotation, ...]
    cue: str | None
    """The deciding season, or None when the document names none."""
    distractors: tuple[str, ...]
    """Seasons named later in non-deciding frames."""
    near_miss: bool
    """Whether the document has a "sold her ..." sentence."""
    item: str
    """The item after the trigger."""
    item_char: int
    """Offset of the item's leading space (annotated or not)."""
    trigger: str = "packed"
    """The trigger verb (a key of `TRIGGERS`)."""


@dataclass(frozen=True)
class TokenAnnotation:
    """An annotation mapped to the BOS-prepended token sequence."""

    kind: str
    target: str
    target_token_id: int
    target_index: int
    cue_indices: tuple[int, ...]
    cue_word: str

    @property
    def predict_index(self) -> int:
        """The position whose next-token prediction is the target."""
        return self.target_index - 1


class TripworldError(UserError):
    """A tokenizer does not fit the tripworld."""


class _Text:
    """Builds the text word by word, recording character offsets."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0

    def add(self, words: str) -> list[tuple[int, int]]:
        """Append space-separated words; returns the span of each (no leading space)."""
        spans = []
        for w in words.split():
            if self.parts:
                self.parts.append(" ")
                self.length += 1
            spans.append((self.length, self.length + len(w)))
            self.parts.append(w)
            self.length += len(w)
        return spans

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _filler(rng: random.Random, she: str, her: str, place: str) -> str:
    other = rng.choice([p for p in PLACES if p != place])
    return rng.choice(
        [
            f"{she} met a {rng.choice(FRIENDS)} near the {other} .",
            f"the road to the {place} was long .",
            f"{she} bought some {rng.choice(FOODS)} for the trip .",
            f"{her} {rng.choice(FRIENDS)} called in the morning .",
            f"they talked about the {other} for a while .",
            f"{she} wrote a letter to {her} {rng.choice(FRIENDS)} .",
            f"the {place} was quiet that week .",
            f"{she} ate {rng.choice(FOODS)} and went to bed .",
        ]
    )


def _distractor(rng: random.Random, she: str, her: str, season: str) -> str:
    return rng.choice(
        [
            f"{she} remembered a song about {season} .",
            f"{her} {rng.choice(FRIENDS)} liked {season} best .",
            f"the book on the table was about {season} .",
            f"{she} dreamed of {season} .",
        ]
    )


def _trip(doc_id: int, rng: random.Random) -> Document:
    female = rng.random() < 0.5
    name = rng.choice(NAMES_SHE if female else NAMES_HE)
    she, her = ("she", "her") if female else ("he", "his")
    place = rng.choice(PLACES)
    cue = rng.choice(list(SEASONS)) if rng.random() < 0.8 else None
    out = _Text()
    cue_span: tuple[int, int] | None = None
    if cue is None:
        out.add(f"{name} went to the {place} .")
    elif rng.random() < 0.5:
        cue_span = out.add(f"in {cue} ,")[1]
        out.add(f"{name} went to the {place} .")
    else:
        cue_span = out.add(f"{name} went to the {place} in {cue}")[-1]
        out.add(".")
    middle = [_filler(rng, she, her, place) for _ in range(rng.randint(3, 6))]
    distractors: list[str] = []
    if rng.random() < 0.5:
        others = [s for s in SEASONS if cue is None or SEASONS[s] != SEASONS[cue]]
        distractors.append(rng.choice(others))
        middle.insert(rng.randint(1, len(middle)), _distractor(rng, she, her, distractors[0]))
    near_miss = rng.random() < 0.5
    if near_miss:
        middle.insert(rng.randint(0, len(middle)), f"{she} sold {her} {rng.choice(OBJECTS)} .")
    for sentence in middle:
        out.add(sentence)
    trigger = rng.choice(list(TRIGGERS))
    if cue is not None and rng.random() < CUE_P:
        item = item_for(cue, trigger)
    else:
        item = rng.choice(ITEMS)
    out.add(f"then {she} packed {her}" if trigger == "packed" else f"on the way {she} lost {her}")
    item_char = out.length
    out.add(f"{item} .")
    if rng.random() < 0.5:
        out.add(
            rng.choice(["the trip was good .", f"{she} came home late .", "it was a long day ."])
        )
    annotations: tuple[Annotation, ...] = ()
    if cue is not None and cue_span is not None and item == item_for(cue, trigger):
        annotations = (Annotation(KIND, f" {item}", item_char, (cue_span,), cue),)
    return Document(doc_id, out.text, annotations, cue, tuple(distractors), near_miss, item,
                    item_char, trigger)  # fmt: skip


def generate_corpus(n_docs: int, seed: int, split: Split = "train") -> list[Document]:
    """`n_docs` trips; the same arguments give the same documents, and the two splits never
    share a seed stream."""
    if n_docs < 0:
        raise ValueError("n_docs must be 0 or more")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(f"tripworld/{split}/{seed}")
    return [_trip(i, rng) for i in range(n_docs)]


def words() -> list[str]:
    """Every word the generator can write (the word-level vocabulary's content)."""
    return sorted({w for d in generate_corpus(3000, 0) for w in d.text.split()})


def bos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The BOS token prepended to every document."""
    tid = tokenizer.bos_token_id
    if tid is None:
        raise TripworldError("the tokenizer has no BOS token; use the tripworld tokenizer")
    return int(tid)


def encode_document(doc: Document, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of a document with BOS prepended (index 0 is BOS)."""
    return [bos_id(tokenizer), *encode_offsets(doc.text, tokenizer)[0]]


def token_positions(doc: Document, tokenizer: PreTrainedTokenizerBase) -> list[TokenAnnotation]:
    """Each annotation of `doc` mapped to indices of the BOS-prepended token sequence."""
    from lookuplens.model.vocab import Vocab

    vocab = Vocab(tokenizer)
    ids, offsets = encode_offsets(doc.text, tokenizer)
    out = []
    for ann in doc.annotations:
        first = ann.target_char + 1
        hits = [i for i, (s, e) in enumerate(offsets) if s <= first < e]
        if len(hits) != 1 or vocab.text(ids[hits[0]]).strip() != ann.target.strip():
            raise TripworldError(
                f"doc {doc.doc_id}: target {ann.target!r} is not one token of this tokenizer; "
                "use the tripworld tokenizer (bundled:tripworld)"
            )
        cues = sorted(
            {i for cs, ce in ann.cue_chars for i, (s, e) in enumerate(offsets) if s < ce and cs < e}
        )
        out.append(
            TokenAnnotation(
                ann.kind,
                ann.target,
                ids[hits[0]],
                hits[0] + 1,
                tuple(i + 1 for i in cues),
                ann.cue_word,
            )  # fmt: skip
        )
    return out


def replacements(cue: str, text: str) -> list[str]:
    """The seasons that decide another item than `cue` and are not already in the text,
    in `SEASONS` order: what a cue swap may put in the cue's place."""
    present = set(text.split())
    return [s for s in SEASONS if SEASONS[s] != SEASONS[cue] and s not in present]


def replacement(cue: str, text: str, rng: random.Random | None = None) -> str | None:
    """One of `replacements`, drawn with `rng`; None when there is none."""
    options = replacements(cue, text)
    return (rng or random.Random(0)).choice(options) if options else None


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise :class:`TripworldError` unless every item and season is one token."""
    bad = [w for w in (*ITEMS, *SEASONS) if len(encode_offsets(w, tokenizer)[0]) != 1]
    if bad:
        raise TripworldError(f"tripworld words that are not one token: {bad}")


def doc_texts(docs: Sequence[Document]) -> list[str]:
    """The texts of `docs`."""
    return [d.text for d in docs]
