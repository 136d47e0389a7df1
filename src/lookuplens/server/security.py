"""Access control of the dashboard: loopback by default, a token for anything else.

* Binding a non-loopback address needs a token; `resolve_token` generates one with
  `secrets.token_urlsafe` when none is given (the CLI prints it).
* With a token, every request must carry it: ``Authorization: Bearer TOKEN``, the
  header ``X-Lookuplens-Token``, the cookie set on first use, or ``?token=TOKEN`` (which
  sets the cookie; a page URL is then redirected to itself without the token). Tokens
  are compared in constant time (`hmac.compare_digest`).
* Without a token (loopback only), requests must name a loopback host in their
  ``Host`` header, so a web page cannot reach the dashboard through DNS rebinding.
* Request bodies must be JSON (``Content-Type: application/json``), which a cross-site
  form cannot send without a CORS preflight (never granted), and at most
  `MAX_BODY_BYTES` long.
* Every response carries a strict Content-Security-Policy (same-origin scripts only,
  no framing) and ``nosniff``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from lookuplens.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "MAX_BODY_BYTES",
    "AccessGuard",
    "BodyLimitMiddleware",
    "SecurityMiddleware",
    "is_loopback",
    "resolve_token",
]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_QUERY = "token"
TOKEN_HEADER = "x-lookuplens-token"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""Scripts and data from the server itself only; inline styles carry the token shading."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only listens on this machine."""
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The token the server requires: the one given, a fresh one for a non-loopback
    `host`, or None (loopback without a token)."""
    if token is not None:
        if len(token) < 16:
            raise UserError(
                "the token must be at least 16 characters long; leave --token out to have "
                "one generated"
            )
        return token
    if is_loopback(host):
        return None
    return secrets.token_urlsafe(24)


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8000`` -> ``::1``)."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:].split("]", 1)[0]
    if v.count(":") == 1:
        return v.split(":", 1)[0]
    return v


@dataclass(frozen=True)
class AccessGuard:
    """Who may use the dashboard (see the module docstring)."""

    token: str | None
    """The required token, or None (loopback only)."""

    @property
    def cookie_name(self) -> str:
        """One cookie name per token, so two dashboards on one machine do not collide."""
        if self.token is None:
            return "lookuplens_token"
        digest = hashlib.sha256(self.token.encode("utf-8")).hexdigest()[:10]
        return f"lookuplens_token_{digest}"

    def check(self, presented: str | None) -> bool:
        """Whether `presented` is the token, compared in constant time."""
        if self.token is None:
            return True
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8"), self.token.encode("utf-8"))


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        key = k.decode("latin-1").lower()
        val = v.decode("latin-1")
        out[key] = f"{out[key]}; {val}" if key == "cookie" and key in out else val
    return out


def _bearer(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get(TOKEN_HEADER)


def _cookie(headers: dict[str, str], name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


class SecurityMiddleware:
    """ASGI middleware: the token or loopback-host check, and the security headers."""

    def __init__(self, app: ASGIApp, guard: AccessGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path = str(scope.get("path", ""))
        query = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))]
        set_cookie = False
        if self.guard.token is None:
            if not is_loopback(_host_name(headers.get("host", ""))):
                await _deny(
                    scope,
                    send,
                    421,
                    "this dashboard answers only requests for localhost or 127.0.0.1 (start it "
                    "with --host and a --token to serve other names)",
                )
                return
        else:
            from_query = next((v for k, v in query if k == TOKEN_QUERY), None)
            presented = [_bearer(headers), _cookie(headers, self.guard.cookie_name), from_query]
            ok = False
            for value in presented:
                if value is not None and self.guard.check(value):
                    ok = True
                    set_cookie = value is from_query
                    break
            if not ok:
                await _deny(
                    scope,
                    send,
                    401,
                    "missing or wrong token: open the URL that `lookuplens serve` printed (it "
                    "ends in ?token=...) or send the header Authorization: Bearer TOKEN",
                )
                return
            if set_cookie and scope.get("method") == "GET" and not path.startswith("/api/"):
                rest = urlencode([(k, v) for k, v in query if k != TOKEN_QUERY])
                here = "/" + path.lstrip("/")  # never "//host": no open redirect
                await _redirect(send, here + (f"?{rest}" if rest else ""), self._cookie_header())
                return

        if scope.get("method") in ("POST", "PUT", "PATCH"):
            kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind != "application/json":
                # a cross-site form cannot send JSON without a CORS preflight, which the
                # dashboard never grants
                await _deny(scope, send, 415, "send the request body as application/json")
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ]
                if set_cookie:
                    extra.append((b"set-cookie", self._cookie_header()))
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in extra if k not in names or k == b"set-cookie"
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _cookie_header(self) -> bytes:
        assert self.guard.token is not None
        return (
            f"{self.guard.cookie_name}={self.guard.token}; Path=/; HttpOnly; SameSite=Strict"
        ).encode("latin-1")


async def _deny(scope: Scope, send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    log.debug("refused %s %s: %d", scope.get("method"), scope.get("path"), status)


async def _redirect(send: Send, location: str, cookie: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1", "replace")),
                (b"set-cookie", cookie),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


MAX_BODY_BYTES = 1_000_000
"""Largest request body accepted (the biggest legitimate one is a prompt of a few KB)."""


class BodyLimitMiddleware:
    """Refuse request bodies over `MAX_BODY_BYTES` (413): by their Content-Length before
    they are read; a body without one (chunked) is read up to the limit first."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        for k, v in scope.get("headers", []):
            if k.lower() == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = MAX_BODY_BYTES + 1
        if length is not None and length > MAX_BODY_BYTES:
            await self._refuse(send)
            return
        if length is not None or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message.get("type") != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Send) -> None:
        body = f'{{"detail":"request body too large (at most {MAX_BODY_BYTES} bytes)"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
