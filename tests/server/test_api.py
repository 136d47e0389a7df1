"""The dashboard's pages and JSON API on a real tiny run, checked against the tables and
against the model run by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dashboard_fixtures import Served

from lookuplens.attribute import decompose_neuron_input, upstream_layers
from lookuplens.errors import UserError
from lookuplens.model import hook_name, load_model
from lookuplens.model.tiny import build_tiny_model
from lookuplens.why import WhyConfig, explain_prediction


def _tracked(served: Served) -> list[tuple[int, int]]:
    n = served.run.read_df("neurons")
    t = n[n.selected | n.baseline]
    return list(zip(t.layer.astype(int), t.neuron.astype(int), strict=True))


def test_pages_render(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    layer, neuron, hl, h = served.kept_pair()
    for url, marker in [
        ("/", 'id="neurons"'),
        (f"/neurons/{layer}/{neuron}", "Upstream heads"),
        (f"/pairs/{layer}/{neuron}/{hl}/{h}", f"What L{hl}H{h} looks up"),
        (f"/playground?layer={layer}&neuron={neuron}", 'id="play"'),
    ]:
        r = client.get(url)
        assert r.status_code == 200, (url, r.text[:300])
        assert r.headers["content-type"].startswith("text/html")
        assert marker in r.text
        assert "http://" not in r.text and "https://" not in r.text  # nothing from the network
    r = client.get("/")
    for link in (f'href="/neurons/{layer}/{neuron}"', f'href="/pairs/{layer}/{neuron}/{hl}/{h}"'):
        assert link in r.text
    assert "E of neurons" in r.text  # the E histogram of the report


def test_playground_page_prefills_an_example(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    ex = served.run.read_df("examples").iloc[0]
    r = client.get(f"/playground?example={int(ex.example_id)}")
    assert r.status_code == 200
    assert f'value="L{int(ex.layer)}N{int(ex.neuron)}"' in r.text
    assert client.get("/playground?example=999999").status_code == 404


def test_neuron_table_sorts_filters_and_paginates(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    tracked = _tracked(served)
    r = client.get("/api/neurons", params={"sort": "congruence", "order": "asc", "per_page": 3})
    body = r.json()
    assert r.status_code == 200
    assert body["total"] == len(tracked)
    assert len(body["rows"]) == 3 and body["pages"] == -(-len(tracked) // 3)
    cong = [row["congruence"] for row in body["rows"]]
    assert cong == sorted(cong)
    rows = []
    for page in range(1, body["pages"] + 1):
        rows += client.get("/api/neurons", params={"per_page": 3, "page": page}).json()["rows"]
    assert sorted((r["layer"], r["neuron"]) for r in rows) == sorted(tracked)
    layer, neuron = tracked[0]
    one = client.get("/api/neurons", params={"q": f"l{layer}n{neuron}"}).json()
    assert [(r["layer"], r["neuron"]) for r in one["rows"]] == [(layer, neuron)]
    base = client.get("/api/neurons", params={"group": "baseline"}).json()
    assert base["total"] == int(served.run.read_df("neurons").baseline.sum())
    assert {r["group"] for r in base["rows"]} == {"baseline"}
    every = client.get("/api/neurons", params={"group": "all", "layer": 1}).json()
    assert every["total"] == int((served.run.read_df("neurons").layer == 1).sum())
    bad = client.get("/api/neurons", params={"sort": "__class__"})
    assert bad.status_code == 400 and "cannot sort by" in bad.json()["detail"]
    assert client.get("/api/neurons", params={"per_page": 100_000}).status_code == 400
    # the page itself: sort links and filter form
    page = client.get("/", params={"nsort": "layer", "norder": "asc", "nq": "zzz-no-match"})
    assert "No neuron matches." in page.text


def test_pair_table_and_detail(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    pairs = served.run.read_df("pairs")
    body = client.get("/api/pairs").json()
    assert body["total"] == int(pairs.kept.sum())
    assert client.get("/api/pairs", params={"kept": "all"}).json()["total"] == len(pairs)
    layer, neuron, hl, h = served.kept_pair()
    d = client.get(f"/api/pairs/{layer}/{neuron}/{hl}/{h}").json()
    labels = served.run.read_df("labels")
    mine = labels[
        (labels.layer == layer)
        & (labels.neuron == neuron)
        & (labels.head_layer == hl)
        & (labels["head"] == h)
    ]
    assert d["n_active"] == int(mine.active.sum())
    active_ids = {int(i) for i in mine[mine.active].example_id}
    assert {e["example_id"] for e in d["active"]} <= active_ids
    assert not {e["example_id"] for e in d["inactive"]} & active_ids
    assert d["scores"] and d["scores"][0]["tp"] is not None  # the confusion matrix counts
    assert d["e"] == pytest.approx(d["scores"][0]["balanced_accuracy"])
    page = client.get(f"/pairs/{layer}/{neuron}/{hl}/{h}").text
    assert "predicted active" in page and 'class="explanation"' in page


def test_neuron_detail_lists_every_method(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    layer, neuron, hl, h = served.kept_pair()
    d = client.get(f"/api/neurons/{layer}/{neuron}").json()
    methods = set(served.run.read_df("attributions").method)
    assert set(d["methods"]) == methods
    assert d["n_heads"] == (layer + 1) * served.lm.n_heads
    direct = [x["methods"]["direct"] for x in d["heads"]]
    assert direct == sorted(direct, reverse=True)
    att = served.run.read_df("attributions")
    a = att[
        (att.layer == layer)
        & (att.neuron == neuron)
        & (att.head_layer == hl)
        & (att["head"] == h)
        & (att.method == "zero_ablation")
    ]
    row = next(x for x in d["heads"] if (x["head_layer"], x["head"]) == (hl, h))
    assert row["methods"]["zero_ablation"] == pytest.approx(float(a.value.mean()))
    assert row["has_pair"] and row["kept"]
    assert {e["intervention"] for e in d["effects"]} >= {"neuron_zero", "neuron_mean"}


def test_activations_and_attention_match_the_model(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    layer, neuron, hl, h = served.kept_pair()
    res = client.get(f"/api/neurons/{layer}/{neuron}/activations").json()
    ex = served.run.read_df("examples").set_index("example_id")
    assert res["prompts"]
    for p in res["prompts"]:
        toks = ex.loc[p["example_id"], "tokens"]
        assert len(p["values"]) == len(toks) == len(p["tokens"])
        assert p["values"][-1] == pytest.approx(
            float(ex.loc[p["example_id"], "trimmed_activation"]), rel=1e-4, abs=1e-5
        )
        assert 'class="t act' in p["html"] and "fire" in p["html"]
    att = client.get(f"/api/pairs/{layer}/{neuron}/{hl}/{h}/attention").json()
    for p in att["prompts"]:
        assert sum(p["values"]) == pytest.approx(1.0, abs=1e-4)
        assert 'class="t attn' in p["html"]
    vocab = client.get(f"/api/neurons/{layer}/{neuron}/vocab").json()
    n = served.run.read_df("neurons")
    token_id = int(n[(n.layer == layer) & (n.neuron == neuron)].token_id.iloc[0])
    assert vocab["data"]["promoted"][0]["token_id"] == token_id
    assert "Promoted tokens" in vocab["html"]


def _ablate(lm, ids, layer, neuron, heads):  # type: ignore[no-untyped-def]
    by_layer: dict[int, list[int]] = {}
    for hl, h in heads:
        by_layer.setdefault(hl, []).append(h)

    def make(cols):  # type: ignore[no-untyped-def]
        def fn(z, _n):  # type: ignore[no-untyped-def]
            z = z.clone()
            z[:, :, cols] = 0
            return z

        return fn

    hooks = [(hook_name(hl, "attn.hook_z"), make(c)) for hl, c in by_layer.items()]
    post = hook_name(layer, "mlp.hook_post")
    logits, cache = lm.run_with_cache(ids, [post], extra_hooks=hooks)
    return logits, cache[post][0, :, neuron].double()


def test_playground_matches_the_model(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    lm = served.lm
    layer, neuron, hl, h = served.kept_pair()
    prompt = served.lines[0]
    r = client.post(
        "/api/playground",
        json={"prompt": prompt, "layer": layer, "neuron": neuron, "position": 4},
    )
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    ids = lm.to_tokens(prompt)
    _, clean = _ablate(lm, ids, layer, neuron, [])
    np.testing.assert_allclose(res["activations"], clean[1:].numpy(), rtol=1e-5, atol=1e-6)
    assert res["position"] == 4 and res["activation"] == pytest.approx(float(clean[5]))
    assert res["patched_activations"] == res["activations"] and not res["intervened"]
    # the direct terms sum to the pre-activation (the decomposition is exact)
    total = sum(x["direct"] for x in res["heads"]) + sum(res["other_terms"].values())
    assert total == pytest.approx(res["pre_activation"], rel=1e-4, abs=1e-5)
    dec = decompose_neuron_input(lm, ids[0], layer, neuron, 5)
    assert len(res["heads"]) == len(upstream_layers(lm, layer)) * lm.n_heads
    for x in res["heads"]:
        assert x["direct"] == pytest.approx(dec.terms[f"L{x['layer']}H{x['head']}"])
    # switching heads off: the same numbers as zeroing their z by hand
    off = [(hl, h), (0, (h + 1) % lm.n_heads)]
    r = client.post(
        "/api/playground",
        json={
            "prompt": prompt,
            "layer": layer,
            "neuron": neuron,
            "heads": [{"layer": a, "head": b, "scale": 0} for a, b in off],
        },
    )
    res = r.json()["result"]
    logits, patched = _ablate(lm, ids, layer, neuron, off)
    np.testing.assert_allclose(
        res["patched_activations"], patched[1:].numpy(), rtol=1e-5, atol=1e-6
    )
    probs = torch.softmax(logits[0, -1].double(), -1)
    assert res["patched_top"][0]["token_id"] == int(probs.argmax())
    assert res["patched_top"][0]["prob"] == pytest.approx(float(probs.max()), rel=1e-5)
    assert res["intervened"]
    # ablating the neuron zeroes it everywhere; amplifying doubles it
    for scale in (0.0, 2.0):
        r = client.post(
            "/api/playground",
            json={"prompt": prompt, "layer": layer, "neuron": neuron, "neuron_scale": scale},
        )
        res = r.json()["result"]
        np.testing.assert_allclose(
            res["patched_activations"], scale * np.array(res["activations"]), atol=1e-6
        )
    assert 'class="t act' in r.json()["html_clean"]


def test_playground_rejects_bad_ids(client) -> None:  # type: ignore[no-untyped-def]
    base = {"prompt": "The owl", "layer": 0, "neuron": 0}
    r = client.post("/api/playground", json={**base, "layer": 9})
    assert r.status_code == 400 and "no neuron L9N0" in r.json()["detail"]
    r = client.post("/api/playground", json={**base, "heads": [{"layer": 0, "head": 99}]})
    assert r.status_code == 400 and "no head L0H99" in r.json()["detail"]
    r = client.post("/api/playground", json={**base, "position": 999})
    assert r.status_code == 400 and "out of range" in r.json()["detail"]
    r = client.post("/api/playground", json={**base, "layer": -1})
    assert r.status_code == 422
    r = client.post("/api/playground", json={**base, "surprise": 1})
    assert r.status_code == 422  # unknown fields are refused


def test_generate_greedy_and_steered(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    lm = served.lm
    prompt = served.lines[1]
    body = {"prompt": prompt, "layer": 1, "neuron": 0, "max_new_tokens": 5}
    res = client.post("/api/generate", json=body).json()["result"]
    ids = lm.to_tokens(prompt)
    want = []
    for _ in range(5):
        logits = lm.forward(ids)
        nxt = int(logits[0, -1].argmax())
        if nxt == lm.tokenizer.eos_token_id:
            break
        want.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert res["clean"] == lm.tokenizer.decode(want)
    assert res["steered"] == res["clean"] and not res["intervened"]
    heads = [{"layer": a, "head": b, "scale": 0} for a in range(2) for b in range(lm.n_heads)]
    res = client.post("/api/generate", json={**body, "heads": heads}).json()["result"]
    assert res["intervened"] and len(res["steered_tokens"]) <= 5


def test_why_matches_explain_prediction(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    prompt = served.lines[2]
    r = client.post("/api/why", json={"prompt": prompt, "top_neurons": 3})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    want = explain_prediction(served.lm, prompt, WhyConfig(top_neurons=3))
    assert data["target"] == want.target
    assert [(n["layer"], n["neuron"]) for n in data["neurons"]] == [
        (n.layer, n.neuron) for n in want.neurons
    ]
    assert data["logit"] == pytest.approx(want.logit, rel=1e-5)
    html = r.json()["html"]
    assert want.neurons[0].name in html and "Causal check" in html
    bad = client.post("/api/why", json={"prompt": prompt, "target": " not one token at all"})
    assert bad.status_code == 400 and "single token" in bad.json()["detail"]


def test_openapi_schema_and_no_cdn_docs(client) -> None:  # type: ignore[no-untyped-def]
    schema = client.get("/api/openapi.json").json()
    paths = set(schema["paths"])
    for p in (
        "/api/run",
        "/api/neurons",
        "/api/neurons/{layer}/{neuron}",
        "/api/neurons/{layer}/{neuron}/activations",
        "/api/pairs",
        "/api/pairs/{layer}/{neuron}/{head_layer}/{head}/attention",
        "/api/playground",
        "/api/generate",
        "/api/why",
    ):
        assert p in paths
    assert "PlaygroundIn" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 404  # Swagger UI would load a CDN
    run = client.get("/api/run").json()
    assert run["model"]["n_layers"] == 2 and "neurons" in run["stages"]
    dist = client.get("/api/scores/distribution").json()
    assert dist["pairs"]["selected"]["n"] >= 1


def test_unknown_ids_are_404(client) -> None:  # type: ignore[no-untyped-def]
    for url in (
        "/neurons/99/0",
        "/pairs/0/0/9/9",
        "/api/neurons/0/999999",
        "/api/neurons/0/999999/activations",
        "/api/pairs/0/0/9/9/attention",
        "/api/examples/999999",
        "/nothing-here",
        "/api/nothing-here",
    ):
        r = client.get(url)
        assert r.status_code == 404, url
    assert "this run has no neuron L99N0" in client.get("/neurons/99/0").text


def test_model_loads_lazily_from_the_run(served: Served) -> None:
    from fastapi.testclient import TestClient

    from lookuplens.server import create_app

    app = create_app(served.run.path)
    c = TestClient(app, base_url="http://127.0.0.1")
    assert c.get("/api/model").json()["loaded"] is False
    c.get("/")  # pages never load the model
    assert c.get("/api/model").json()["loaded"] is False
    layer, neuron, hl, h = served.kept_pair()
    # the shading and the vocabulary come from the run's views table
    for url in (
        f"/api/neurons/{layer}/{neuron}/activations",
        f"/api/neurons/{layer}/{neuron}/vocab",
        f"/api/pairs/{layer}/{neuron}/{hl}/{h}/attention",
    ):
        assert c.get(url).status_code == 200, url
    assert c.get("/api/model").json()["loaded"] is False
    r = c.post(
        "/api/playground", json={"prompt": served.lines[0], "layer": layer, "neuron": neuron}
    )
    assert r.status_code == 200
    status = c.get("/api/model").json()
    assert status["loaded"] is True and status["source"] == str(served.model_path)


def test_a_model_of_another_shape_is_refused(served: Served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lookuplens.server import create_app

    other = load_model(build_tiny_model("gpt2", tmp_path / "m3", n_layers=3), device="cpu")
    with pytest.raises(UserError, match="n_layers"):
        create_app(served.run.path, lm=other)
