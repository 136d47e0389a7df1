"""A run with 1,000 tracked neurons: every page and table answer stays bounded (rows per
page, bytes), whatever the query. The times are printed, not asserted (see bench/)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dashboard_synthetic import TINY_KWARGS, build_large_run
from fastapi.testclient import TestClient

from lookuplens.model import load_model
from lookuplens.model.tiny import build_tiny_model
from lookuplens.server import ServeConfig, create_app


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestClient, object]:
    root: Path = tmp_path_factory.mktemp("large")
    model = build_tiny_model("gpt2", root / "model", **TINY_KWARGS)
    run = build_large_run(root / "run", str(model))
    t0 = time.perf_counter()
    app = create_app(run.path, lm=load_model(model, device="cpu"))
    print(f"\nlarge run: app built in {time.perf_counter() - t0:.2f} s")
    return TestClient(app, base_url="http://127.0.0.1"), app


def test_pages_stay_bounded(large: tuple[TestClient, object]) -> None:
    client, app = large
    data = app.state.data  # type: ignore[attr-defined]
    cfg: ServeConfig = app.state.config  # type: ignore[attr-defined]
    assert int((data.neurons.group != "other").sum()) == 1000
    kept = data.pairs[data.pairs.kept].iloc[0]
    n = data.neurons[data.neurons.group == "selected"].iloc[0]
    pages = [
        "/",
        "/?npage=20&nsort=best_e&porder=asc",
        "/?ngroup=all&pkept=all&psort=mean_direct",
        f"/neurons/{n.layer}/{n.neuron}",
        f"/pairs/{kept.layer}/{kept.neuron}/{kept.head_layer}/{kept['head']}",
        "/playground",
        "/api/neurons",
        "/api/pairs?kept=all",
        f"/api/neurons/{n.layer}/{n.neuron}",
        f"/api/neurons/{n.layer}/{n.neuron}/activations",
        f"/api/pairs/{kept.layer}/{kept.neuron}/{kept.head_layer}/{kept['head']}/attention",
    ]
    for url in pages:
        t0 = time.perf_counter()
        r = client.get(url)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.get(url)
        again = time.perf_counter() - t0
        assert r.status_code == 200, (url, r.text[:200])
        assert len(r.content) < 400_000, (url, len(r.content))
        print(f"{url[:60]:60s} {len(r.content) / 1000:7.1f} kB {first * 1000:7.1f} ms, "
              f"cached {again * 1000:6.1f} ms")  # fmt: skip
    html = client.get("/").text
    assert html.count('<tr><td><a href="/neurons/') == cfg.page_size
    assert html.count('<tr><td><a href="/pairs/') == cfg.page_size
    body = client.get("/api/neurons", params={"per_page": cfg.max_page_size}).json()
    assert len(body["rows"]) == cfg.max_page_size and body["total"] == 1000
    assert client.get("/api/neurons", params={"per_page": cfg.max_page_size + 1}).status_code == 400
    last = client.get("/api/neurons", params={"page": 20}).json()
    assert len(last["rows"]) == 1000 - 19 * cfg.page_size
    assert client.get("/api/neurons", params={"page": 21}).json()["rows"] == []
    detail = client.get(f"/api/neurons/{n.layer}/{n.neuron}").json()
    assert len(detail["examples"]) <= cfg.max_prompts and len(detail["heads"]) <= cfg.max_heads
