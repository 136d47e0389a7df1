"""Story generation: sentence templates filled from a seeded ``random.Random``, the
planted look-ups placed in them, and the corpus of stories (`generate_corpus`,
`iter_corpus`). See `lookuplens.zoo.storyworld` for what is planted."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lookuplens.zoo.storyworld.records import Annotation, Document, StoryworldError
from lookuplens.zoo.words import (
    ADJECTIVES,
    ANIMALS,
    CONSONANT_OBJECTS,
    FEMALE_NAMES,
    FEMALE_ROLES,
    INTRANSITIVE,
    KINDS,
    MALE_NAMES,
    MALE_ROLES,
    MOODS,
    NAMES,
    OPENERS,
    PLACES,
    THINGS,
    TOPICS,
    TRANSITIVE,
    VOWEL_OBJECTS,
    WEATHER,
    Kind,
    Split,
    article_for,
)

__all__ = ["ADJECTIVE_SHARE", "NAME_BOTH_SHARE", "VOWEL_SHARE", "generate_corpus", "iter_corpus"]

NAME_BOTH_SHARE = 0.75
"""Share of name look-ups in which both characters are recalled (two planted predictions)."""

ADJECTIVE_SHARE = 0.25
"""Share of article recalls with an adjective between the article and
the noun ("a tiny owl"). Then the adjective, which the model cannot foresee, decides the
article, so even a perfect look-up leaves " an" at about 75%, as in English, where no
model is certain of " an"; those articles are not annotated."""

VOWEL_SHARE = 0.3
"""Share of article look-ups whose object is vowel-initial. As in English, " a" is the
common article and " an" the marked one, so the model's default is " a" and the look-up
has to switch " an" on (the shipped model does it through an MLP neuron)."""

# --------------------------------------------------------------------------------------
# Text builder
# --------------------------------------------------------------------------------------

_NO_SPACE_BEFORE = {",", ".", "!"}


@dataclass(frozen=True)
class _Slot:
    """A word in a sentence template, optionally tagged for later span lookup."""

    text: str
    tag: str | None = None


Piece = str | _Slot


@dataclass
class _Builder:
    """Accumulates words into text and records the spans of tagged words."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    words: int = 0

    def sentence(self, pieces: Sequence[Piece]) -> None:
        for piece in pieces:
            slot = piece if isinstance(piece, _Slot) else _Slot(piece)
            space = "" if (self.length == 0 or slot.text in _NO_SPACE_BEFORE) else " "
            start = self.length + len(space)
            self.parts.append(space + slot.text)
            self.length = start + len(slot.text)
            if slot.text not in _NO_SPACE_BEFORE:
                self.words += 1
            if slot.tag is not None:
                if slot.tag in self.spans:
                    raise AssertionError(f"tag {slot.tag!r} used twice")
                self.spans[slot.tag] = (start, self.length)

    def text(self) -> str:
        return "".join(self.parts)


# --------------------------------------------------------------------------------------
# Story generation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Character:
    name: str
    female: bool

    def subj(self, rng: random.Random, start: bool) -> str:
        """Name or pronoun as a sentence subject."""
        if rng.random() < 0.5:
            return self.name
        pronoun = "she" if self.female else "he"
        return pronoun.capitalize() if start else pronoun

    @property
    def poss(self) -> str:
        return "her" if self.female else "his"


Sentence = list[Piece]


def _w(words: str) -> list[Piece]:
    """Split a run of plain words (and punctuation marks) into sentence pieces."""
    return list(words.split())


@dataclass(frozen=True)
class _Props:
    """A story's recurring things, each with its own adjective ("the golden door").

    Filler mentions them again and again, so much of a story is predictable from its own
    earlier text, as in natural stories; that in-context copying is what the name
    look-up builds on.
    """

    pairs: tuple[tuple[str, str], ...]

    @classmethod
    def draw(cls, rng: random.Random) -> _Props:
        things = rng.sample(THINGS, 3)
        return cls(tuple((rng.choice(ADJECTIVES), t) for t in things))

    def pick(self, rng: random.Random) -> tuple[str, str]:
        """(adjective, thing): one of the story's props most of the time."""
        if rng.random() < 0.75:
            return rng.choice(self.pairs)
        return rng.choice(ADJECTIVES), rng.choice(THINGS)


def _filler(rng: random.Random, cast: Sequence[_Character], props: _Props) -> Sentence:
    """One ordinary sentence; uses only "the" before nouns and no planted word."""
    c = rng.choice(cast)
    s = c.subj(rng, start=True)
    p, a = rng.choice(PLACES), rng.choice(ANIMALS)
    adj, t = props.pick(rng)
    verb = rng.choice(TRANSITIVE)
    shape = rng.randrange(16)
    if shape == 0:
        return [s, *_w("walked to the"), p, *_w("with the"), adj, t, "."]
    if shape == 14:
        # Fixed phrases: here the article is decided by the words just before it, not
        # by a look-up, as "an hour" and "a nap" are in English.
        return [s, *_w("waited for an hour .")]
    if shape == 15:
        return [s, *_w("took a nap .")]
    if shape == 1:
        return ["The", a, rng.choice(INTRANSITIVE), "near", "the", p, "."]
    if shape == 2 and len(cast) > 1:
        other = cast[1] if c is cast[0] else cast[0]
        return [c.name, "and", other.name, verb, "the", adj, t, "together", "."]
    if shape == 3:
        return [
            *_w("It was"),
            rng.choice(WEATHER),
            *_w("and the"),
            a,
            "was",
            rng.choice(MOODS),
            ".",
        ]
    if shape == 4:
        return [s, *_w("smiled at the"), rng.choice(MOODS), a, "."]
    if shape == 5:
        subj = s.lower() if s in ("She", "He") else s
        return [*_w("After lunch ,"), subj, verb, "the", adj, t, *_w("by the"), p, "."]
    if shape == 6:
        return [c.name, *_w("said that the"), t, *_w("was very"), adj, "."]
    if shape == 7:
        return ["The", rng.choice(MOODS), a, *_w("ran past the"), p, "."]
    if shape == 8:
        adj2, t2 = props.pick(rng)
        return [s, verb, "the", t, *_w("and then"), rng.choice(TRANSITIVE), "the", adj2, t2, "."]
    if shape == 9:
        mood = rng.choice(("quiet", "busy", "bright", "cold", "warm"))
        return ["The", p, "was", mood, "that", "day", "."]
    if shape == 10:
        return [s, "was", rng.choice(MOODS), *_w("and looked at the"), p, "."]
    if shape == 11:
        return [*_w("Near the"), p, *_w(", the"), a, rng.choice(INTRANSITIVE), *_w("all day .")]
    if shape == 12:
        place = rng.choice(("bag", "pocket", "room"))
        return [s, "put", "the", adj, t, "in", c.poss, place, "."]
    return [s, *_w("heard the"), a, "and", rng.choice(INTRANSITIVE), "."]


def _article_intro(rng: random.Random, c: _Character, obj: str) -> Sentence:
    det_roll = rng.random()
    if det_roll < 0.4:
        det = "an" if obj in VOWEL_OBJECTS else "a"
    elif det_roll < 0.7:
        det = "the"
    else:
        det = c.poss
    o = _Slot(obj, "cue")
    p = rng.choice(PLACES)
    shape = rng.randrange(4)
    if shape == 0:
        return [c.subj(rng, start=True), "found", det, o, "near", "the", p, "."]
    if shape == 1:
        return ["In", "the", "morning", ",", c.name, "saw", det, o, "by", "the", p, "."]
    if shape == 2:
        return [c.subj(rng, start=True), "played", "with", det, o, "at", "the", p, "."]
    return [c.subj(rng, start=True), "kept", det, o, "under", "the", rng.choice(THINGS), "."]


def _article_noun(rng: random.Random, noun: str, tag: str) -> list[Piece]:
    """An indefinite article and ``noun``; in :data:`ADJECTIVE_SHARE` of cases an adjective
    comes between them and decides the article, and the article is not a planted target."""
    if rng.random() < ADJECTIVE_SHARE:
        adj = rng.choice(ADJECTIVES)
        return [_Slot(article_for(adj), "slot"), adj, noun]
    return [_Slot(article_for(noun), tag), noun]


def _article_recall(rng: random.Random, c: _Character, obj: str) -> Sentence:
    art_obj = _article_noun(rng, obj, "target")
    shape = rng.randrange(4)
    if shape == 0:
        return [c.subj(rng, start=True), "wanted", "to", "draw", *art_obj, "."]
    if shape == 1:
        return ["That", "night", ",", c.name, "dreamed", "about", *art_obj, "."]
    if shape == 2:
        return [c.subj(rng, start=True), "wished", "for", *art_obj, "of", c.poss, "own", "."]
    return ["Later", ",", c.name, "sang", "about", *art_obj, "."]


def _topic_intro(rng: random.Random, c: _Character, place: str) -> Sentence:
    pl = _Slot(place, "cue")
    shape = rng.randrange(3)
    if shape == 0:
        return ["At", "the", pl, ",", c.name, "met", "the", rng.choice(ANIMALS), "."]
    if shape == 1:
        return [c.subj(rng, start=True), "went", "to", "the", pl, "early", "."]
    return ["On", "Sunday", ",", c.name, "visited", "the", pl, "."]


def _topic_recall(rng: random.Random, c: _Character, place: str) -> Sentence:
    # " some" appears nowhere else: the trigger phrase is shared by every place.
    target = _Slot(TOPICS[place], "target")
    if rng.random() < 0.5:
        return [*_w("Before leaving ,"), c.name, *_w("bought some"), target, "."]
    return [*_w("In the end ,"), c.subj(rng, start=False), *_w("bought some"), target, "."]


def _name_intro(rng: random.Random, a: _Character, ra: str, b: _Character, rb: str) -> Sentence:
    # Each name directly follows its role ("the pilot Ben"), and only the recall repeats it.
    na, nb = _Slot(a.name, "cue_name_a"), _Slot(b.name, "cue_name_b")
    sa, sb = _Slot(ra, "cue_role_a"), _Slot(rb, "cue_role_b")
    if rng.random() < 0.5:
        return ["The", sa, na, "and", "the", sb, nb, *_w("were old friends .")]
    return [*_w("In the town lived the"), sa, na, "and", "the", sb, nb, "."]


def _name_recall(rng: random.Random, role: str, name: str) -> Sentence:
    # The role decides which of the two names follows; roles appear nowhere else.
    target = _Slot(name, "target")
    thing = rng.choice(THINGS)
    opener = "Later , the" if rng.random() < 0.5 else "After that , the"
    return [*_w(opener), role, target, rng.choice(TRANSITIVE), "the", thing, "."]


@dataclass(frozen=True)
class _Plan:
    """One planted look-up: its introduction and its recall sentence, and how to annotate."""

    kind: Kind
    intro: Sentence
    recall: Sentence
    cue_word: str
    cue_tags: tuple[str, ...]
    uid: int
    """Suffix of this plan's tags."""
    cue_uid: int | None = None
    """The plan whose intro holds the cues (``None``: this one)."""


def _retag(sentence: Sentence, suffix: str) -> Sentence:
    return [
        _Slot(p.text, f"{p.tag}:{suffix}") if isinstance(p, _Slot) and p.tag else p
        for p in sentence
    ]


def _story(rng: random.Random, doc_id: int) -> Document:
    """Generate one story."""
    kinds: list[Kind] = []
    if rng.random() >= 0.2:
        while not kinds:
            kinds = [k for k in KINDS if rng.random() < 0.5]
    props = _Props.draw(rng)
    if "name" in kinds:
        # A woman and a man, so that the gendered role decides which name follows.
        names = [rng.choice(FEMALE_NAMES), rng.choice(MALE_NAMES)]
        rng.shuffle(names)
    else:
        names = rng.sample(NAMES, 2)
    cast = [_Character(n, n in FEMALE_NAMES) for n in names]
    hero = cast[0]
    plans: list[_Plan] = []
    for kind in kinds:
        if kind == "article":
            obj = rng.choice(VOWEL_OBJECTS if rng.random() < VOWEL_SHARE else CONSONANT_OBJECTS)
            plans.append(
                _Plan(
                    kind,
                    _article_intro(rng, hero, obj),
                    _article_recall(rng, hero, obj),
                    obj,
                    ("cue",),
                    uid=len(plans),
                )
            )
        elif kind == "topic":
            place = rng.choice(tuple(TOPICS))
            plans.append(
                _Plan(
                    kind,
                    _topic_intro(rng, hero, place),
                    _topic_recall(rng, hero, place),
                    place,
                    ("cue",),
                    uid=len(plans),
                )
            )
        else:
            first, second = rng.sample(cast, 2)
            ra, rb = (rng.choice(FEMALE_ROLES if c.female else MALE_ROLES) for c in (first, second))
            asked = [0, 1] if rng.random() < NAME_BOTH_SHARE else [rng.randrange(2)]
            rng.shuffle(asked)
            intro = _name_intro(rng, first, ra, second, rb)
            owner = len(plans)
            for n, which in enumerate(asked):
                role, name = (ra, first.name) if which == 0 else (rb, second.name)
                ab = "a" if which == 0 else "b"
                plans.append(
                    _Plan(
                        kind,
                        intro if n == 0 else [],
                        _name_recall(rng, role, name),
                        name,
                        (f"cue_name_{ab}", f"cue_role_{ab}"),
                        uid=len(plans),
                        cue_uid=None if n == 0 else owner,
                    )
                )
    rng.shuffle(plans)
    target_words = rng.randint(40, 110)

    intros = [_retag(p.intro, str(p.uid)) for p in plans]
    recalls = [_retag(p.recall, str(p.uid)) for p in plans]
    recall_order = list(range(len(plans)))
    rng.shuffle(recall_order)
    planted_words = sum(
        sum(1 for x in s if not (isinstance(x, str) and x in _NO_SPACE_BEFORE)) for s in intros
    ) + sum(
        sum(1 for x in s if not (isinstance(x, str) and x in _NO_SPACE_BEFORE)) for s in recalls
    )
    opener: Sentence = [rng.choice(OPENERS), ",", hero.name, "woke", "up", "."]
    if rng.random() < 0.5:
        opener = [rng.choice(OPENERS), ",", hero.name, "and", cast[1].name, "went", "outside", "."]

    # Sentences: opener, filler, each intro followed by filler, each recall followed by
    # filler; at least one filler sentence between the last intro and the first recall.
    budget = max(target_words - planted_words - len(opener), 8)
    n_plans = len(plans)
    counts = [0] * (1 + 2 * n_plans)
    for _ in range(max(1, round(budget / 8))):
        counts[rng.randrange(len(counts))] += 1
    if n_plans and counts[n_plans] == 0:
        counts[n_plans] = 1
    sentences: list[Sentence] = [opener]
    sentences += [_filler(rng, cast, props) for _ in range(counts[0])]
    for k, s in enumerate(intros):
        sentences.append(s)
        sentences += [_filler(rng, cast, props) for _ in range(counts[1 + k])]
    for j, i in enumerate(recall_order):
        sentences.append(recalls[i])
        sentences += [_filler(rng, cast, props) for _ in range(counts[1 + n_plans + j])]

    b = _Builder()
    for s in sentences:
        b.sentence(s)
    text = b.text()
    annotations: list[Annotation] = []
    for plan in plans:
        if f"target:{plan.uid}" not in b.spans:
            continue  # an adjective took the article: not a planted prediction
        start, end = b.spans[f"target:{plan.uid}"]
        cue_uid = plan.uid if plan.cue_uid is None else plan.cue_uid
        cue_chars = tuple(b.spans[f"{tag}:{cue_uid}"] for tag in plan.cue_tags)
        target_text = " " + text[start:end]
        annotations.append(Annotation(plan.kind, target_text, start - 1, cue_chars, plan.cue_word))
    annotations.sort(key=lambda a: a.target_char)
    slots = sorted(start - 1 for tag, (start, _) in b.spans.items() if tag.startswith("slot:"))
    return Document(doc_id, text, tuple(annotations), tuple(slots))


_SPLIT_SALT: dict[str, int] = {"train": 0x5107, "heldout": 0x4E1D}


def generate_corpus(n_docs: int, seed: int, split: Split = "train") -> list[Document]:
    """Generate ``n_docs`` stories, deterministically from ``seed`` and ``split``.

    ``train`` and ``heldout`` draw from different random streams, so the same seed gives
    different stories in the two splits. Document ids are ``0 .. n_docs - 1``. A prefix
    of a corpus is the smaller corpus: ``generate_corpus(10, s)[:5] == generate_corpus(5, s)``.
    """
    return list(iter_corpus(n_docs, seed, split))


def iter_corpus(n_docs: int, seed: int, split: Split = "train") -> Iterator[Document]:
    """The documents of :func:`generate_corpus`, one at a time (memory independent of
    ``n_docs``). Bad arguments raise at the call, not at the first document."""
    if n_docs < 0:
        raise StoryworldError(f"n_docs must be 0 or more, got {n_docs}")
    if split not in _SPLIT_SALT:
        raise StoryworldError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(f"storyworld/{split}/{_SPLIT_SALT[split]}/{seed}")
    return (_story(rng, i) for i in range(n_docs))
