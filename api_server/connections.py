"""Bounds on the server's TCP connections: how many, and how long each may idle or stall.

Without them a few hundred idle sockets use up the process's open-files limit (RLIMIT_NOFILE):
`/health` stops answering, SQLite cannot open a file, and the event loop logs one traceback per
failed accept(), thousands a second. This module guards against that:

- a connection cap below the open-files limit; past it the connection idle the longest is
  closed to make room, and when none is idle the new one is refused (see `ConnectionGuard`);
- a header timeout: a request's line and headers must arrive within `header_timeout_s`;
- a body timeout: a request body (or a response the client does not read) that makes no
  progress for `body_timeout_s` drops the connection;
- accept errors (EMFILE and the like) are logged once a second at most, with a count.

The keep-alive timeout is aiohttp's own (`keepalive_timeout`, given to `web.AppRunner`). The rest
is hand-written because aiohttp has none of it: no header or body read timeout, no connection
limit. It hooks in where aiohttp expects extensions, not in its private state: a `web.BaseSite`
subclass whose protocol factory wraps `web.Server`'s (one small protocol per connection that
passes every event on), and `enter`/`leave` calls from the app's edge middleware that tell
the wrapper when a request is in the application.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
from collections.abc import Callable
from typing import Any

from aiohttp import web

from api_server.config import ServerConfig

log = logging.getLogger("jobhive.connections")

FD_HEADROOM = 64  # files kept free for what the server opens later: SQLite, media pool pipes
MIN_CONNECTIONS = 16  # the cap never goes below this, whatever the open-files limit
REPORT_EVERY_S = 1.0  # refusals and accept errors: one log line per this long at most
HEADER_CHECK_S = 0.25  # how often connections are checked for late headers
BACKLOG = 128  # the listen backlog (aiohttp's default)
# accept() errors that say the process or the host is out of something: they repeat at once.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def open_files() -> int:
    """How many files this process has open now (0 where the system does not tell)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0


def connection_cap(max_connections: int, backlog: int = BACKLOG) -> int:
    """The most connections to hold: max_connections, or fewer so that the open-files limit
    keeps room for the files open now, FD_HEADROOM more, and one accept() batch (the sockets
    accepted before the server gets to refuse them)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return min(max_connections, max(MIN_CONNECTIONS, soft - open_files() - FD_HEADROOM - backlog))


class _Counter:
    """Counts events and logs them in one WARNING line at most once per REPORT_EVERY_S: a flood
    (a refusal or an accept error per connection attempt) makes a line a second, not a line
    each. `what` is a callable for a text that may change (the cap is set at start)."""

    def __init__(self, what: Callable[[], str]) -> None:
        self._what = what
        self._counts: dict[str, int] = {}
        self._report: asyncio.TimerHandle | None = None

    def add(self, event: str) -> None:
        self._counts[event] = self._counts.get(event, 0) + 1
        if self._report is None:
            self._report = asyncio.get_running_loop().call_later(REPORT_EVERY_S, self._flush)

    def _flush(self) -> None:
        counts, self._counts, self._report = self._counts, {}, None
        events = "; ".join(f"{event} ({count}x)" for event, count in counts.items())
        log.warning("%s: %s in the last %.0f s", self._what(), events, REPORT_EVERY_S)


class ConnectionGuard:
    """Counts the server's connections and times their requests; `GuardedSite` wraps each
    connection's protocol and `enter`/`leave` mark the time a request spends in the application.

    Past the cap, the connection idle the longest (no request in the application: keep-alive,
    or still sending its headers) is closed for the new one, as nginx does with keep-alive
    connections; a busy server drops idle sockets, not new clients. When every connection is
    busy, the new one is refused by accepting and closing it at once, not by answering 503: a
    reply would have to read the request first (closing on unread bytes sends a reset that
    discards the reply), which holds the file and the parser of a connection over the cap, just
    when files are short. A client sees a closed connection and retries.

    Args:
        config (ServerConfig): max_connections, header_timeout_s, body_timeout_s.
        backlog (int): the listen backlog; it is kept free below the open-files limit.
    """

    def __init__(self, config: ServerConfig, backlog: int = BACKLOG) -> None:
        self.max_connections = config.max_connections
        self.backlog = backlog
        self.cap = config.max_connections  # lowered by `install`, once the store is open
        self.header_timeout_s = config.header_timeout_s
        self.body_timeout_s = config.body_timeout_s
        # No request in the application, longest idle first (dicts keep insertion order).
        self._idle: dict[_Guarded, None] = {}
        self._busy: set[_Guarded] = set()
        self._at_cap = _Counter(lambda: f"at the cap of {self.cap} connections")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checker: asyncio.TimerHandle | None = None

    @property
    def open(self) -> int:
        """Connections held (closed ones leave on their connection_lost)."""
        return len(self._idle) + len(self._busy)

    def protocol_factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], Any]:
        """Wraps a protocol factory (aiohttp's `web.Server`) for `loop.create_server`."""

        def factory() -> asyncio.BaseProtocol:
            if self.open >= self.cap and not self._close_longest_idle():
                self._at_cap.add("refused a new one, none idle")
                return _Refused()
            conn = _Guarded(self, make())
            self._idle[conn] = None
            return conn

        return factory

    def _close_longest_idle(self) -> bool:
        for conn in self._idle:  # one not yet made (same accept batch) counts too
            if not conn.writing_paused:
                self._at_cap.add("closed the longest-idle one for a new one")
                self._forget(conn)
                conn.drop()
                return True
        return False

    def _forget(self, conn: _Guarded) -> None:
        self._idle.pop(conn, None)
        self._busy.discard(conn)

    @staticmethod
    def enter(request: web.Request) -> _Guarded | None:
        """Marks the start of a request's time in the application (the app's edge middleware
        calls it, and `leave` with what it returns when the request is done): meanwhile its
        connection has no header timeout and is not closed to make room, and its body must
        keep coming. None when the connection is not served through GuardedSite."""
        transport = request.transport
        conn = transport.get_protocol() if transport is not None else None
        if not isinstance(conn, _Guarded):
            return None
        conn.request_started(request)
        return conn

    @staticmethod
    def leave(conn: _Guarded | None) -> None:
        if conn is not None:
            conn.request_done()

    def _check_headers(self) -> None:
        """Closes the connections whose request line and headers are late; runs every
        HEADER_CHECK_S (so a late connection goes up to that much after header_timeout_s)."""
        assert self._loop is not None
        now = self._loop.time()
        for conn in [c for c in self._idle if c.headers_due is not None and c.headers_due <= now]:
            conn.headers_late()
        self._checker = self._loop.call_later(HEADER_CHECK_S, self._check_headers)

    def uninstall(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sets the cap from the files open now, and routes the loop's reports of accept() out
        of files (or memory) to a counted line per second: asyncio and uvloop log each one
        with a traceback, thousands a second."""
        self.cap = connection_cap(self.max_connections, self.backlog)
        self._loop = loop
        self._checker = loop.call_later(HEADER_CHECK_S, self._check_headers)
        previous = loop.get_exception_handler()
        errors = _Counter(lambda: "cannot accept connections")

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
                errors.add(f"{context.get('message', 'error')}: {exc}")
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class _Guarded(asyncio.Protocol):
    """One connection: passes every event on to aiohttp's protocol and keeps the timers."""

    __slots__ = (
        "_body_timer",
        "_dropped",
        "_guard",
        "_inner",
        "_last_data",
        "_loop",
        "_request",
        "_send_timer",
        "headers_due",
        "transport",
        "writing_paused",
    )

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.writing_paused = False
        self._dropped = False  # closed before it was made: aiohttp never sees it
        self._request: web.Request | None = None
        self._last_data = 0.0
        # When the request being received must have its headers (loop time); None between
        # requests and while one is in the application. The guard checks it every second:
        # a timer per request would cost more than the check.
        self.headers_due: float | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    # The transport's events, passed on.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._dropped:
            transport.abort()  # type: ignore[attr-defined]
            return
        self.transport = transport  # type: ignore[assignment]
        self._arm_header_timer()  # the first request counts from the connection's start
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._last_data = self._loop.time()
        if self._request is None and self.headers_due is None:  # a new request begins
            self._arm_header_timer()
            if self in self._guard._idle:  # no longer the idle one to close first
                del self._guard._idle[self]
                self._guard._idle[self] = None
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._cancel("_send_timer")
        self._send_timer = self._loop.call_later(self._guard.body_timeout_s, self._send_stalled)
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._cancel("_send_timer")
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._forget(self)
        self.headers_due = None
        for timer in ("_body_timer", "_send_timer"):
            self._cancel(timer)
        self._request = None
        if self.transport is not None:
            self.transport = None
            self._inner.connection_lost(exc)

    # The marks of the app's edge middleware (ConnectionGuard.enter and leave).

    def request_started(self, request: web.Request) -> None:
        self.headers_due = None
        self._request = request
        if self in self._guard._idle:
            del self._guard._idle[self]
            self._guard._busy.add(self)
        if not request.content.is_eof():
            self._last_data = self._loop.time()
            self._body_timer = self._loop.call_later(self._guard.body_timeout_s, self._check_body)

    def request_done(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._request = None
        if self in self._guard._busy:
            self._guard._busy.discard(self)
            self._guard._idle[self] = None

    # The timers.

    def drop(self) -> None:
        """Closes the connection now, discarding what it had still to send."""
        self._dropped = True
        if self.transport is not None:
            self.transport.abort()

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _arm_header_timer(self) -> None:
        self.headers_due = self._loop.time() + self._guard.header_timeout_s

    def headers_late(self) -> None:
        """Called by the guard's check once headers_due has passed."""
        self.headers_due = None
        if self._request is None:
            log.debug("closed a connection: no request line and headers in %s s",
                      self._guard.header_timeout_s)
            self.drop()

    def _check_body(self) -> None:
        self._body_timer = None
        request, transport = self._request, self.transport
        if request is None or transport is None or request.content.is_eof():
            return
        now = self._loop.time()
        if not transport.is_reading():  # paused by the server, which is behind, not the client
            self._last_data = now
        due = self._last_data + self._guard.body_timeout_s
        if now < due:
            self._body_timer = self._loop.call_at(due, self._check_body)
            return
        log.debug("closed a connection: its request body stalled for %s s",
                  self._guard.body_timeout_s)
        self.drop()

    def _send_stalled(self) -> None:
        self._send_timer = None
        log.debug("closed a connection: it read none of its response for %s s",
                  self._guard.body_timeout_s)
        self.drop()


class GuardedSite(web.BaseSite):
    """`web.TCPSite` with every connection guarded by a `ConnectionGuard` (whose `enter` and
    `leave` the application's edge middleware calls)."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int,
                 guard: ConnectionGuard) -> None:
        super().__init__(runner, backlog=guard.backlog)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._guard.install(loop)
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            self._guard.protocol_factory(server), self._host, self._port, backlog=self._backlog
        )
        log.info("connections: at most %d open (max_connections or the open-files limit)",
                 self._guard.cap)

    async def stop(self) -> None:
        self._guard.uninstall()
        await super().stop()
