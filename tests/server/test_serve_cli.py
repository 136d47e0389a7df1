"""`serve_command` as the main CLI mounts it: options, the printed URL and token."""

from __future__ import annotations

import socket

import pytest
import typer
from dashboard_fixtures import Served
from typer.testing import CliRunner

from lookuplens.errors import UserError
from lookuplens.server import cli as serve_cli


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("serve")(serve_cli.serve_command)

    @app.command("noop")
    def noop() -> None:  # a second command, so that "serve" is a subcommand
        pass

    return app


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Run everything up to serving, then stop (record what would be served)."""
    import uvicorn

    seen: list[dict[str, object]] = []

    def run(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        assert sockets is not None
        seen.append({"app": self.config.app, "address": sockets[0].getsockname()})
        for s in sockets:
            s.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return seen


def test_serve_on_loopback(served: Served, no_serving: list[dict[str, object]]) -> None:
    r = CliRunner().invoke(_app(), ["serve", str(served.run.path), "--port", "0"])
    assert r.exit_code == 0, r.output
    (seen,) = no_serving
    host, port = seen["address"]  # type: ignore[misc]
    assert host == "127.0.0.1" and port > 0
    assert f"http://127.0.0.1:{port}/" in r.output and "token" not in r.output
    assert seen["app"].state.token is None  # type: ignore[attr-defined]


def test_serve_elsewhere_prints_a_generated_token(
    served: Served, no_serving: list[dict[str, object]]
) -> None:
    r = CliRunner().invoke(
        _app(), ["serve", str(served.run.path), "--host", "0.0.0.0", "--port", "0"]
    )
    assert r.exit_code == 0, r.output
    token = no_serving[0]["app"].state.token  # type: ignore[attr-defined]
    assert token and f"?token={token}" in r.output and "generated" in r.output


def test_serve_token_from_the_environment(
    served: Served, no_serving: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOKUPLENS_TOKEN", "token-from-the-environment")
    r = CliRunner().invoke(_app(), ["serve", str(served.run.path), "--port", "0"])
    assert r.exit_code == 0, r.output
    assert no_serving[0]["app"].state.token == "token-from-the-environment"  # type: ignore[attr-defined]
    assert "generated" not in r.output


def test_serve_refuses_bad_options(served: Served, no_serving: list[dict[str, object]]) -> None:
    for args, match in (
        (["--token", "short"], "at least 16"),
        (["--port", "70000"], "--port"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
    ):
        r = CliRunner().invoke(_app(), ["serve", str(served.run.path), *args])
        assert isinstance(r.exception, UserError), (args, r.output)
        assert match in str(r.exception)
    r = CliRunner().invoke(_app(), ["serve", str(served.root / "not-a-run")])
    assert isinstance(r.exception, UserError) and "not a run directory" in str(r.exception)
    assert no_serving == []
