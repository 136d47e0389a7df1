"""The offline explainer and simulator on a run directory with planted labels."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from conftest import (
    BASELINE_PAIR,
    DROPPED_PAIR,
    ONE_CLASS_PAIR,
    PLANTED_PAIR,
    RANDOM_PAIR,
)
from lookuplens.explain import (
    ExplainConfig,
    ScoreConfig,
    StoredExplanation,
    TaskConfig,
    explain_run,
    load_tasks,
    score_run,
)
from lookuplens.explain.base import Env
from lookuplens.explain.config import LLMConfig, OfflineConfig
from lookuplens.explain.errors import ExplainConfigError
from lookuplens.explain.offline import OfflineSimulator, last_token_attention
from lookuplens.model import hook_name


def _rows(table: pa.Table) -> dict[tuple, dict]:
    return {(r["layer"], r["neuron"], r["head_layer"], r["head"]): r for r in table.to_pylist()}


@pytest.fixture
def explained(tiny_lm, run_dir):
    table = explain_run(tiny_lm, run_dir, ExplainConfig())
    run_dir.write_table("explanations", table)
    return table


def test_offline_explainer_names_the_planted_tokens(explained):
    rows = _rows(explained)
    assert DROPPED_PAIR not in rows  # not kept
    for pair in (PLANTED_PAIR, BASELINE_PAIR):
        r = rows[pair]
        assert r["status"] == "ok" and r["llm_model"] is None
        assert "owl" in r["explanation"] and "apple" in r["explanation"]
        assert r["explanation"].startswith("The head is active when the prompt contains")
        assert 1 <= r["explanation"].count(".") <= 3
        feats = json.loads(r["features"])
        shown = {f["text"].strip() for f in feats["features"] if f["weight"] > 0}
        assert shown == {"owl", "apple"}
        assert feats["train_balanced_accuracy"] == 1.0
        # the attention part is machine-usable: measured, with a verdict
        assert all(f["attended"] in (True, False) for f in feats["features"])
        assert all(0 <= f["attention_active"] <= 1 for f in feats["features"])
    assert rows[BASELINE_PAIR]["baseline"] and not rows[PLANTED_PAIR]["baseline"]
    assert rows[PLANTED_PAIR]["prompt_tokens"] == 0  # offline: no LLM


def test_offline_scores(tiny_lm, run_dir, explained, capsys):
    scores, stats = score_run(tiny_lm, run_dir, ScoreConfig())
    run_dir.write_table("scores", scores)
    rows = _rows(scores)
    planted = rows[PLANTED_PAIR]
    print(
        "offline E: planted",
        planted["balanced_accuracy"],
        "baseline planted",
        rows[BASELINE_PAIR]["balanced_accuracy"],
        "random labels",
        rows[RANDOM_PAIR]["balanced_accuracy"],
    )
    assert planted["status"] == "ok" and planted["n_test"] == 18
    assert planted["balanced_accuracy"] >= 0.9
    assert planted["auroc"] >= 0.9
    assert planted["tp"] + planted["fn"] == planted["n_test_active"]
    assert rows[BASELINE_PAIR]["balanced_accuracy"] >= 0.9 and rows[BASELINE_PAIR]["baseline"]
    assert 0.25 <= rows[RANDOM_PAIR]["balanced_accuracy"] <= 0.75
    lacking = rows[ONE_CLASS_PAIR]
    assert lacking["status"] == "one_class" and "undefined" in lacking["note"]
    assert lacking["balanced_accuracy"] is None and lacking["tp"] is None
    assert lacking["n_test"] == 18 and lacking["n_test_active"] == 0

    sel, base = stats["pairs"]["selected"], stats["pairs"]["baseline"]
    assert sel["rows"] == 3 and sel["n"] == 2 and sel["unscored"] == {"one_class": 1}
    expected = (planted["balanced_accuracy"] + rows[RANDOM_PAIR]["balanced_accuracy"]) / 2
    assert sel["mean"] == pytest.approx(expected)
    assert base["n"] == 1 and base["mean"] >= 0.9
    json.dumps(stats, allow_nan=False)  # serialisable as is


def test_neuron_tasks_contrast_firing_and_other_contexts(tiny_lm, run_dir):
    cfg = TaskConfig(targets="neurons")
    tasks = load_tasks(tiny_lm, run_dir, cfg)
    assert [(t.layer, t.neuron, t.head) for t in tasks] == [
        (1, 3, None),
        (1, 7, None),
        (1, 11, None),
    ]
    river = tasks[2]
    # balanced: as many non-firing contexts as own examples, per split
    assert sum(it.active for it in river.train) == 30 == sum(not it.active for it in river.train)
    assert sum(not it.active for it in river.test) == 18
    own = {it.example_id for it in river.train + river.test if it.active}
    assert not any(it.text.endswith("river") for it in river.test if not it.active)
    assert len(own) == 48

    table = explain_run(tiny_lm, run_dir, ExplainConfig(tasks=cfg))
    assert table.column("head").null_count == table.num_rows == 3
    run_dir.write_table("explanations", table)
    row = _rows(table)[(1, 11, None, None)]
    assert row["explanation"].startswith("The neuron fires when the prompt")
    assert "river" in row["explanation"]
    scores, stats = score_run(tiny_lm, run_dir, ScoreConfig(tasks=cfg))
    run_dir.write_table("scores", scores)
    assert _rows(scores)[(1, 11, None, None)]["balanced_accuracy"] >= 0.9
    assert stats["neurons"]["baseline"]["n"] == 1 and stats["pairs"]["selected"]["rows"] == 0


def _set_activations(run_dir, neuron: int, values) -> None:
    """Give `neuron`'s examples the activations `values(k)` (k: its k-th example)."""
    examples = run_dir.read_table("examples")
    acts, k = [], 0
    for n, a in zip(
        examples.column("neuron").to_pylist(),
        examples.column("trimmed_activation").to_pylist(),
        strict=True,
    ):
        if n == neuron:
            a, k = values(k), k + 1
        acts.append(a)
    i = examples.column_names.index("trimmed_activation")
    run_dir.write_table("examples", examples.set_column(i, "trimmed_activation", pa.array(acts)))


def test_a_neuron_without_non_firing_contexts_is_reported(tiny_lm, run_dir):
    # the median is 0, so nothing counts as non-firing; one prompt fires, so it is not silent
    _set_activations(run_dir, 7, lambda k: 0.5 if k == 0 else 0.0)
    cfg = TaskConfig(targets="neurons")
    table = explain_run(tiny_lm, run_dir, ExplainConfig(tasks=cfg))
    row = _rows(table)[(1, 7, None, None)]
    assert row["status"] == "one_class" and row["explanation"] is None and row["features"] is None
    run_dir.write_table("explanations", table)
    scores, stats = score_run(tiny_lm, run_dir, ScoreConfig(tasks=cfg))
    row = _rows(scores)[(1, 7, None, None)]
    assert row["status"] == "one_class" and row["balanced_accuracy"] is None
    assert stats["neurons"]["selected"]["unscored"] == {"one_class": 1}


@pytest.mark.parametrize("values", [lambda k: 0.0, lambda k: -0.01 * (k + 1)])
def test_a_neuron_that_never_fires_is_not_explained(tiny_lm, run_dir, values):
    """At most 0 on all its strongest prompts: status ``silent`` in both stages, for the
    neuron and for its pairs, instead of an explanation fitted to noise."""
    _set_activations(run_dir, 7, values)
    table = explain_run(tiny_lm, run_dir, ExplainConfig())
    rows = [r for k, r in _rows(table).items() if k[:2] == (1, 7)]
    assert {r["target"] for r in rows} == {"neuron", "pair"}
    for row in rows:
        assert row["status"] == "silent" and row["explanation"] is None
        assert "never fires" in row["note"]
    others = [r for k, r in _rows(table).items() if k[:2] != (1, 7)]
    assert others and all(r["status"] != "silent" for r in others)
    run_dir.write_table("explanations", table)
    scores, stats = score_run(tiny_lm, run_dir, ScoreConfig())
    rows = [r for k, r in _rows(scores).items() if k[:2] == (1, 7)]
    assert rows and all(r["status"] == "silent" and r["balanced_accuracy"] is None for r in rows)
    assert stats["neurons"]["selected"]["unscored"] == {"silent": 1}


def test_offline_simulator_refuses_llm_explanations(tiny_lm, run_dir):
    env = Env(tiny_lm, run_dir, TaskConfig(), OfflineConfig(), LLMConfig())
    task = load_tasks(tiny_lm, run_dir, TaskConfig(targets="pairs"))[0]
    res = OfflineSimulator(env).simulate(task, StoredExplanation("llm", "Active on owls.", None))
    assert res.status == "unsupported" and res.predicted is None and "llm scorer" in res.note


def test_score_needs_explanations_of_that_explainer(tiny_lm, run_dir, explained):
    with pytest.raises(ExplainConfigError, match="lookuplens explain --explainer llm"):
        score_run(tiny_lm, run_dir, ScoreConfig(explainer="llm"))


def test_last_token_attention_matches_unbatched(tiny_lm):
    prompts = [[0, 261, 288, 269], [0, 261, 288, 269, 270, 298, 268], [0, 5]]
    batched = last_token_attention(tiny_lm, prompts, 1, 2, batch_tokens=64)
    import torch

    for p, got in zip(prompts, batched, strict=True):
        name = hook_name(1, "attn.hook_pattern")
        _, cache = tiny_lm.run_with_cache(torch.tensor([p]), [name], stop_after_layer=1)
        want = cache[name][0, 2, -1].double().numpy()
        assert got.shape == (len(p),)
        assert abs(got.sum() - 1) < 1e-5
        assert max(abs(got - want)) < 1e-5


def test_mismatched_control_scores_each_pair_with_another_neurons_explanation(
    tiny_lm, run_dir, explained
):
    from lookuplens.explain import score_stage

    out = score_stage(tiny_lm, run_dir, ScoreConfig())
    ctl = _rows(out.controls)
    # the pairs of neuron 3 get the only other selected neuron's explained pair (L1N7/L0H2,
    # trained on the planted rule); L1N7's own pair has a one-class test set and the
    # baseline neuron has no other baseline neuron to borrow from: no rows for them
    assert set(ctl) == {PLANTED_PAIR, RANDOM_PAIR}
    tasks = {t.key: t for t in load_tasks(tiny_lm, run_dir, TaskConfig())}
    expl = {
        (r["layer"], r["neuron"], r["head_layer"], r["head"]): StoredExplanation(
            "offline", r["explanation"], r["features"]
        )
        for r in explained.to_pylist()
    }
    env = Env(tiny_lm, run_dir, TaskConfig(), OfflineConfig(), LLMConfig(), score=ScoreConfig())
    for key, row in ctl.items():
        donor = (
            row["donor_layer"],
            row["donor_neuron"],
            row["donor_head_layer"],
            row["donor_head"],
        )
        assert donor == ONE_CLASS_PAIR and row["baseline"] is False
        res = OfflineSimulator(env).simulate(tasks[key], expl[donor])
        actual = [it.active for it in tasks[key].test]
        tp = sum(p and a for p, a in zip(res.predicted, actual, strict=True))
        tn = sum(not p and not a for p, a in zip(res.predicted, actual, strict=True))
        n_pos = sum(actual)
        assert (row["tp"], row["tn"]) == (tp, tn)
        assert row["balanced_accuracy"] == pytest.approx(
            (tp / n_pos + tn / (len(actual) - n_pos)) / 2
        )
    # the donor's rule is the planted one, so it transfers to the planted pair: the control
    # measures specificity, it is not low by construction
    assert ctl[PLANTED_PAIR]["balanced_accuracy"] >= 0.9
    own = _rows(out.scores)
    m = out.stats["mismatched"]["selected"]
    assert m["n"] == m["paired_n"] == 2
    assert m["own_minus_mismatched"] == pytest.approx(
        sum(own[k]["balanced_accuracy"] - ctl[k]["balanced_accuracy"] for k in ctl) / 2
    )
    assert "mismatched" not in score_run(tiny_lm, run_dir, ScoreConfig(mismatched_control=False))[1]
    assert not ScoreConfig(explainer="llm").control_on  # it would double the LLM requests


def test_neuron_explanation_names_the_words_that_raise_the_activation(tiny_lm, run_dir):
    """Firing prompts share a trigger (their last token); those where an earlier word came
    fire more: the explanation names that word as what modulates the neuron."""
    from lookuplens.explain.base import Item, Task
    from lookuplens.explain.offline import OfflineExplainer

    rng = __import__("numpy").random.default_rng(0)
    enc = tiny_lm.tokenizer
    bos = tiny_lm.bos_token_id

    def prompt(text: str) -> tuple[int, ...]:
        return (bos, *enc(text, add_special_tokens=False)["input_ids"])

    items = []
    for i in range(60):
        owl = i % 2 == 0
        filler = " ".join(rng.choice(["the", "river", "was", "cold", "tree"], 5))
        text = f" {filler}{' owl' if owl else ' apple'} {filler} then"
        act = 2.0 + (1.0 if owl else 0.0) + float(rng.normal(0, 0.1))
        items.append(Item(i, prompt(text), text, True, act))
    for i in range(60, 100):
        text = " ".join(rng.choice(["the", "river", "was", "cold", "tree"], 8))
        items.append(Item(i, prompt(text), text, False, None))
    task = Task(1, 3, None, None, 0, " x", False, tuple(items), ())
    env = Env(tiny_lm, run_dir, TaskConfig(), OfflineConfig(), LLMConfig())
    out = OfflineExplainer(env).explain(task)
    assert out.status == "ok"
    mod = json.loads(out.features)["modulators"]
    assert [w.strip() for w in mod["words"]] == ["owl"]
    assert mod["mean_with"] > mod["mean_without"] + 0.8
    assert 'fires more when "owl" came earlier' in out.text
    # without the rise there is nothing to name
    flat = tuple(
        Item(it.example_id, it.tokens, it.text, it.active, 2.0 if it.active else None)
        for it in items
    )
    out = OfflineExplainer(env).explain(Task(1, 3, None, None, 0, " x", False, flat, ()))
    assert json.loads(out.features)["modulators"] == {} and "fires more" not in out.text
