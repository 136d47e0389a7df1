"""The LLM explainer and simulator end to end over real HTTP against a local server."""

from __future__ import annotations

import logging
import secrets

import pyarrow as pa
import pytest

from conftest import BASELINE_PAIR, ONE_CLASS_PAIR, PLANTED_PAIR, RANDOM_PAIR
from lookuplens.explain import (
    ExplainConfig,
    ExplainConfigError,
    LLMConfig,
    LLMConfigError,
    ScoreConfig,
    TaskConfig,
    explain_run,
    score_run,
)

KEY_ENV = "LOOKUPLENS_TEST_LLM_KEY"
PAIRS = TaskConfig(targets="pairs")


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, value)
    return value


def llm(fake, **kw) -> LLMConfig:
    return LLMConfig(
        model="fake-model",
        base_url=fake.url,
        api_key_env=KEY_ENV,
        timeout_s=1.0,
        max_retries=3,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        **kw,
    )


def _rows(table: pa.Table) -> dict[tuple, dict]:
    return {(r["layer"], r["neuron"], r["head_layer"], r["head"]): r for r in table.to_pylist()}


def _assert_key_nowhere(root, key: str) -> int:
    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        assert key.encode() not in p.read_bytes(), f"the API key leaked into {p}"
    return len(files)


def test_llm_end_to_end_retries_and_cache(tiny_lm, run_dir, fake_llm, key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake_llm.delay_s = 2.5
    fake_llm.faults = ["429", "500", "timeout"]
    ecfg = ExplainConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm))
    table = explain_run(tiny_lm, run_dir, ecfg)
    rows = _rows(table)
    assert set(rows) == {PLANTED_PAIR, RANDOM_PAIR, ONE_CLASS_PAIR, BASELINE_PAIR}
    assert all(r["status"] == "ok" for r in rows.values())
    assert all("owl" in r["explanation"] and r["llm_model"] == "fake-model" for r in rows.values())
    assert all(r["features"] is None and r["prompt_tokens"] > 0 for r in rows.values())
    first = table.to_pylist()[0]
    assert first["requests"] == 4  # 429, 500, timeout, then the answer
    assert sum(r["requests"] for r in rows.values()) == 7 == fake_llm.requests
    assert fake_llm.auth == {f"Bearer {key}"}
    run_dir.write_table("explanations", table)

    scfg = ScoreConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm))
    scores, stats = score_run(tiny_lm, run_dir, scfg)
    run_dir.write_table("scores", scores)
    srows = _rows(scores)
    assert fake_llm.kinds["simulate_batch"] == 3  # one request per scored pair
    assert srows[PLANTED_PAIR]["balanced_accuracy"] == 1.0 == srows[PLANTED_PAIR]["auroc"]
    assert srows[BASELINE_PAIR]["balanced_accuracy"] == 1.0 and srows[BASELINE_PAIR]["baseline"]
    assert srows[ONE_CLASS_PAIR]["status"] == "one_class"
    assert srows[ONE_CLASS_PAIR]["balanced_accuracy"] is None
    assert srows[ONE_CLASS_PAIR]["requests"] is None  # no request for an unscorable pair
    assert srows[PLANTED_PAIR]["requests"] == 1 and srows[PLANTED_PAIR]["scheme"] == "batched"
    assert stats["usage"]["requests"] == 3 and stats["pairs"]["baseline"]["mean"] == 1.0

    # a rerun is answered from the cache: no request reaches the server
    sent = fake_llm.requests
    table2 = explain_run(tiny_lm, run_dir, ecfg)
    scores2, _ = score_run(tiny_lm, run_dir, scfg)
    assert fake_llm.requests == sent
    assert table2.column("explanation").to_pylist() == table.column("explanation").to_pylist()
    assert table2.column("prompt_tokens").to_pylist() == table.column("prompt_tokens").to_pylist()
    assert set(table2.column("requests").to_pylist()) == {0}
    assert set(table2.column("cached_requests").to_pylist()) == {1}
    assert scores2.column("balanced_accuracy").equals(scores.column("balanced_accuracy"))

    # the key is in no file under tmp_path (tables, cache, run.json) and in no log record
    assert any((run_dir.path / "llm_cache").rglob("*.json"))
    assert _assert_key_nowhere(tmp_path, key) > 5
    assert key not in caplog.text


def test_malformed_answers_are_failures(tiny_lm, run_dir, fake_llm, key):
    fake_llm.faults = ["empty"]
    ecfg = ExplainConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm))
    table = explain_run(tiny_lm, run_dir, ecfg)
    first = table.to_pylist()[0]
    assert first["status"] == "malformed" and first["explanation"] is None
    assert first["prompt_tokens"] > 0  # what the failed answer cost is recorded
    assert table.column("status").to_pylist()[1:] == ["ok"] * 3
    # the malformed answer is not cached: a rerun asks again for that task only
    sent = fake_llm.requests
    table = explain_run(tiny_lm, run_dir, ecfg)
    assert fake_llm.requests == sent + 1
    assert set(table.column("status").to_pylist()) == {"ok"}
    run_dir.write_table("explanations", table)

    fake_llm.faults = ["malformed", "wrong_ids"]
    scfg = ScoreConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm))
    scores, stats = score_run(tiny_lm, run_dir, scfg)
    run_dir.write_table("scores", scores)
    rows = scores.to_pylist()
    assert [r["status"] for r in rows] == ["malformed", "malformed", "one_class", "ok"]
    assert "not JSON" in rows[0]["note"] and "wrong ids" in rows[1]["note"]
    assert all(r["balanced_accuracy"] is None and r["tp"] is None for r in rows[:3])
    assert stats["status"] == {"malformed": 2, "one_class": 1, "ok": 1}
    assert stats["pairs"]["selected"]["unscored"] == {"malformed": 2, "one_class": 1}
    sent = fake_llm.requests
    scores, _ = score_run(tiny_lm, run_dir, scfg)
    assert fake_llm.requests == sent + 2
    assert scores.column("status").to_pylist() == ["ok", "ok", "one_class", "ok"]


def test_budget_stops_cleanly(tiny_lm, run_dir, fake_llm, key):
    capped = ExplainConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm, max_requests=2))
    table = explain_run(tiny_lm, run_dir, capped)
    assert table.column("status").to_pylist() == ["ok", "ok", "budget", "budget"]
    assert fake_llm.requests == 2
    last = table.to_pylist()[-1]
    assert last["explanation"] is None and "max_requests" in last["note"]
    assert last["requests"] == 0

    tokens = ExplainConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm, max_tokens=10))
    table = explain_run(tiny_lm, run_dir, tokens)  # cached answers are free, new ones refused
    assert table.column("status").to_pylist() == ["ok", "ok", "budget", "budget"]
    assert fake_llm.requests == 2

    full = ExplainConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm))
    table = explain_run(tiny_lm, run_dir, full)
    assert set(table.column("status").to_pylist()) == {"ok"} and fake_llm.requests == 4


def test_batched_scheme_costs_far_fewer_prompt_tokens(tiny_lm, run_dir, fake_llm, key, capsys):
    ecfg = ExplainConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm))
    run_dir.write_table("explanations", explain_run(tiny_lm, run_dir, ecfg))
    measured: dict[str, dict[str, object]] = {}
    for scheme in ("batched", "per_prompt"):
        scfg = ScoreConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm), scheme=scheme)
        scores, stats = score_run(tiny_lm, run_dir, scfg)
        measured[scheme] = stats["usage"]  # type: ignore[assignment]
        rows = _rows(scores)
        assert rows[PLANTED_PAIR]["balanced_accuracy"] == 1.0
        assert (rows[PLANTED_PAIR]["auroc"] is None) == (scheme == "per_prompt")
        assert rows[PLANTED_PAIR]["requests"] == (1 if scheme == "batched" else 18)
    batched = measured["batched"]["prompt_tokens_per_scored_pair"]
    paper = measured["per_prompt"]["prompt_tokens_per_scored_pair"]
    ratio = {
        "batched": batched,
        "per_prompt": paper,
        "per_prompt_over_batched": paper / batched,
        "completion_tokens": {s: measured[s]["completion_tokens"] for s in measured},
    }
    with capsys.disabled():
        print(f"\nprompt tokens per scored pair (18 held-out prompts): {ratio}")
    # the fixed part of a request (instructions, explanation) is paid once per pair, not
    # once per prompt; with 18 prompts of ~15 tokens that is about a quarter of the tokens
    assert paper > 3 * batched


def test_refused_key_is_a_config_error_without_the_key(tiny_lm, run_dir, fake_llm, key):
    fake_llm.faults = ["401"]
    ecfg = ExplainConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm))
    with pytest.raises(LLMConfigError, match="HTTP 401") as info:
        explain_run(tiny_lm, run_dir, ecfg)
    assert KEY_ENV in str(info.value) and key not in str(info.value)
    assert fake_llm.requests == 1  # not retried


def test_missing_key_variable(tiny_lm, run_dir, fake_llm, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    ecfg = ExplainConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm))
    with pytest.raises(LLMConfigError, match=f"export {KEY_ENV}="):
        explain_run(tiny_lm, run_dir, ecfg)
    assert fake_llm.requests == 0


def test_neuron_tasks_through_the_llm(tiny_lm, run_dir, fake_llm, key):
    cfg = TaskConfig(targets="neurons")
    ecfg = ExplainConfig(explainer="llm", tasks=cfg, llm=llm(fake_llm))
    table = explain_run(tiny_lm, run_dir, ecfg)
    assert table.column("head_layer").null_count == 3
    assert all("river" in t for t in table.column("explanation").to_pylist())
    run_dir.write_table("explanations", table)
    scores, stats = score_run(
        tiny_lm, run_dir, ScoreConfig(explainer="llm", tasks=cfg, llm=ecfg.llm)
    )
    run_dir.write_table("scores", scores)
    river = _rows(scores)[(1, 11, None, None)]
    assert river["balanced_accuracy"] == 1.0 and river["n_test"] == 36
    assert stats["neurons"]["baseline"]["mean"] == 1.0
    with pytest.raises(ExplainConfigError, match="--scorer llm"):
        score_run(tiny_lm, run_dir, ScoreConfig(explainer="llm", scorer="offline", tasks=cfg))


def test_llm_mismatched_control_when_asked(tiny_lm, run_dir, fake_llm, key):
    from lookuplens.explain import score_stage

    ecfg = ExplainConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm))
    run_dir.write_table("explanations", explain_run(tiny_lm, run_dir, ecfg))
    scfg = ScoreConfig(explainer="llm", tasks=PAIRS, llm=llm(fake_llm), mismatched_control=True)
    before = fake_llm.kinds["simulate_batch"]
    out = score_stage(tiny_lm, run_dir, scfg)
    ctl = {
        (r["layer"], r["neuron"], r["head_layer"], r["head"]): r for r in out.controls.to_pylist()
    }
    # neuron 3's two pairs borrow neuron 7's explanation, one batched request each (the
    # fake LLM explains every pair alike, so the same request as for the pair's own
    # explanation: answered from the cache), on top of the 3 for the own explanations
    assert set(ctl) == {PLANTED_PAIR, RANDOM_PAIR}
    assert all(r["status"] == "ok" for r in ctl.values())
    assert all(r["requests"] + r["cached_requests"] == 1 for r in ctl.values())
    sent = sum(r["requests"] for r in ctl.values())
    assert fake_llm.kinds["simulate_batch"] - before == 3 + sent
    assert out.stats["mismatched"]["selected"]["n"] == 2
