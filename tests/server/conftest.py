"""A real (tiny) run directory for the dashboard tests, the app over it, and a live
uvicorn on 127.0.0.1 with a free port (shared by the whole session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from dashboard_fixtures import LiveServer, Served, build_served  # noqa: E402


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return build_served(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def app(served: Served):  # type: ignore[no-untyped-def]
    from lookuplens.server import create_app

    return create_app(served.run.path, lm=served.lm)


@pytest.fixture(scope="session")
def client(app):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="session")
def live_url(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with LiveServer(app) as url:
        yield url
