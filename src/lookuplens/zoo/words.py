"""The storyworld's vocabulary and its ground truth (:data:`PLANTED`).

Every planted target and cue word is a single token of the bundled tokenizer
(:func:`lookuplens.zoo.storyworld.check_tokenizer` verifies it). Filler words never
overlap the planted ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["article", "topic", "name"]
Split = Literal["train", "heldout"]

KINDS: tuple[Kind, ...] = ("article", "topic", "name")
BOS_TOKEN = "<|endoftext|>"

# --------------------------------------------------------------------------------------
# Word lists (the ground truth).  Every planted target and cue word is a single token of
# the bundled tokenizer; ``check_tokenizer`` verifies it.
# --------------------------------------------------------------------------------------

VOWEL_OBJECTS: tuple[str, ...] = (
    "apple", "umbrella", "egg", "owl", "orange", "igloo", "anchor", "elephant",
    "envelope", "acorn", "iguana", "octopus", "ostrich", "eagle", "emerald", "onion",
    "otter", "arrow", "oven", "axe",
)  # fmt: skip
CONSONANT_OBJECTS: tuple[str, ...] = (
    "banana", "rabbit", "kitten", "puppy", "lantern", "pear", "parrot", "turtle",
    "bicycle", "cake", "guitar", "hammer", "necklace", "pumpkin", "robot", "sandwich",
    "teapot", "violin", "zebra", "penguin",
)  # fmt: skip
TOPICS: dict[str, str] = {
    "bakery": "bread",
    "harbour": "fish",
    "library": "books",
    "garden": "roses",
    "cafe": "coffee",
    "pharmacy": "medicine",
    "station": "tickets",
    "market": "cheese",
}
FEMALE_NAMES: tuple[str, ...] = (
    "Anna", "Mia", "Lily", "Emma", "Sara", "Nora", "Lucy", "Ruth", "Clara", "Rosa",
    "Ella", "Grace", "Hannah", "Julia", "Kate", "Laura", "Maya", "Olga", "Paula", "Tess",
)  # fmt: skip
MALE_NAMES: tuple[str, ...] = (
    "Ben", "Tom", "Sam", "Leo", "Max", "Jack", "Omar", "Paul", "Hugo", "Noah",
    "Oscar", "Peter", "Ravi", "Felix", "Ivan", "Karl", "Luke", "Mark", "Dan", "Carl",
)  # fmt: skip
NAMES: tuple[str, ...] = FEMALE_NAMES + MALE_NAMES
FEMALE_ROLES: tuple[str, ...] = (
    "queen", "princess", "aunt", "nun", "duchess", "bride", "actress", "waitress",
)  # fmt: skip
MALE_ROLES: tuple[str, ...] = (
    "king", "prince", "uncle", "monk", "duke", "groom", "actor", "waiter",
)  # fmt: skip
ROLES: tuple[str, ...] = FEMALE_ROLES + MALE_ROLES
"""Gendered roles: a name look-up introduces a woman and a man, so the role's gender
decides the name (one look-up, as GPT-2 resolves "she" to Mary)."""

# Filler vocabulary: never a planted target or cue.
PLACES: tuple[str, ...] = (
    "river", "forest", "hill", "lake", "bridge", "village", "meadow", "beach", "field",
    "pond", "road", "park", "barn", "castle", "cave", "valley", "tower", "square",
    "mill", "well",
)  # fmt: skip
ANIMALS: tuple[str, ...] = (
    "dog", "cat", "horse", "cow", "goat", "sheep", "duck", "fox", "bear", "mouse",
    "frog", "pig", "deer", "hen", "wolf", "goose", "donkey", "pony", "lamb", "crow",
)  # fmt: skip
THINGS: tuple[str, ...] = (
    "box", "basket", "ball", "kite", "cup", "hat", "lamp", "rope", "bell", "boat",
    "chair", "table", "door", "window", "blanket", "candle", "map", "key", "letter",
    "coin", "shoe", "scarf", "bottle", "bucket", "ladder", "drum", "flag", "wagon",
    "mirror", "clock", "spoon", "brush", "stone", "shell", "feather", "jar", "pillow",
    "sled", "tent", "whistle",
)  # fmt: skip
ADJECTIVES: tuple[str, ...] = (
    "big", "small", "old", "new", "red", "blue", "green", "yellow", "shiny", "heavy",
    "soft", "tiny", "round", "bright", "quiet", "warm", "cold", "wet", "dry", "funny",
    "strange", "clean", "dusty", "broken", "golden", "wooden", "pretty", "long",
    "dark", "light",
)  # fmt: skip
MOODS: tuple[str, ...] = (
    "happy", "sleepy", "brave", "gentle", "hungry", "tired", "calm", "proud", "curious",
    "cheerful", "busy", "shy",
)  # fmt: skip
WEATHER: tuple[str, ...] = ("sunny", "rainy", "windy", "cloudy", "foggy", "snowy", "hot", "cool")
TRANSITIVE: tuple[str, ...] = (
    "carried", "painted", "cleaned", "moved", "opened", "dropped", "lifted", "pushed",
    "pulled", "fixed", "washed", "watched", "held", "kicked", "shook", "counted",
    "packed", "dried", "filled", "mended", "wrapped", "touched", "checked", "polished",
)  # fmt: skip
INTRANSITIVE: tuple[str, ...] = (
    "slept", "jumped", "ran", "sat", "waited", "played", "rested", "sang", "danced",
    "wandered", "hid", "splashed", "yawned", "listened",
)  # fmt: skip
OPENERS: tuple[str, ...] = (
    "One morning", "Long ago", "In the spring", "Last summer", "One evening",
    "On one cold day", "Early one day", "In the autumn", "Once", "Yesterday",
)  # fmt: skip


def article_for(word: str) -> str:
    """The indefinite article before ``word``: "an" before a vowel letter, else "a"."""
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class PlantedSet:
    """Ground truth for one kind of planted look-up."""

    kind: Kind
    targets: tuple[str, ...]
    """Target token texts, each with its leading space (e.g. ``" an"``)."""
    cue_words: tuple[str, ...]
    """Words whose earlier mention decides the target (without a leading space)."""
    cue_to_target: tuple[tuple[str, str], ...]
    """(cue word, target text) pairs where the cue fixes the target; empty for ``name``."""


PLANTED: dict[Kind, PlantedSet] = {
    "article": PlantedSet(
        kind="article",
        targets=(" a", " an"),
        cue_words=VOWEL_OBJECTS + CONSONANT_OBJECTS,
        cue_to_target=tuple((w, " an") for w in VOWEL_OBJECTS)
        + tuple((w, " a") for w in CONSONANT_OBJECTS),
    ),
    "topic": PlantedSet(
        kind="topic",
        targets=tuple(" " + t for t in TOPICS.values()),
        cue_words=tuple(TOPICS),
        cue_to_target=tuple((p, " " + t) for p, t in TOPICS.items()),
    ),
    "name": PlantedSet(
        kind="name",
        targets=tuple(" " + n for n in NAMES),
        cue_words=NAMES + ROLES,
        cue_to_target=(),
    ),
}
"""Ground truth per kind: target tokens and cue words, for precision and recall checks."""


def single_token_words() -> tuple[str, ...]:
    """Every target and cue word (with a leading space) that must be one token."""
    words: list[str] = [" a", " an"]
    words += [" " + w for w in VOWEL_OBJECTS + CONSONANT_OBJECTS]
    words += [" " + w for w in TOPICS] + [" " + w for w in TOPICS.values()]
    words += [" " + w for w in NAMES + ROLES]
    return tuple(words)
