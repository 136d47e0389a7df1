"""The playground's "Make this a fix" (`lookuplens.server.fixes`): the interventions as
weight edits, ``POST /api/fix`` on the tiny run (measured as `lookuplens fix` measures,
exported under ``<run>/fixes/``), its errors, and the read-only report route."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dashboard_fixtures import Served

from lookuplens.errors import UserError
from lookuplens.fix.edits import Edit
from lookuplens.server.fixes import _Job, playground_edits
from lookuplens.server.schemas import FixIn
from lookuplens.server.worker import LimitError


def _listing(served: Served) -> set[str]:
    root = served.run.path / "fixes"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def _request(served: Served, **kw: object) -> dict[str, object]:
    """A head of the kept pair switched off; the target is the neuron's own token."""
    layer, neuron, hl, h = served.kept_pair()
    n = served.run.read_df("neurons")
    token_id = int(n[(n.layer == layer) & (n.neuron == neuron)].token_id.iloc[0])
    body: dict[str, object] = {
        "layer": layer,
        "neuron": neuron,
        "heads": [{"layer": hl, "head": h, "scale": 0.0}],
        "target": served.lm.token_str(token_id),
        "prompts": served.lines[:3],
        "max_kl": 10.0,
        "side_tokens": 256,
    }
    body.update(kw)
    return body


def test_playground_interventions_become_weight_edits() -> None:
    base = {"layer": 1, "neuron": 5, "target": " an"}
    req = FixIn.model_validate(
        {
            **base,
            "heads": [
                {"layer": 0, "head": 2, "scale": 0.0},
                {"layer": 1, "head": 0, "scale": 1.0},  # unchanged: no edit
                {"layer": 1, "head": 3, "scale": 0.5},
            ],
            "neuron_scale": 2.0,
        }
    )
    assert playground_edits(req, 64, 100.0) == (
        Edit("path", 0.0, layer=1, neuron=5, head_layer=0, head=2),
        Edit("path", 0.5, layer=1, neuron=5, head_layer=1, head=3),
        Edit("neuron", 2.0, layer=1, neuron=5),
    )
    whole = req.model_copy(update={"head_edit": "head"})
    assert playground_edits(whole, 64, 100.0)[:2] == (
        Edit("head", 0.0, head_layer=0, head=2),
        Edit("head", 0.5, head_layer=1, head=3),
    )
    later = FixIn.model_validate({**base, "heads": [{"layer": 2, "head": 0}]})
    with pytest.raises(UserError, match="comes after L1N5.*whole-head"):
        playground_edits(later, 64, 100.0)
    assert playground_edits(later.model_copy(update={"head_edit": "head"}), 64, 100.0) == (
        Edit("head", 0.0, head_layer=2, head=0),
    )
    with pytest.raises(UserError, match="nothing to make a fix of"):
        playground_edits(FixIn.model_validate({**base, "neuron_scale": 1.0}), 64, 100.0)
    twice = FixIn.model_validate({**base, "heads": [{"layer": 0, "head": 1}] * 2})
    with pytest.raises(UserError, match="listed twice"):
        playground_edits(twice, 64, 100.0)
    with pytest.raises(LimitError, match="out of range"):
        playground_edits(FixIn.model_validate({**base, "neuron_scale": 1e6}), 64, 100.0)
    with pytest.raises(LimitError, match="at most 1"):
        playground_edits(req, 1, 100.0)


def test_verified_head_edit_is_measured_and_exported(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    body = _request(served, head_edit="head")
    r = client.post("/api/fix", json=body)
    assert r.status_code == 200, r.text
    s = r.json()
    layer, neuron, hl, h = served.kept_pair()
    assert s["fix"] == f"L{hl}H{h} ×0"
    assert s["edits"] == [Edit("head", 0.0, head_layer=hl, head=h).to_dict()]
    assert s["target"]["goal"] == "decrease" and s["target"]["max_kl"] == 10.0
    for k in ("kl", "kl_all", "loss_change"):
        assert isinstance(s["side_effects"][k], float)
    assert 0 < s["side_tokens"] <= 256
    assert s["controls"]["n"] == 0 and s["controls"]["before"] is None
    assert isinstance(s["meets_requirement"], bool) and s["within_budget"] is True
    # the naive edits are the fix's own head and neuron: a head edit has none to compare
    assert all(re.fullmatch(r"L\d+[HN]\d+ ×0", n["edit"]) for n in s["naive"])
    # the exported fix does what the playground showed: p(neuron's token) with the head off
    for p, row in zip(body["prompts"], s["prompts"], strict=True):  # type: ignore[call-overload]
        play = client.post(
            "/api/playground",
            json={"prompt": p, "layer": layer, "neuron": neuron, "heads": body["heads"]},
        ).json()["result"]
        assert row["before"] == pytest.approx(play["neuron_token"]["prob"], rel=1e-4)
        assert row["after"] == pytest.approx(play["patched_neuron_token"]["prob"], rel=1e-4)
    assert s["p_target"]["before"] == pytest.approx(sum(row["before"] for row in s["prompts"]) / 3)

    folder = Path(s["folder"])
    assert folder == (served.run.path / "fixes" / s["name"]).resolve()
    for f in ("fix.json", "model/config.json", "report.html"):
        assert (folder / f).is_file(), f
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder
    prompts = (folder.parent / f"{s['name']}.prompts.jsonl").read_text().splitlines()
    assert [json.loads(x)["prompt"] for x in prompts] == body["prompts"]
    saved = json.loads((folder / "fix.json").read_text())
    assert saved["chosen"]["name"] == s["fix"]
    assert saved["inputs"]["run_dir"] == str(served.run.path)

    rep = client.get(s["report_url"])
    assert rep.status_code == 200 and rep.headers["content-type"].startswith("text/html")
    assert "sandbox" in rep.headers["content-security-policy"]
    assert rep.content == (folder / "report.html").read_bytes()
    got = client.get(s["fix_json_url"])
    assert got.status_code == 200 and got.json()["chosen"]["name"] == s["fix"]

    # the default: a path edit of the head into the neuron (only its write into it removed)
    r = client.post("/api/fix", json=_request(served))
    assert r.status_code == 200, r.text
    path = r.json()
    assert path["edits"] == [
        Edit("path", 0.0, layer=layer, neuron=neuron, head_layer=hl, head=h).to_dict()
    ]
    assert path["name"] != s["name"]


def test_bad_fix_requests_give_one_message_and_write_nothing(client, served: Served) -> None:  # type: ignore[no-untyped-def]
    before = _listing(served)
    cases = [
        (_request(served, target="Kzq xyz"), 400, "not a single token"),
        (_request(served, prompts=["", "  "]), 400, "at least one prompt"),
        (_request(served, heads=[]), 400, "nothing to make a fix of"),
        (_request(served, heads=[{"layer": 7, "head": 0}], head_edit="head"), 400, "2 layers"),
        (_request(served, max_kl=1e-12), 400, "no candidate stays within"),
        (_request(served, max_kl=0), 422, "max_kl"),
        (_request(served, controls=[{"prompt": "Tom", "expected": "Kzq xyz"}]), 400, "control 1"),
    ]
    for body, status, message in cases:
        r = client.post("/api/fix", json=body)
        assert r.status_code == status, (body, r.text)
        msg = r.json().get("message") or r.json()["detail"]
        assert isinstance(msg, str) and message in msg, msg
        assert "\n" not in msg
        assert _listing(served) == before, message


def test_a_second_fix_while_one_runs_is_409(app, client, served: Served) -> None:  # type: ignore[no-untyped-def]
    app.state.fixes._job = _Job()
    try:
        assert client.get("/api/fix/status").json()["running"] is True
        r = client.post("/api/fix", json=_request(served))
        assert r.status_code == 409 and "already" in r.json()["detail"]
    finally:
        app.state.fixes._job = None
    assert client.get("/api/fix/status").json() == {"running": False}


def test_report_route_refuses_traversal(client, served: Served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "report.html").write_text("<p>secret</p>")
    (outside / "fix.json").write_text("{}")
    root = served.run.path / "fixes"
    root.mkdir(exist_ok=True)
    link = root / "elsewhere"
    link.symlink_to(outside, target_is_directory=True)
    (served.run.path / "report.html").write_text("<p>run secret</p>")
    try:
        for url in (
            "/fixes/elsewhere/report.html",  # a link out of fixes/
            "/fixes/elsewhere/fix.json",
            "/fixes/..%2F/report.html",
            "/fixes/%2E%2E/report.html",
            "/fixes/..%2F..%2Freport.html",
            "/fixes/.hidden/report.html",
            "/fixes/nothing-here/report.html",
            "/fixes/x/../../report.html",
            "/fixes/%2Ftmp/report.html",
        ):
            r = client.get(url)
            assert r.status_code == 404, (url, r.status_code)
            assert "secret" not in r.text
        assert client.get("/fixes/x/model/config.json").status_code == 404  # only two files
    finally:
        link.unlink()
        (served.run.path / "report.html").unlink()


def test_fix_routes_need_the_token(served: Served) -> None:
    from fastapi.testclient import TestClient

    from lookuplens.server import create_app

    secret = "s" * 24
    app = create_app(served.run.path, lm=served.lm, token=secret, host="0.0.0.0")
    with TestClient(app, base_url="http://dash.example") as c:
        assert c.get("/fixes/x/report.html").status_code == 401
        assert c.post("/api/fix", json=_request(served)).status_code == 401
        auth = {"Authorization": f"Bearer {secret}"}
        assert c.get("/fixes/x/report.html", headers=auth).status_code == 404


def test_a_run_with_findings_gives_its_corpus_and_findings(served: Served, tmp_path: Path) -> None:
    """`run_fix` reads the run's findings with ``run_dir``: their list column and missing
    values must go into fix.json (they broke json.dumps before)."""
    import shutil

    import pandas as pd
    from fastapi.testclient import TestClient

    from lookuplens.server import create_app
    from lookuplens.store import RunDir

    copy = tmp_path / "run"
    shutil.copytree(served.run.path, copy, ignore=shutil.ignore_patterns("fixes"))
    run = RunDir.open(copy)
    body = _request(served, head_edit="head")
    layer, neuron, hl, h = served.kept_pair()
    row = {
        "layer": layer,
        "neuron": neuron,
        "token": body["target"],
        "baseline": False,
        "head_layer": hl,
        "head": h,
        "cue": "fox",
        "n_swapped": 3,
        "median_share_removed": 0.5,
        "fraction_removed": 0.5,
        "median_delta_logprob": -1.0,
        "kept": True,
        "cue_token_ids": [5, 7],
        "ks_stat": float("nan"),
    }
    run.write_table("findings", pd.DataFrame([row]))
    with TestClient(create_app(copy, lm=served.lm), base_url="http://127.0.0.1") as c:
        r = c.post("/api/fix", json=body)
    assert r.status_code == 200, r.text
    saved = json.loads((Path(r.json()["folder"]) / "fix.json").read_text())
    assert saved["inputs"]["corpus"] == str(served.root / "corpus.txt")
    (got,) = saved["evidence"]["run_findings"]
    assert got["cue_token_ids"] == [5, 7] and got["ks_stat"] is None
