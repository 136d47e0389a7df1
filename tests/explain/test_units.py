"""Parsers, metrics, statistics, configs and registries of the explain package."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from lookuplens.explain import (
    ExplainConfig,
    LLMConfig,
    MalformedAnswerError,
    OfflineConfig,
    ScoreConfig,
    TaskConfig,
    auroc,
    confusion,
    register_explainer,
    register_scorer,
    score_statistics,
    summarize,
)
from lookuplens.explain.client import LLMClient
from lookuplens.explain.features import cue_positions, log_odds, prompt_cues
from lookuplens.explain.metrics import best_threshold
from lookuplens.explain.prompts import parse_explanation, parse_predictions, parse_yes_no


def test_parse_predictions_accepts_the_schema_and_fences():
    answer = (
        '```json\n{"predictions": [{"id": 2, "active": false}, '
        '{"id": 1, "active": true, "confidence": 0.7}]}\n```'
    )
    assert parse_predictions(answer, 2) == [(True, 0.7), (False, None)]
    chatty = 'Here you go: {"predictions": [{"id": "1", "active": true, "confidence": 1}]} Done.'
    assert parse_predictions(chatty, 1) == [(True, 1.0)]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("yes, all of them", "not JSON"),
        ('{"answers": []}', "predictions"),
        ('{"predictions": [{"id": 1, "active": "yes"}]}', "true or false"),
        ('{"predictions": [{"id": 1, "active": true, "confidence": 3}]}', r"\[0, 1\]"),
        ('{"predictions": [{"id": 1, "active": true}, {"id": 1, "active": true}]}', "twice"),
        ('{"predictions": [{"id": 1, "active": true}, {"id": 3, "active": true}]}', "wrong ids"),
        ('{"predictions": [{"id": 1, "active": true}]}', "wrong ids"),
        ('{"predictions": [{"id": true, "active": true}, {"id": 2, "active": true}]}', "integer"),
    ],
)
def test_parse_predictions_rejects_malformed(answer, message):
    with pytest.raises(MalformedAnswerError, match=message):
        parse_predictions(answer, 2)


def test_parse_yes_no_and_explanation():
    assert parse_yes_no("Yes.") is True and parse_yes_no(" no") is False
    with pytest.raises(MalformedAnswerError):
        parse_yes_no("Maybe")
    assert parse_explanation('  "Active on owls.\n Really."  ') == "Active on owls. Really."
    with pytest.raises(MalformedAnswerError):
        parse_explanation(" \n ")


def test_metrics():
    c = confusion([True, True, False, False, True], [True, False, False, True, True])
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 1, 1, 1)
    assert c.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert confusion([True, False], [True, True]).balanced_accuracy is None
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auroc([0.5, 0.5], [False, True]) == 0.5
    assert auroc([0.5, 0.5], [True, True]) is None
    t, ba = best_threshold(np.array([0.0, 2.0, 0.0, 3.0]), np.array([False, True, False, True]))
    assert ba == 1.0 and 0 < t < 2


def test_summarize_matches_scipy():
    rng = np.random.default_rng(0)
    e = rng.beta(2, 5, size=40)
    out = summarize(e.tolist(), 0.8)
    assert out["n"] == 40 and out["mean"] == pytest.approx(e.mean())
    assert out["std"] == pytest.approx(e.std(ddof=1))
    assert out["skew"] == pytest.approx(sps.skew(e))
    test = sps.skewtest(e)
    assert out["skewtest_statistic"] == pytest.approx(test.statistic)
    assert out["skewtest_pvalue"] == pytest.approx(test.pvalue)
    assert out["share_ge_0.8"] == pytest.approx((e >= 0.8).mean())
    few = summarize([0.5, 0.7], 0.8)
    assert few["skewtest_pvalue"] is None and few["mean"] == pytest.approx(0.6)
    assert summarize([], 0.8)["mean"] is None
    json.dumps(out, allow_nan=False)


def test_score_statistics_groups_selected_baseline_pairs_neurons():
    n = 12
    table = pa.table(
        {
            "explainer": ["offline"] * n,
            "scorer": ["offline"] * n,
            "head_layer": [0] * 10 + [None] * 2,
            "head": [1] * 10 + [None] * 2,
            "baseline": [False] * 8 + [True] * 2 + [False, True],
            "balanced_accuracy": [0.9, 0.8, 0.5, 0.6, 1.0, 0.85, 0.7, None, 0.5, 0.4, 0.75, 0.55],
            "auroc": [0.95] + [None] * 11,
            "status": ["ok"] * 7 + ["one_class"] + ["ok"] * 4,
            "prompt_tokens": [100] * n,
        }
    )
    out = score_statistics(table)
    sel = out["pairs"]["selected"]
    assert sel["rows"] == 8 and sel["n"] == 7 and sel["unscored"] == {"one_class": 1}
    assert sel["mean"] == pytest.approx(np.mean([0.9, 0.8, 0.5, 0.6, 1.0, 0.85, 0.7]))
    assert sel["share_ge_0.8"] == pytest.approx(4 / 7) and sel["mean_auroc"] == 0.95
    assert out["pairs"]["baseline"]["mean"] == pytest.approx(0.45)
    assert out["neurons"]["selected"]["mean"] == 0.75 and out["neurons"]["baseline"]["n"] == 1
    assert out["status"] == {"ok": 11, "one_class": 1}
    json.dumps(out, allow_nan=False)
    mixed = table.set_column(1, "scorer", pa.array(["llm"] + ["offline"] * (n - 1)))
    with pytest.raises(ValueError, match="filter"):
        score_statistics(mixed)


def test_cues_and_log_odds():
    cues = prompt_cues((5, 6, 7), 2)
    assert ("contains", (6, 7)) in cues and ("ends_with", (7,)) in cues
    assert ("ends_with", (5, 6)) not in cues
    assert cue_positions((5, 6, 5, 6), ("contains", (5, 6))) == [0, 1, 2, 3]
    assert cue_positions((5, 6, 7), ("ends_with", (6,))) == []
    delta, z = log_odds(
        np.array([9.0, 1.0, 5.0]), 10, np.array([1.0, 9.0, 5.0]), 10, np.full(3, 0.5), 2.0
    )
    assert delta[0] > 0 > delta[1] and abs(delta[2]) < 1e-12 and z[0] > 2


def test_configs_validate_with_the_fix():
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        LLMConfig(api_key_env="sk-live-abc123")
    with pytest.raises(ValueError, match="choose one of"):
        ExplainConfig(explainer="gpt5")
    with pytest.raises(ValueError, match="choose one of"):
        ScoreConfig(scorer="nope")
    with pytest.raises(ValueError, match="targets"):
        TaskConfig(targets="heads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_ngram"):
        OfflineConfig(max_ngram=0)
    with pytest.raises(ValueError, match="backoff"):
        LLMConfig(backoff_initial_s=5, backoff_max_s=1)
    assert ScoreConfig(explainer="offline").scorer_name == "offline"
    assert ScoreConfig(explainer="offline", scorer="llm").scorer_name == "llm"


def test_registries_refuse_a_second_registration():
    with pytest.raises(ValueError, match="already registered"):
        register_explainer("offline", lambda env: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("llm", lambda env: None)  # type: ignore[arg-type,return-value]


def test_cache_key_ignores_the_key_and_covers_the_request():
    msgs = [{"role": "user", "content": "hi"}]
    params = {"temperature": 0.0, "max_completion_tokens": 5}
    k = LLMClient.cache_key("m", msgs, params)
    assert k == LLMClient.cache_key("m", [dict(m) for m in msgs], dict(params))
    assert k != LLMClient.cache_key("m2", msgs, params)
    assert k != LLMClient.cache_key("m", msgs, {**params, "temperature": 0.5})
    assert k != LLMClient.cache_key("m", [{"role": "user", "content": "hi!"}], params)


def test_cue_lists_stay_short_and_name_their_class() -> None:
    from lookuplens.explain.offline import MAX_QUOTED, name_list, token_class

    assert [token_class(c) for c in ("19", "1,200", ".", "),", "Paris", "owl", "")] == [
        "number", "number", "punctuation mark", "punctuation mark", "capitalised word", None,
        None,
    ]  # fmt: skip
    nums = [str(n) for n in (19, 200, 32, 7, 1999, 12, 64)]
    got = name_list([f'"{n}"' for n in nums], nums)
    assert got == 'a number ("19", "200", "32", "7", "1999", and 2 more)'
    words = [f"w{i}" for i in range(66)]
    got = name_list([f'"{w}"' for w in words], words)
    assert got.count('"') == 2 * MAX_QUOTED and got.endswith("or one of 61 more")
    assert name_list(['"a"', '"b"'], ["a", "b"]) == '"a" or "b"'
    assert name_list(['"an"', '"owl"'], ["an", "owl"], target="an") == (
        'the predicted token itself ("an") or "owl"'
    )
