"""RedisLink: the store's scripts over one pipelined connection (an asyncio protocol that parses
replies with hiredis).

Written by hand rather than sent through redis-py's client, which the store keeps for all else
(start-up checks, pipelines, pub/sub) and whose settings this link reads (address, password,
database, TLS, the Sentinels' primary): redis-py spends about 40 µs of CPU per command in its
connection pool, retry wrapper, argument encoding and reply reading, this link about 10, and the
store sends two scripts per job (bench/queue.py: server CPU per job, README "Several servers").

All commands share one connection, in order: Redis runs one command at a time anyway, and each
reply goes to the caller that is next in line. A caller that gives up (canceled) leaves its
place, and its reply is dropped when it comes. No reply within the timeout means Redis is hung
or gone: the connection is closed, every caller on it gets a ConnectionError (their commands may
or may not have run), and the next call connects again (asking the Sentinels for the primary
again, after a failover).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.sentinel import SentinelConnectionPool

Command = Sequence[str | bytes | int | float]

# Error replies by their first word, as redis-py names them (the store reads those classes).
_ERRORS: dict[str, type[redis.exceptions.RedisError]] = {
    "NOSCRIPT": redis.exceptions.NoScriptError,
    "OOM": redis.exceptions.OutOfMemoryError,
    "READONLY": redis.exceptions.ReadOnlyError,
    "LOADING": redis.exceptions.BusyLoadingError,
    "NOPERM": redis.exceptions.NoPermissionError,
}


def error_of(reply: hiredis.ReplyError) -> redis.exceptions.RedisError:
    message = str(reply)
    return _ERRORS.get(message.split(" ", 1)[0], redis.exceptions.ResponseError)(message)


class _Connection(asyncio.Protocol):
    """One connection: commands written in order, each reply handed to the next waiter."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # (uvloop's: no subclass)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                waiter = self._waiting.popleft()
                if waiter.done():  # (its caller gave up)
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    waiter.set_exception(error_of(reply))
                else:
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as e:  # (not Redis, or a reply too many)
            self.close(redis.exceptions.ConnectionError(f"Redis reply not understood: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(redis.exceptions.ConnectionError(
            f"connection to Redis lost ({exc or 'closed by Redis'})"))

    def close(self, error: redis.exceptions.RedisError) -> None:
        """Closes the connection; every caller still waiting gets `error`."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def send(self, commands: Sequence[Command]) -> list[asyncio.Future[Any]]:
        if self._transport is None:
            raise redis.exceptions.ConnectionError("connection to Redis closed")
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in commands]
        self._waiting.extend(waiters)
        self._transport.write(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
        return waiters


class RedisLink:
    """The store's commands to the Redis primary that `redis_client` (redis-py) is set up for,
    on one pipelined connection; no call waits longer than the client's socket timeout."""

    def __init__(self, redis_client: aioredis.Redis) -> None:
        self._pool = redis_client.connection_pool
        self._timeout_s = float(self._pool.connection_kwargs.get("socket_timeout") or 5.0)
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def run(self, *commands: Command) -> list[Any]:
        """The replies to `commands`, sent together; the first error reply is raised.

        Raises:
            redis.exceptions.ResponseError (and its kinds): Redis refused a command.
            redis.exceptions.ConnectionError: Redis is away, or gave no answer in time (the
                commands may have run).
        """
        connection = await self._connected()
        waiters = connection.send(commands)
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await asyncio.gather(*waiters, return_exceptions=True)
        except TimeoutError:
            connection.close(redis.exceptions.ConnectionError(
                f"no answer from Redis in {self._timeout_s:g} s"))
            raise redis.exceptions.TimeoutError(
                f"no answer from Redis in {self._timeout_s:g} s") from None
        for reply in replies:
            if isinstance(reply, BaseException):
                if isinstance(reply, redis.exceptions.ReadOnlyError):  # (a primary demoted)
                    connection.close(redis.exceptions.ConnectionError(str(reply)))
                raise reply
        return replies

    async def script(self, lua: Script, args: Sequence[Any], *then: Command) -> list[Any]:
        """Runs a script (by its SHA-1, or whole when Redis does not know it yet), then the
        commands `then` on the same connection; their replies."""
        try:
            return await self.run(("EVALSHA", lua.sha, 0, *args), *then)
        except redis.exceptions.NoScriptError:
            return await self.run(("EVAL", lua.text, 0, *args), *then)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close(redis.exceptions.ConnectionError("the store closed"))

    async def _connected(self) -> _Connection:
        if self._connection is not None and self._connection.open:
            return self._connection
        async with self._connecting:
            if self._connection is None or not self._connection.open:
                try:
                    async with asyncio.timeout(self._timeout_s):
                        self._connection = await self._connect()
                except (OSError, TimeoutError) as e:
                    raise redis.exceptions.ConnectionError(f"cannot reach Redis: {e}") from e
            return self._connection

    async def _connect(self) -> _Connection:
        """A new connection to the primary, logged in and on the database of the client's
        settings (redis-py parsed them from the store URL)."""
        options = self._pool.connection_kwargs
        loop = asyncio.get_running_loop()
        if isinstance(self._pool, SentinelConnectionPool):
            host, port = await self._pool.get_master_address()
            _, connection = await loop.create_connection(_Connection, host, port)
        elif options.get("path"):
            _, connection = await loop.create_unix_connection(_Connection, options["path"])
        else:
            tls = (_tls_context(options) if issubclass(self._pool.connection_class,
                                                       aioredis.SSLConnection) else None)
            _, connection = await loop.create_connection(
                _Connection, options.get("host", "localhost"), options.get("port", 6379),
                ssl=tls)
        setup: list[Command] = []
        if options.get("password"):
            setup.append(("AUTH", *filter(None, (options.get("username"),)),
                          options["password"]))
        if options.get("db"):
            setup.append(("SELECT", int(options["db"])))
        if setup:
            try:
                await asyncio.gather(*connection.send(setup))
            except redis.exceptions.RedisError:
                connection.close(redis.exceptions.ConnectionError("Redis refused the login"))
                raise
        return connection


class Script:
    """A Lua script's text and SHA-1 (what EVALSHA names it by)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS settings of a rediss:// URL (its ssl_* query options, as redis-py reads them)."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
