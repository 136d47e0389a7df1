"""The storyworld generator: determinism and annotations that agree with the text."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from lookuplens.zoo.storyworld import (
    ADJECTIVE_SHARE,
    CONSONANT_OBJECTS,
    NAMES,
    PLANTED,
    TOPICS,
    VOWEL_OBJECTS,
    VOWEL_SHARE,
    Document,
    StoryworldError,
    generate_corpus,
)
from lookuplens.zoo.words import FEMALE_NAMES, FEMALE_ROLES, ROLES


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return generate_corpus(600, seed=7, split="train")


def test_same_seed_same_output() -> None:
    assert generate_corpus(50, seed=3) == generate_corpus(50, seed=3)
    assert generate_corpus(50, seed=3, split="heldout") == generate_corpus(50, 3, "heldout")


def test_prefix_is_smaller_corpus() -> None:
    assert generate_corpus(20, seed=1)[:10] == generate_corpus(10, seed=1)


def test_different_seeds_and_splits_differ() -> None:
    a = [d.text for d in generate_corpus(50, seed=3)]
    b = [d.text for d in generate_corpus(50, seed=4)]
    c = [d.text for d in generate_corpus(50, seed=3, split="heldout")]
    assert len(set(a) & set(b)) < 3
    assert len(set(a) & set(c)) < 3


def test_bad_arguments_raise() -> None:
    with pytest.raises(StoryworldError):
        generate_corpus(-1, seed=0)
    with pytest.raises(StoryworldError):
        generate_corpus(1, seed=0, split="test")  # type: ignore[arg-type]


def test_doc_ids_and_lengths(docs: list[Document]) -> None:
    assert [d.doc_id for d in docs] == list(range(len(docs)))
    words = [len(d.text.split()) for d in docs]
    assert min(words) >= 25 and max(words) <= 140
    assert 50 <= sorted(words)[len(words) // 2] <= 100


def test_mix_of_kinds(docs: list[Document]) -> None:
    n_none = sum(1 for d in docs if not d.annotations)
    assert 0.12 < n_none / len(docs) < 0.28
    kinds = Counter(a.kind for d in docs for a in d.annotations)
    assert set(kinds) == {"article", "topic", "name"}
    assert min(kinds.values()) > 0.2 * len(docs)
    assert any(len({a.kind for a in d.annotations}) > 1 for d in docs)
    for d in docs:  # one planted article or topic prediction at most, two names at most
        per_kind = Counter(a.kind for a in d.annotations)
        assert per_kind["article"] <= 1 and per_kind["topic"] <= 1 and per_kind["name"] <= 2
    assert len({w.strip(".,") for d in docs for w in d.text.split()}) > 250


def test_targets_appear_at_target_char(docs: list[Document]) -> None:
    for d in docs:
        for a in d.annotations:
            assert a.target.startswith(" ")
            assert d.text[a.target_char : a.target_char + len(a.target)] == a.target
            end = a.target_char + len(a.target)
            assert end == len(d.text) or not d.text[end].isalpha()
            for start, stop in a.cue_chars:
                assert stop <= a.target_char  # cues come before the target
                assert d.text[start - 1] == " "


def test_article_annotations(docs: list[Document]) -> None:
    seen = Counter()
    for d in docs:
        for a in (a for a in d.annotations if a.kind == "article"):
            ((s, e),) = a.cue_chars
            assert d.text[s:e] == a.cue_word
            after = d.text[a.target_char + len(a.target) :]
            assert a.cue_word in VOWEL_OBJECTS + CONSONANT_OBJECTS
            expected = " an" if a.cue_word in VOWEL_OBJECTS else " a"
            assert a.target == expected
            # the article is followed by the same object noun
            assert after.startswith(" " + a.cue_word)
            # the object is mentioned exactly twice: cue and after the target
            assert len(re.findall(rf"\b{a.cue_word}\b", d.text)) == 2
            seen[a.target] += 1
    assert seen[" a"] > 50 and seen[" an"] > 50


def test_an_is_the_marked_article() -> None:
    """As in English, " a" is the common article; " an" has to be switched on."""
    targets = Counter(
        a.target
        for d in generate_corpus(3000, seed=1)
        for a in d.annotations
        if a.kind == "article"
    )
    share = targets[" an"] / (targets[" a"] + targets[" an"])
    assert abs(share - VOWEL_SHARE) < 0.04


def test_articles_only_in_article_stories(docs: list[Document]) -> None:
    """Besides the two fixed phrases, an indefinite article comes only before the planted
    object or item, or before an adjective that then decides it ("a tiny owl")."""
    n_adjective = n_recalls = 0
    for d in docs:
        text = d.text.replace("waited for an hour", "").replace("took a nap", "")
        recalls = len(re.findall(r"(?:draw|about|for) an? ", text))
        n_planted = sum(1 for a in d.annotations if a.kind == "article")
        n_intro = len(re.findall(r"(?:found|saw|with|kept) an? ", text))
        assert len(re.findall(r" an? ", text)) == recalls + n_intro
        assert n_planted <= recalls
        n_recalls += recalls
        n_adjective += recalls - n_planted
        for m in re.finditer(r"(?:draw|about|for) (an?) (\w+) (\w+)", text):
            if m[2] not in VOWEL_OBJECTS + CONSONANT_OBJECTS:
                assert m[1] == ("an" if m[2][0] in "aeiou" else "a")  # adjective decides
    assert abs(n_adjective / n_recalls - ADJECTIVE_SHARE) < 0.05


def test_topic_annotations(docs: list[Document]) -> None:
    for d in docs:
        for a in (a for a in d.annotations if a.kind == "topic"):
            ((s, e),) = a.cue_chars
            assert d.text[s:e] == a.cue_word in TOPICS
            assert a.target == " " + TOPICS[a.cue_word]
            assert d.text[: a.target_char].endswith("bought some")
        # the trigger phrase never appears without a planted topic target
        n_trigger = d.text.count(" bought some ")
        assert n_trigger == sum(1 for a in d.annotations if a.kind == "topic")
        # no other topic place appears in the story
        places = {w for w in TOPICS if re.search(rf"\b{w}\b", d.text)}
        assert places <= {a.cue_word for a in d.annotations if a.kind == "topic"}


def test_name_annotations(docs: list[Document]) -> None:
    for d in docs:
        n_names = sum(1 for a in d.annotations if a.kind == "name")
        n_roles = sum(len(re.findall(rf"\b{r}\b", d.text)) for r in ROLES)
        n_intros = len(re.findall(r"(?:The|In the town lived the) (?:\w+) (?:\w+) and the", d.text))
        assert n_roles == 2 * n_intros + n_names  # two roles per intro, one per recall
        assert n_intros <= n_names <= 2 * n_intros
        for a in (a for a in d.annotations if a.kind == "name"):
            (ns, ne), (rs, re_) = a.cue_chars
            name, role = d.text[ns:ne], d.text[rs:re_]
            assert name == a.cue_word in NAMES and a.target == " " + name
            assert role in ROLES
            # the two characters are a woman and a man, and the role has its name's gender
            assert (role in FEMALE_ROLES) == (name in FEMALE_NAMES)
            assert d.text[: a.target_char].endswith(f", the {role}")
            # the intro sentence binds this role to this name and another role to another name
            start = d.text.rfind(".", 0, rs) + 2
            intro = d.text[start : d.text.index(".", ne) + 1]
            pattern = (
                r"(?:The|In the town lived the) (\w+) (\w+) and the (\w+) (\w+)"
                r"(?: were old friends)?\."
            )
            m = re.fullmatch(pattern, intro)
            assert m, intro
            pairs = {(m[2], m[1]), (m[4], m[3])}
            assert (name, role) in pairs and len({m[1], m[3]}) == 2 and len({m[2], m[4]}) == 2
            assert (m[2] in FEMALE_NAMES) != (m[4] in FEMALE_NAMES)
            assert ne == rs + len(role) + 1 + len(name)  # "pilot Ben"


def test_planted_ground_truth_is_consistent() -> None:
    art = PLANTED["article"]
    assert set(art.targets) == {" a", " an"}
    assert len(VOWEL_OBJECTS) == len(CONSONANT_OBJECTS) == 20
    assert all(w[0] in "aeiou" for w in VOWEL_OBJECTS)
    assert all(w[0] not in "aeiou" for w in CONSONANT_OBJECTS)
    assert dict(art.cue_to_target)["owl"] == " an"
    assert dict(PLANTED["topic"].cue_to_target)["bakery"] == " bread"
    assert " some" not in PLANTED["topic"].targets
    assert len(TOPICS) == 8 and len(set(TOPICS.values())) == 8


def test_article_slots_are_weighted_like_planted_targets() -> None:
    """Training weights the articles an adjective decided as it weights the planted ones,
    so the model learns p(" an") of about 1 - ADJECTIVE_SHARE instead of saturating."""
    from lookuplens.zoo.storyworld_train import _planted_predict_positions

    docs = [d for d in generate_corpus(300, seed=5) if d.article_slots]
    assert docs
    for d in docs[:20]:
        text = d.text
        # offsets of each word start, as a tokenizer splitting at spaces would give
        offsets = [(m.start(), m.end()) for m in re.finditer(r" ?[^ ]+", text)]
        positions = _planted_predict_positions(d, offsets, 10_000)
        targets = {s for s, _ in offsets[1:]}
        for char in [a.target_char for a in d.annotations] + list(d.article_slots):
            assert char in targets
            t = next(i for i, (s, _) in enumerate(offsets) if s == char)
            # token t without BOS is t + 1 with it, so the position predicting it is t
            assert t in positions
        assert text[d.article_slots[0] : d.article_slots[0] + 3] in (" a ", " an")
