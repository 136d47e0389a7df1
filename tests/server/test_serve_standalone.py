"""The dashboard's read-only pages of a run directory whose model is gone: the shading and
the vocabulary come from the views table; only the playground needs the model. A run
directory made before the table existed still gets them, from the model."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from dashboard_fixtures import Served

from lookuplens.report.compute import last_position_attention, neuron_activations, vocab_tokens
from lookuplens.store import RunDir


def _client(path: Path):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from lookuplens.server import create_app

    return TestClient(create_app(path), base_url="http://127.0.0.1")


def _copy_without_model(served: Served, dest: Path) -> Path:
    """The run directory copied to `dest`, its run.json pointing at a model folder that
    does not exist (as after moving or deleting the model)."""
    shutil.copytree(served.run.path, dest)
    run = RunDir.open(dest)
    gone = str(dest.parent / "no-such-model")
    config = dict(run.meta["config"])  # type: ignore[call-overload]
    model = dict(run.meta["model"])  # type: ignore[call-overload]
    run.update_meta(config={**config, "model": gone}, model={**model, "path": gone})
    return dest


def test_the_table_stores_what_the_dashboard_shows() -> None:
    from lookuplens.report.views import VIEW_PROMPTS
    from lookuplens.server.config import ServeConfig

    assert ServeConfig().max_prompts == VIEW_PROMPTS


def test_read_only_pages_work_without_the_model(served: Served, tmp_path: Path) -> None:
    copy = _copy_without_model(served, tmp_path / "copy")
    c = _client(copy)
    layer, neuron, hl, h = served.kept_pair()
    for url in ("/", f"/neurons/{layer}/{neuron}", f"/pairs/{layer}/{neuron}/{hl}/{h}"):
        r = c.get(url)
        assert r.status_code == 200, (url, r.text[:300])
    ex = served.run.read_df("examples").set_index("example_id")
    lm = served.lm  # only to check the values against
    act = c.get(f"/api/neurons/{layer}/{neuron}/activations")
    assert act.status_code == 200, act.text[:300]
    prompts = act.json()["prompts"]
    assert prompts
    tokens = [list(ex.loc[p["example_id"], "tokens"]) for p in prompts]
    want = neuron_activations(lm, tokens, [(layer, neuron)] * len(prompts))
    for p, a in zip(prompts, want, strict=True):
        assert p["tokens"] == [lm.token_str(int(t)) for t in ex.loc[p["example_id"], "tokens"]]
        np.testing.assert_allclose(p["values"], a, rtol=1e-5, atol=1e-6)
        assert 'class="t act' in p["html"]
    att = c.get(f"/api/pairs/{layer}/{neuron}/{hl}/{h}/attention")
    assert att.status_code == 200, att.text[:300]
    prompts = att.json()["prompts"]
    assert prompts
    pats = last_position_attention(
        lm, [list(ex.loc[p["example_id"], "tokens"]) for p in prompts], hl
    )
    for p, pat in zip(prompts, pats, strict=True):
        np.testing.assert_allclose(p["values"], pat[h], rtol=1e-5, atol=1e-6)
        assert 'class="t attn' in p["html"]
    vocab = c.get(f"/api/neurons/{layer}/{neuron}/vocab")
    assert vocab.status_code == 200, vocab.text[:300]
    v = vocab_tokens(lm, [(layer, neuron)], 10)[(layer, neuron)]
    got = vocab.json()["data"]
    assert [x["token_id"] for x in got["promoted"]] == [i for i, _ in v.promoted]
    assert [x["token_id"] for x in got["suppressed"]] == [i for i, _ in v.suppressed]
    assert "Promoted tokens" in vocab.json()["html"]
    assert c.get("/api/model").json()["loaded"] is False
    # the playground needs the model, and says so
    r = c.post(
        "/api/playground", json={"prompt": served.lines[0], "layer": layer, "neuron": neuron}
    )
    assert r.status_code == 400 and "no-such-model" in r.text
    assert c.get(f"/api/neurons/{layer}/{neuron}/activations").status_code == 200


def test_same_answers_as_the_model(client, served: Served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The table's answers are the ones the model gives a run made before the table."""
    old = tmp_path / "old"
    shutil.copytree(served.run.path, old)
    (old / "views.parquet").unlink()
    c = _client(old)
    layer, neuron, hl, h = served.kept_pair()
    for url in (
        f"/api/neurons/{layer}/{neuron}/activations",
        f"/api/pairs/{layer}/{neuron}/{hl}/{h}/attention",
        f"/api/neurons/{layer}/{neuron}/vocab",
    ):
        a, b = c.get(url).json(), client.get(url).json()
        if "prompts" in a:
            assert [p["example_id"] for p in a["prompts"]] == [
                p["example_id"] for p in b["prompts"]
            ]
            assert [p["tokens"] for p in a["prompts"]] == [p["tokens"] for p in b["prompts"]]
            for p, q in zip(a["prompts"], b["prompts"], strict=True):
                np.testing.assert_allclose(p["values"], q["values"], rtol=1e-5, atol=1e-6)
        else:
            assert a["html"] == b["html"]
    assert c.get("/api/model").json()["loaded"] is True


def test_run_without_views_loads_the_model_and_says_why(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "old"
    shutil.copytree(served.run.path, old)
    (old / "views.parquet").unlink()
    c = _client(old)
    layer, neuron, hl, h = served.kept_pair()
    with caplog.at_level(logging.INFO, logger="lookuplens"):
        assert c.get(f"/api/neurons/{layer}/{neuron}/activations").status_code == 200
        assert c.get(f"/api/pairs/{layer}/{neuron}/{hl}/{h}/attention").status_code == 200
    lines = [
        r for r in caplog.records if r.levelno >= logging.INFO and "views table" in r.getMessage()
    ]
    assert len(lines) == 1 and "no views table" in lines[0].getMessage()
    assert c.get("/api/model").json()["loaded"] is True


def test_what_the_table_lacks_goes_to_the_model(served: Served, tmp_path: Path) -> None:
    """A pair that was not kept is not stored: its page asks the model."""
    pairs = served.run.read_df("pairs")
    other = pairs[~pairs.kept]
    if other.empty:
        pytest.skip("the tiny run kept every pair")
    r = other.iloc[0]
    copy = tmp_path / "copy"
    shutil.copytree(served.run.path, copy)
    c = _client(copy)
    url = f"/api/pairs/{r.layer}/{r.neuron}/{r.head_layer}/{r['head']}/attention"
    assert c.get(url).status_code == 200
    assert c.get("/api/model").json()["loaded"] is True
