"""The HTTP connections of `imagedb serve`: uvicorn's h11 protocol with the limits it lacks.

uvicorn closes an idle connection only between requests (its keep-alive timeout), so a client that sends a request
head a byte a second, or connects and sends nothing, held its connection forever: enough of them reached the
open-file limit and a normal search timed out. Here, as nginx's client_header_timeout and limit_conn do:
- a request head must arrive whole within HEADER_TIMEOUT_S of its first byte (or of the connection), else the
  connection is closed;
- one client address holds at most MAX_CONNECTIONS_PER_CLIENT connections, and all clients together fewer than
  the open-file limit leaves after RESERVED_FILES (database connections, originals, the model); a connection over
  either is closed at once;
- a request body must keep coming: BODY_TIMEOUT_S, plus a second for every BODY_MIN_RATE bytes received (as
  Apache's mod_reqtimeout), not counting time the server itself stopped reading (an upload waiting for the app);
- a request with both Content-Length and Transfer-Encoding is read by Transfer-Encoding and its connection closed
  after the answer, as RFC 9112 (6.1) requires: the two could frame the body differently for a proxy in front.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
BODY_MIN_RATE = 1024  # bytes a second: a 20 MB upload may take 30 s + 5.7 h; a byte a second is cut off at 30 s
_BODY_CHECK_S = 1.0
MAX_CONNECTIONS_PER_CLIENT = 64
RESERVED_FILES = 128
CLOSE = (b"connection", b"close")


class GuardedH11Protocol(H11Protocol):
    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    body_min_rate = BODY_MIN_RATE
    per_client = MAX_CONNECTIONS_PER_CLIENT
    max_connections = 1024 - RESERVED_FILES

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_deadline = 0.0
        self._seen_cycle: object = None
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        same = sum(1 for c in self.connections if (getattr(c, "client", None) or (None,))[0] == host)
        if len(self.connections) > self.max_connections or same > self.per_client:
            transport.abort()  # refused before anything is read; connection_lost forgets it
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if getattr(self, "_body_timer", None) is not None:
            self._body_timer.cancel()  # type: ignore[union-attr]
            self._body_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._arm()  # the first byte of the next request on a kept-alive connection: its head has a deadline
        if self._body_timer is not None:
            self._body_deadline += len(data) / self.body_min_rate
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.transport.get_protocol() is not self:  # upgraded (a WebSocket): the connection is no longer ours
            self._disarm()
            return
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen_cycle:  # a request head arrived whole
            self._seen_cycle = cycle
            self._disarm()
            if self.conn.their_state is h11.SEND_BODY and self._body_timer is None:
                self._body_deadline = self.loop.time() + self.body_timeout_s
                self._body_timer = self.loop.call_later(_BODY_CHECK_S, self._check_body)
            names = {name for name, _ in self.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                # The answer says Connection: close (uvicorn adds it when the request's headers hold it; this list
                # is the scope's, and the request's task has not started yet) and the connection is closed after it.
                self.headers.append(CLOSE)
                cycle.keep_alive = False

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()  # type: ignore[union-attr]
            self._header_timer = None

    def _check_body(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return  # the body is all in (or the connection gone)
        if self.flow.read_paused:  # the server stopped reading, not the client sending: not held against it
            self._body_deadline += _BODY_CHECK_S
        elif self.loop.time() > self._body_deadline:
            self.transport.close()  # the app's receive() gets http.disconnect
            return
        self._body_timer = self.loop.call_later(_BODY_CHECK_S, self._check_body)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()


def raise_open_file_limit() -> int:
    """The soft open-file limit raised to the hard one (as Go programs do at start), and returned."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY:
        return 1 << 20 if soft == resource.RLIM_INFINITY else soft
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def server_config(app: Any, limits: dict[str, float] | None = None, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for `app` with the guarded protocol, its connection cap fitted to this process's
    open-file limit; `limits` replaces others of GuardedH11Protocol's (tests shorten the timeouts)."""
    files = raise_open_file_limit()
    fitted = {"max_connections": max(16, files - RESERVED_FILES), **(limits or {})}
    protocol = type("ImagedbH11Protocol", (GuardedH11Protocol,), fitted)
    return uvicorn.Config(app, http=protocol, **options)
