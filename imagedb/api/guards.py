"""Pure ASGI middlewares around the API: security headers, an access log, the Host check, the token check and a
body limit.

Pure ASGI (not BaseHTTPMiddleware) so that they see the request before FastAPI reads its body, and can answer
without reading it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from imagedb.display import escape

log = logging.getLogger("imagedb.api")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

# The page loads its own script and style only; images come from the API as blobs. No frames, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


async def send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class SecurityHeaders:
    """Adds the CSP, nosniff and framing headers to every response, the middlewares' own answers included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


# What a request line holds is the client's (the method, the path, the address a loopback proxy forwards): in the
# log each is escaped (a %0a in a path is a newline once decoded) and cut, so a line is one line and a request of
# 64 KB costs the log no more than a short one.
LOGGED_PATH = 200
_LOGGED_WORD = 64


def logged_path(path: str, limit: int = LOGGED_PATH) -> str:
    shown = escape(path[: limit + 1])
    return shown[:limit] + "…" if len(shown) > limit else shown


class AccessLog:
    """One line per request (method, path without the query string, status, milliseconds); any exception that
    escapes the routes is logged with its traceback and answered with a JSON 500 that names only its type."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 0

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        except Exception as exc:
            method = logged_path(scope["method"], _LOGGED_WORD)
            log.error("%s %s failed", method, logged_path(scope["path"]), exc_info=exc)
            if status == 0:
                status = 500
                await send_json(send, 500, f"internal error: {type(exc).__name__} (details are in the server's log)")
        finally:
            ms = (time.perf_counter() - started) * 1000
            client = logged_path(str((scope.get("client") or ("-",))[0]), _LOGGED_WORD)
            method = logged_path(scope["method"], _LOGGED_WORD)
            log.info('%s "%s %s" %d %.0f ms', client, method, logged_path(scope["path"]), status, ms)


def host_name(header: str) -> str:
    """The name in a Host header, without the port: "[::1]:8000" -> "::1", "localhost:80" -> "localhost"."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else header
    name, _, _port = header.partition(":")
    return name


class LoopbackHostOnly:
    """Without a token, only requests addressed to a loopback name are served: a web page that rebinds its own
    DNS name to 127.0.0.1 sends its own name in Host, and is refused (421)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = _header(scope, b"host") or ""
        if host_name(host) not in LOOPBACK_HOSTS:
            shown = host[:100] if host else "(none)"
            return await send_json(
                send,
                421,
                f"this server answers only to localhost, 127.0.0.1 and [::1], not to the host {shown!r}:"
                " start it with --token to serve other names",
            )
        await self.app(scope, receive, send)


class SameOriginOnly:
    """Requests a browser sends from another site are refused (403) before anything is read: a page the user
    visits could otherwise POST uploads to a local server and make it decode them. Browsers say where a request
    comes from (Sec-Fetch-Site, Origin); programs such as curl send neither and are not affected."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        site = (_header(scope, b"sec-fetch-site") or "").strip().lower()
        origin = (_header(scope, b"origin") or "").strip()
        host = (_header(scope, b"host") or "").strip().lower()
        if site in ("same-origin", "none"):  # the browser's own word (typed, bookmarked, or this page): trusted
            foreign = False  # even behind a proxy that rewrites Host, where Origin would not match it
        elif site:  # "cross-site", or "same-site": a page on another port of this machine is another site too
            foreign = True
        else:  # a browser too old to say: compare its Origin, when it sends one, with the Host it asked for
            foreign = bool(origin) and (origin == "null" or origin.lower().split("://", 1)[-1] != host)
        if foreign:
            return await send_json(
                send, 403, "requests from other web sites are refused: open imagedb's own page, or use a program"
            )
        await self.app(scope, receive, send)


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header is `Bearer TOKEN`, compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.encode(), token.encode())


class BearerToken:
    """With a token, every /api request (and /openapi.json) without it gets 401 before its body is read: FastAPI
    resolves a route's dependencies (the token check in deps.py among them) only after it has read and spooled a
    multipart body, so clients without the token could fill the disk with uploads that were refused afterwards."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path: str = scope.get("path", "")
        if _needs_token(path) and not token_matches(_header(scope, b"authorization"), self.token):
            return await send_json(
                send,
                401,
                "missing or wrong token: send Authorization: Bearer TOKEN",
                [(b"www-authenticate", b"Bearer")],
            )
        await self.app(scope, receive, send)


def _needs_token(path: str) -> bool:
    # The schema too: it lists every route and parameter, the registered filters included. The page and its
    # static files are not the API: they hold no data and ask for the token themselves.
    return path == "/api" or path.startswith("/api/") or path == "/openapi.json"


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses a request body over its limit: at once by its Content-Length, before reading anything, and for a
    body without one (chunked) as soon as the bytes received pass the limit; the rest is never read."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for  # path -> (bytes allowed, message when over)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, message = self.limit_for(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            return await send_json(send, 413, message)
        received = 0
        over = False
        started = False

        async def counting() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLarge(message)
            return event

        async def unless_over(event: Message) -> None:
            nonlocal started
            if over:  # the app answers a body it could not finish reading (a 400 or so): the answer is 413
                return
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counting, unless_over)
        except Exception:
            if not over:
                raise
        if over and not started:
            await send_json(send, 413, message)
