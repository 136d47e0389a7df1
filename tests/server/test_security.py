"""Safe by default: loopback only without a token, the token compared in constant time,
no path traversal, capped inputs, no secrets in any response."""

from __future__ import annotations

import hmac
import json
import shutil
import socket
from urllib.parse import urlsplit

import pytest
from dashboard_fixtures import LiveServer, Served
from fastapi.testclient import TestClient

from lookuplens.errors import UserError
from lookuplens.server import ServeConfig, create_app
from lookuplens.server.security import AccessGuard, is_loopback, resolve_token

TRAVERSALS = (
    "/static/../run.json",
    "/static/..%2frun.json",
    "/static/%2e%2e/run.json",
    "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/static/..%5c..%5crun.json",
    "/static//etc/passwd",
    "/static/%2Fetc%2Fpasswd",
    "/static/run.json",
    "/static/",
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/run.json",
    "/report.html",
    "/examples.parquet",
    "/neurons/..%2f..%2frun.json/0",
    "/neurons/../../run.json",
    "/neurons/%2e%2e/0",
    "/api/examples/..%2f..%2frun.json",
    "/api/examples/%2fetc%2fpasswd",
    "/api/examples/-1",
    "/api/examples/1e3",
    "/api/neurons/0/..%2f..%2f",
    "/api/pairs/0/0/0/%2e%2e",
    "/playground?example=..%2f..%2frun.json",
    "/?nsort=..%2f..%2frun.json",
    "/?nlayer=%2fetc%2fpasswd",
)


def _raw_get(base: str, target: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """GET with the request target sent exactly as given (no client normalisation)."""
    u = urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=20) as s:
        s.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_path_traversal_is_refused(live_url: str, served: Served) -> None:
    run_json = (served.run.path / "run.json").read_bytes()
    marker = json.loads(run_json)["created_at"].encode()
    for target in TRAVERSALS:
        status, body = _raw_get(live_url, target)
        assert status in (400, 404, 405, 422), (target, status)
        assert marker not in body, target
        assert b"root:x:0:0" not in body, target
        assert b"PAR1" not in body, target  # no parquet bytes
    # absolute paths as the ids of every route with ids
    for target in ("/api/neurons//etc/passwd", "/api/examples//etc/passwd"):
        status, _ = _raw_get(live_url, target)
        assert status in (404, 422), target


def test_only_whitelisted_assets(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    for name in ("dashboard.css", "playground.html", "__init__.py", "app.py", "%2e%2e"):
        assert client.get(f"/static/{name}").status_code == 404, name


def test_loopback_without_token_checks_the_host_header(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/run", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/api/run", headers={"host": "[::1]:8000"}).status_code == 200
    r = client.get("/api/run", headers={"host": "rebound.example.com"})
    assert r.status_code == 421 and "localhost" in r.json()["detail"]


def test_security_headers(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_non_loopback_requires_a_token(served: Served) -> None:
    app = create_app(served.run.path, host="0.0.0.0", lm=served.lm)
    token = app.state.token
    assert isinstance(token, str) and len(token) >= 30  # generated with secrets.token_urlsafe
    c = TestClient(app, base_url="http://192.0.2.7")
    for url in ("/", "/api/run", "/api/neurons", "/static/app.js", "/api/openapi.json"):
        r = c.get(url)
        assert r.status_code == 401, url
        assert token not in r.text
    assert c.post("/api/playground", json={}).status_code == 401
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (wrong, token[:-1], token + "x", "", "x" * 200):
        assert c.get("/api/run", headers={"authorization": f"Bearer {bad}"}).status_code == 401
        assert c.get(f"/api/run?token={bad}").status_code == 401
    assert c.get("/api/run", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert c.get("/api/run", headers={"x-lookuplens-token": token}).status_code == 200
    # ?token= on a page: a cookie is set and the token leaves the address bar
    r = c.get(f"/neurons/0/0?token={token}&x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/neurons/0/0?x=1"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    name = AccessGuard(token).cookie_name
    assert name in cookie and c.get("/api/run").status_code == 200  # the cookie works
    fresh = TestClient(app, base_url="http://192.0.2.7")
    fresh.cookies.set(name, wrong)
    assert fresh.get("/api/run").status_code == 401
    # no open redirect through a path that starts with two slashes
    r = c.get(f"//evil.example/?token={token}", follow_redirects=False)
    assert not r.headers.get("location", "/").startswith("//")
    # an API call with ?token= answers directly and sets the cookie too
    r = TestClient(app, base_url="http://192.0.2.7").get(f"/api/run?token={token}")
    assert r.status_code == 200 and name in r.headers["set-cookie"]


def test_given_token_is_required_on_loopback_too(served: Served) -> None:
    secret = "a-long-enough-test-token-123"
    app = create_app(served.run.path, token=secret, lm=served.lm)
    c = TestClient(app, base_url="http://127.0.0.1")
    assert c.get("/api/run").status_code == 401
    assert c.get("/api/run", headers={"authorization": f"Bearer {secret}"}).status_code == 200
    with pytest.raises(UserError, match="at least 16"):
        create_app(served.run.path, token="short", lm=served.lm)


def test_resolve_token_and_loopback() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host), host
        assert resolve_token(host, None) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com"):
        assert not is_loopback(host), host
        assert resolve_token(host, None) != resolve_token(host, None)  # fresh each time


def test_token_is_compared_in_constant_time(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    guard = AccessGuard("the-right-token-0123456789")
    assert guard.check("the-right-token-0123456789")
    for bad in ("the-right-token-012345678X", "X" + "he-right-token-0123456789", "the", ""):
        assert not guard.check(bad)
    assert len(calls) == 5
    assert all(b == b"the-right-token-0123456789" for _, b in calls)
    # and through the middleware
    app = create_app(served.run.path, token="another-long-token-abcdefgh", lm=served.lm)
    calls.clear()
    c = TestClient(app, base_url="http://127.0.0.1")
    assert c.get("/api/run", headers={"x-lookuplens-token": "nope-nope-nope"}).status_code == 401
    assert calls and calls[-1] == (b"nope-nope-nope", b"another-long-token-abcdefgh")


def test_oversize_inputs_are_refused_with_a_clear_message(served: Served) -> None:
    cfg = ServeConfig(
        max_prompt_tokens=12, max_prompt_chars=200, max_new_tokens=8, default_new_tokens=4
    )
    c = TestClient(
        create_app(served.run.path, lm=served.lm, config=cfg), base_url="http://127.0.0.1"
    )
    base = {"layer": 0, "neuron": 0}
    r = c.post("/api/playground", json={**base, "prompt": "x" * 201})
    assert r.status_code == 422 and "at most 200" in r.json()["detail"]
    assert "x" * 50 not in r.text  # the input is not echoed back
    r = c.post("/api/playground", json={**base, "prompt": "The owl sat on an old oak tree " * 4})
    assert r.status_code == 422
    assert "tokens long" in r.json()["detail"] and "at most 12" in r.json()["detail"]
    r = c.post("/api/why", json={"prompt": "The owl sat on an old oak tree " * 4})
    assert r.status_code == 422 and "at most 12" in r.json()["detail"]
    r = c.post("/api/generate", json={**base, "prompt": "The owl", "max_new_tokens": 9})
    assert r.status_code == 422 and "at most 8 tokens" in r.json()["detail"]
    r = c.post("/api/generate", json={**base, "prompt": "The owl", "max_new_tokens": 8})
    assert r.status_code == 200 and len(r.json()["result"]["clean_tokens"]) <= 8
    r = c.post("/api/playground", json={**base, "prompt": "a", "neuron_scale": 1e9})
    assert r.status_code == 422 and "out of range" in r.json()["detail"]
    heads = [{"layer": 0, "head": 0}] * 65
    r = c.post("/api/playground", json={**base, "prompt": "a", "heads": heads})
    assert r.status_code == 422 and "at most 64" in r.json()["detail"]
    r = c.post("/api/playground", json={**base, "prompt": ""})
    assert r.status_code == 422 and "prompt" in r.json()["message"]
    r = c.post("/api/playground", json={**base, "prompt": "y" * 200_000})
    assert r.status_code == 422 and "y" * 100 not in r.text
    big = json.dumps({**base, "prompt": "z" * 1_500_000})
    r = c.post("/api/playground", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_chunked_oversize_body_is_refused(live_url: str) -> None:
    u = urlsplit(live_url)
    chunk = b"z" * 65536
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(
            b"POST /api/playground HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(40):  # 2.6 MB
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close the connection early
        data = s.recv(65536)
    assert data.split(b" ", 2)[1] == b"413", data[-300:]


def _all_get_urls(app, served: Served) -> list[str]:  # type: ignore[no-untyped-def]
    layer, neuron, hl, h = served.kept_pair()
    eid = int(served.run.read_df("examples").example_id.iloc[0])
    values = {"layer": layer, "neuron": neuron, "head_layer": hl, "head": h, "example_id": eid}
    values["name"] = "app.js"
    urls = []
    for route in app.routes:
        path = getattr(route, "path", "")
        if "GET" not in getattr(route, "methods", set()):
            continue
        urls.append(path.format(**values))
    return urls + ["/?nq=x&pkept=all", "/neurons/99/99", "/api/neurons?sort=bad", "/missing"]


def test_no_environment_secret_in_any_response(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    secrets = {
        "OPENAI_API_KEY": "sk-test-secret-4f1c2e",
        "HF_TOKEN": "hf_test_secret_77aa",
        "LOOKUPLENS_TOKEN": "env-token-secret-99",
    }
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    # a run.json edited by hand with a key in it is redacted again
    run = tmp_path / "run"
    shutil.copytree(served.run.path, run)
    meta = json.loads((run / "run.json").read_text())
    meta["config"]["explain"]["llm"]["api_key"] = "sk-planted-in-run-json"
    (run / "run.json").write_text(json.dumps(meta))
    app = create_app(run, lm=served.lm)
    c = TestClient(app, base_url="http://127.0.0.1")
    bodies = []
    for url in _all_get_urls(app, served):
        r = c.get(url)
        bodies.append(r.text + json.dumps(dict(r.headers)))
    for path, body in (
        ("/api/playground", {"prompt": "The owl", "layer": 1, "neuron": 0}),
        ("/api/generate", {"prompt": "The owl", "layer": 1, "neuron": 0, "max_new_tokens": 3}),
        ("/api/why", {"prompt": "The owl"}),
        ("/api/why", {"prompt": "The owl", "target": "sk-test-secret-4f1c2e"}),
    ):
        r = c.post(path, json=body)
        bodies.append(r.text + json.dumps(dict(r.headers)))
    everything = "\n".join(bodies)
    assert len(bodies) > 20
    assert "OPENAI_API_KEY" in everything  # the *name* of the variable may appear (config)
    assert "sk-planted-in-run-json" not in everything
    for v in secrets.values():
        if v == "sk-test-secret-4f1c2e":
            # the last request typed it as a target: only its own echo may contain it
            assert everything.count(v) == bodies[-1].count(v)
        else:
            assert v not in everything


def test_model_calls_do_not_block_pages(served: Served) -> None:
    """A slow model call holds the one worker; pages keep answering meanwhile."""
    import threading
    import time

    import httpx

    app = create_app(served.run.path, lm=served.lm)
    worker = app.state.worker
    release = threading.Event()
    real = worker.playground

    def slow(*args: object) -> object:
        release.wait(30)
        return real(*args)

    worker.playground = slow  # type: ignore[method-assign]
    with LiveServer(app) as url:
        done: list[int] = []

        def post() -> None:
            r = httpx.post(
                f"{url}/api/playground",
                json={"prompt": "The owl", "layer": 1, "neuron": 0},
                timeout=60,
            )
            done.append(r.status_code)

        t = threading.Thread(target=post)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        for page in ("/", "/api/neurons", "/api/run"):
            assert httpx.get(url + page, timeout=10).status_code == 200
        assert time.monotonic() - t0 < 10
        assert not done  # the model call is still waiting
        release.set()
        t.join(60)
        assert done == [200]


def test_post_bodies_must_be_json(client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"prompt": "The owl", "layer": 1, "neuron": 0})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""):
        r = client.post("/api/playground", content=body, headers={"content-type": kind})
        assert r.status_code == 415, kind
    r = client.post(
        "/api/playground", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200


MALICIOUS_TOKEN = "<img src=x onerror=alert(3)>"
MALICIOUS_TEXT = 'looks up <script>alert(2)</script> & "quotes"'


def test_run_content_is_escaped(served: Served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lookuplens.store import RunDir

    path = tmp_path / "run"
    shutil.copytree(served.run.path, path)
    run = RunDir(path)
    n = run.read_df("neurons")
    layer, neuron, hl, h = served.kept_pair()
    n.loc[(n.layer == layer) & (n.neuron == neuron), "token"] = MALICIOUS_TOKEN
    run.write_table("neurons", n)
    ex = run.read_df("explanations")
    ex["explanation"] = MALICIOUS_TEXT
    run.write_table("explanations", ex.astype({"head_layer": "Int64", "head": "Int64"}))
    examples = run.read_df("examples")
    examples["text"] = MALICIOUS_TEXT
    run.write_table("examples", examples)
    c = TestClient(create_app(path, lm=served.lm), base_url="http://127.0.0.1")
    pages = [
        "/",
        "/?pkept=all&nq=" + MALICIOUS_TOKEN,
        f"/neurons/{layer}/{neuron}",
        f"/pairs/{layer}/{neuron}/{hl}/{h}",
        f"/playground?layer={layer}&neuron={neuron}&prompt=" + MALICIOUS_TEXT,
    ]
    for url in pages:
        html = c.get(url).text
        assert "<script>alert" not in html and "<img src=x" not in html, url
    pair_html = c.get(f"/pairs/{layer}/{neuron}/{hl}/{h}").text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in pair_html
    r = c.post("/api/playground", json={"prompt": MALICIOUS_TOKEN, "layer": 1, "neuron": 0})
    for key in ("html_clean", "html_patched"):
        assert "<img" not in r.json()[key] and "&lt;" in r.json()[key]
