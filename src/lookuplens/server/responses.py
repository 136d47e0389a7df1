"""Building responses: finished bodies cached by key, JSON and HTML bodies, error pages,
and the packaged assets."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from lookuplens.report.assets import CSS
from lookuplens.report.markup import esc
from lookuplens.server.pages import asset
from lookuplens.server.records import jsonable

__all__ = ["ResponseCache", "assets", "dumps", "error", "html_body", "is_api", "json_body"]


class ResponseCache:
    """Finished response bodies by key (LRU). The run's tables never change while the
    server runs and the model is deterministic, so a page or an API answer built once is
    served again as it is."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: tuple[object, ...], body: bytes) -> bytes:
        with self._lock:
            self._items[key] = body
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return body


def dumps(obj: object) -> bytes:
    return json.dumps(
        jsonable(obj), ensure_ascii=True, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")


def json_body(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def html_body(body: bytes) -> Response:
    return Response(body, media_type="text/html; charset=utf-8")


def assets() -> dict[str, tuple[bytes, str]]:
    """The files under /static/, by name (nothing else is ever served from disk)."""
    css = CSS + "\n/* dashboard */\n" + asset("dashboard.css")
    return {
        "style.css": (css.encode("utf-8"), "text/css; charset=utf-8"),
        "app.js": (asset("app.js").encode("utf-8"), "text/javascript; charset=utf-8"),
    }


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def error(request: Request, status: int, detail: str) -> Response:
    if is_api(request):
        return JSONResponse({"detail": detail}, status_code=status)
    body = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>error</title>'
        '<link rel="stylesheet" href="/static/style.css"></head><body class="dash"><main>'
        f'<h1>{status}</h1><p class="warn">{esc(detail)}</p><p><a href="/">Back to the '
        "overview</a></p></main></body></html>"
    )
    return HTMLResponse(body, status_code=status)
