"""The planted worlds' ground-truth helpers (`lookuplens.zoo.ground_truth`)."""

from __future__ import annotations

import pytest

from lookuplens.zoo import tripworld
from lookuplens.zoo.ground_truth import WORLDS, _ratio_of_means
from lookuplens.zoo.words import TOPICS, VOWEL_OBJECTS


def test_a_finding_claims_the_planted_look_up_only_with_a_cue_that_decides_its_target() -> None:
    story = WORLDS["storyworld"].cues_of
    assert story(" an") == VOWEL_OBJECTS
    assert story(" bread") == tuple(p for p, t in TOPICS.items() if t == "bread") == ("bakery",)
    assert story(" Felix") == ("Felix",)
    trip = WORLDS["tripworld"].cues_of
    for item in tripworld.ITEMS:
        cues = trip(f" {item}")
        deciding = {
            s
            for s in tripworld.SEASONS
            for t in tripworld.TRIGGERS
            if tripworld.item_for(s, t) == item
        }
        assert set(cues) == deciding and len(cues) == 4  # two seasons per trigger
    assert "spring" in trip(" umbrella") and "winter" not in trip(" umbrella")


def test_shares_weigh_each_prompt_by_what_the_neuron_has_to_lose() -> None:
    # (activation, drop): a prompt at 0.01 that loses 0.02 would be a share of 2 alone
    assert _ratio_of_means([(1.0, 0.5), (0.01, 0.02)]) == pytest.approx(0.52 / 1.01)
    assert _ratio_of_means([(2.0, 0.4)]) == pytest.approx(0.2)
