"""Headline findings from the verify stage's cue swaps (`lookuplens.findings`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from lookuplens.findings import FindingsConfig, cue_token_ids, find_findings


def tables() -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """Four (neuron, head) pairs with swaps: one finding and three that fail a rule."""
    examples, effects = [], []
    eid = 0

    def add(neuron: int, head: int, removed: float, dlp: float, read: int) -> None:
        nonlocal eid
        examples.append({"example_id": eid, "tokens": [0, read, 7, 9], "trimmed_activation": 2.0})
        effects.append(
            {"example_id": eid, "layer": 1, "neuron": neuron, "head_layer": 0, "head": head,
             "intervention": "head_source_swap", "delta_activation": -2.0 * removed,
             "delta_logprob": dlp, "swap_position": 1}
        )  # fmt: skip
        effects.append(
            {"example_id": eid, "layer": 1, "neuron": neuron, "head_layer": 0, "head": head,
             "intervention": "head_zero_ablation", "delta_activation": -2.0,
             "delta_logprob": -5.0, "swap_position": None}
        )  # fmt: skip
        eid += 1

    for read in (11, 11, 12, 11):  # the finding: the head reads 11 (mostly) and 12
        add(5, 2, 0.8, -2.0, read)
    for _ in range(4):  # removes as much but p(token) rises: not a look-up for the token
        add(6, 2, 0.8, 1.0, 13)
    for _ in range(4):  # removes too little
        add(7, 1, 0.1, -1.0, 14)
    for _ in range(2):  # too few prompts
        add(8, 3, 0.9, -3.0, 15)
    neurons = pa.Table.from_pylist(
        [
            {"layer": 1, "neuron": n, "token": f" t{n}", "selected": n != 8, "baseline": n == 8}
            for n in (5, 6, 7, 8)
        ]
    )
    pairs = pa.Table.from_pylist(
        [
            {"layer": 1, "neuron": 5, "head_layer": 0, "head": 2, "kept": True, "ks_stat": 0.7},
            {
                "layer": 1,
                "neuron": 6,
                "head_layer": 0,
                "head": 2,
                "kept": False,
                "ks_stat": float("nan"),
            },
        ]  # fmt: skip
    )
    return pa.Table.from_pylist(effects), pa.Table.from_pylist(examples), neurons, pairs


def test_a_finding_needs_a_large_share_on_most_prompts_and_a_falling_token() -> None:
    effects, examples, neurons, pairs = tables()
    assert cue_token_ids(effects, examples) == {11, 12, 13, 14, 15}
    text = {11: " owl", 12: " egg"}
    got = find_findings(effects, examples, neurons, pairs, text).to_pylist()
    assert len(got) == 1
    f = got[0]
    assert (f["layer"], f["neuron"], f["head_layer"], f["head"]) == (1, 5, 0, 2)
    assert f["cue"] == "owl, egg" and f["cue_token_ids"] == [11, 12]
    assert f["n_swapped"] == 4 and abs(f["median_share_removed"] - 0.8) < 1e-12
    assert f["fraction_removed"] == 1.0 and f["median_delta_logprob"] == -2.0
    assert f["ks_stat"] == 0.7 and f["kept"] and not f["baseline"] and f["token"] == " t5"
    assert f["prompts"] == "top"
    # each rule, relaxed, lets its pair through
    loose = FindingsConfig(min_share=0.05, max_delta_logprob=2.0, min_swaps=2)
    keys = {(r["neuron"], r["head"]) for r in find_findings(
        effects, examples, neurons, pairs, text, loose).to_pylist()}  # fmt: skip
    assert keys == {(5, 2), (6, 2), (7, 1), (8, 3)}


def test_findings_fit_the_run_directory_format(tmp_path: Path) -> None:
    from lookuplens.store import RunDir

    effects, examples, neurons, pairs = tables()
    run = RunDir.create(tmp_path / "run", {})
    run.write_table("findings", find_findings(effects, examples, neurons, pairs, {}))
    back = run.read_table("findings").to_pylist()
    assert len(back) == 1 and back[0]["cue"] == "<11>, <12>"


def test_on_token_prompts_are_tested_apart_from_the_strongest_firings() -> None:
    """A look-up that shows only where the neuron's token comes next: mixed with the top
    prompts its median falls below the bar; tested apart it passes, and says so."""
    examples, effects = [], []

    def add(eid: int, removed: float, read: int, on_token: bool) -> None:
        examples.append({"example_id": eid, "tokens": [0, read, 7, 9],
                         "trimmed_activation": 1.0, "on_token": on_token})  # fmt: skip
        effects.append({"example_id": eid, "layer": 1, "neuron": 5, "head_layer": 0, "head": 2,
                        "intervention": "head_source_swap", "delta_activation": -removed,
                        "delta_logprob": -1.0, "swap_position": 1})  # fmt: skip

    for i in range(8):  # the strongest firings: the head carries little of their cues
        add(i, 0.05, 13, False)
    for i in range(8, 12):  # where the token came next: it carries the cue (word 11)
        add(i, 0.6, 11, True)
    neurons = pa.Table.from_pylist(
        [{"layer": 1, "neuron": 5, "token": " t5", "selected": True, "baseline": False}]
    )
    pairs = pa.Table.from_pylist(
        [{"layer": 1, "neuron": 5, "head_layer": 0, "head": 2, "kept": True, "ks_stat": 0.5}]
    )
    ex = pa.Table.from_pylist(examples)
    eff = pa.Table.from_pylist(effects)
    got = find_findings(eff, ex, neurons, pairs, {11: " owl"}).to_pylist()
    assert len(got) == 1
    f = got[0]
    assert f["prompts"] == "on_token" and f["n_swapped"] == 4 and f["cue"] == "owl"
    assert abs(f["median_share_removed"] - 0.6) < 1e-12
    # one set of prompts (no on_token column): the mixed median (0.05) fails
    assert find_findings(eff, ex.drop(["on_token"]), neurons, pairs, {}).num_rows == 0
    # when both sets pass, the strongest firings are reported (also when weaker there)
    both = [dict(e, delta_activation=-0.3) if e["example_id"] < 8 else e for e in effects]
    got = find_findings(pa.Table.from_pylist(both), ex, neurons, pairs, {}).to_pylist()
    assert got[0]["prompts"] == "top" and got[0]["n_swapped"] == 8
