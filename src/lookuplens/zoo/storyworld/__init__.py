"""Storyworld: a synthetic corpus of short stories with planted context look-ups.

Every story is generated from a seeded ``random.Random``; the same arguments always give
the same documents. Three kinds of planted predictions can only be made by looking back
at an earlier word (the *cue*):

``article``
    An object is introduced early ("Mia found the owl near the river.") and, after some
    filler, referred to again with an indefinite article ("She wanted to draw an owl.").
    Whether the next token is `` a`` or `` an`` is decided by the earlier object noun.
    The first mention uses the indefinite article only in some stories (otherwise "the"
    or a possessive), so the noun, not an earlier copy of the article, is the cue. In a
    quarter of recalls an adjective comes first ("a tiny owl") and decides the article, so
    no look-up makes " an" certain; those articles are not annotated.
``topic``
    A place named early ("At the bakery, ...") decides a later word after a trigger
    phrase shared by every place ("... bought some bread.").
``name``
    Two characters, a woman and a man, are introduced with gendered roles ("The queen
    Anna and the king Ben were old friends."); later "Later, the king" is followed by
    `` Ben``. The role's gender decides the name: one look-up, as GPT-2 resolves "she" to
    Mary. (Binding arbitrary roles, "the pilot Ben", needs a two-step induction circuit;
    a model of this size did not learn it within the CPU budget.)

Outside these look-ups the stories use only "the" before nouns, except two fixed phrases
whose article the preceding words decide ("waited for an hour", "took a nap"): the article
tokens are predicted both by a look-up and locally, as in English. The trigger phrases of
the look-ups appear nowhere else.

Token positions follow the project-wide rule: **the BOS token ``<|endoftext|>`` is
prepended to every document**, so token index 0 is BOS and the first text token has
index 1. :func:`token_positions` and :func:`encode_document` apply that rule.

The package's modules: `records` (the documents and annotations), `generate` (the
stories), `tokens` (token positions and the tokenizer check). Import the names from
``lookuplens.zoo.storyworld``.
"""

from __future__ import annotations

from lookuplens.zoo.storyworld.generate import (
    ADJECTIVE_SHARE,
    NAME_BOTH_SHARE,
    VOWEL_SHARE,
    generate_corpus,
    iter_corpus,
)
from lookuplens.zoo.storyworld.records import (
    Annotation,
    Document,
    StoryworldError,
    TokenAnnotation,
)
from lookuplens.zoo.storyworld.tokens import (
    check_tokenizer,
    encode_document,
    endoftext_id,
    token_positions,
)
from lookuplens.zoo.words import (
    BOS_TOKEN,
    KINDS,
    PLANTED,
    Kind,
    PlantedSet,
    Split,
    single_token_words,
)

# word lists that were importable from the storyworld module; they still are
from lookuplens.zoo.words import CONSONANT_OBJECTS as CONSONANT_OBJECTS
from lookuplens.zoo.words import NAMES as NAMES
from lookuplens.zoo.words import TOPICS as TOPICS
from lookuplens.zoo.words import VOWEL_OBJECTS as VOWEL_OBJECTS

__all__ = [
    "BOS_TOKEN",
    "KINDS",
    "PLANTED",
    "Annotation",
    "Document",
    "Kind",
    "PlantedSet",
    "Split",
    "StoryworldError",
    "VOWEL_SHARE",
    "ADJECTIVE_SHARE",
    "NAME_BOTH_SHARE",
    "TokenAnnotation",
    "check_tokenizer",
    "encode_document",
    "endoftext_id",
    "generate_corpus",
    "iter_corpus",
    "single_token_words",
    "token_positions",
]
