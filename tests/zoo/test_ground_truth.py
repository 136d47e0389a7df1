"""The planted worlds' ground-truth helpers (`lookuplens.zoo.ground_truth`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lookuplens.store import RunDir
from lookuplens.zoo import tripworld
from lookuplens.zoo.ground_truth import (
    WORLDS,
    _neuron_explanations,
    _ratio_of_means,
    names_a_cue,
)
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


def test_an_explanation_names_a_cue_only_by_quoting_a_planted_cue_word() -> None:
    cues = WORLDS["tripworld"].cues_of(" umbrella")
    assert names_a_cue('After "her" it fires more when "spring" or "then" came earlier', cues)
    assert names_a_cue('fires when "in April ," came earlier', cues)  # a word of a quote
    assert not names_a_cue("fires after her when spring came earlier", cues)  # not quoted
    assert not names_a_cue('fires when "springtime" or "winter" came earlier', cues)
    # named as what silences the neuron: not the deciding cue of its token
    silent = 'The neuron fires when the prompt contains "packed". It is silent when the prompt'
    assert not names_a_cue(silent + ' contains "spring" or "april".', cues)
    assert not names_a_cue('The neuron fires unless the prompt contains "april".', cues)
    assert names_a_cue('The neuron fires when the prompt contains "the well." or "april".', cues)


def test_the_comparison_reads_each_target_neurons_own_explanation(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", {"config": {}})
    rows = [  # (layer, neuron, target, explanation)
        (2, 5, "neuron", 'After "her" it fires more when "april" came earlier.'),
        (2, 5, "pair", 'The head is active when the prompt contains "winter".'),
        (2, 7, "neuron", 'The neuron fires when the prompt contains "sold".'),
        (0, 1, "neuron", None),
    ]
    run.write_table(
        "explanations",
        pd.DataFrame(
            {
                "layer": [r[0] for r in rows],
                "neuron": [r[1] for r in rows],
                "head_layer": pd.array([None if r[2] == "neuron" else 1 for r in rows], "Int64"),
                "head": pd.array([None if r[2] == "neuron" else 0 for r in rows], "Int64"),
                "explainer": ["offline"] * len(rows),
                "llm_model": [None] * len(rows),
                "prompt_tokens": [0] * len(rows),
                "completion_tokens": [0] * len(rows),
                "target": [r[2] for r in rows],
                "explanation": [r[3] for r in rows],
                "status": ["ok" if r[3] else "silent" for r in rows],
            }
        ),
    )
    names = {(2, 5): " umbrella", (2, 7): " coat", (1, 3): " hat", (0, 1): " scarf"}
    got = _neuron_explanations(run, WORLDS["tripworld"], names, {(2, 5)})
    assert got["' umbrella' L2N5"]["names_a_cue"] is True
    assert got["' umbrella' L2N5"]["takes_part"] and not got["' coat' L2N7"]["takes_part"]
    assert got["' coat' L2N7"]["names_a_cue"] is False  # its pair's "winter" does not count
    none = {"explanation": None, "names_a_cue": False, "takes_part": False}
    assert got["' hat' L1N3"] == none | {"status": None}  # no row at all
    assert got["' scarf' L0N1"] == none | {"status": "silent"}
