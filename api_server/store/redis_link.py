"""RedisLink: the store's scripts over one pipelined connection (an asyncio protocol that parses
replies with hiredis), and the job events' subscription on a second one.

Written by hand rather than sent through redis-py's client, which the store keeps for all else
(start-up checks, pipelines) and whose settings this link reads (address, password,
database, TLS, the Sentinels' primary): redis-py spends about 40 µs of CPU per command in its
connection pool, retry wrapper, argument encoding and reply reading, this link about 10, and the
store sends two scripts per job (bench/queue.py: server CPU per job, README "Several servers").
Its PubSub likewise: each message is handed to the store's callback as it is parsed, with no
task, await or dict per message.

All commands share one connection, in order: Redis runs one command at a time anyway, and each
reply goes to the caller that is next in line. The commands of one turn of the event loop go in
one write (a system call on the loopback costs more than a script's Python). A caller that
gives up (canceled) leaves its place, and its reply is dropped when it comes. Redis silent for
the timeout while commands wait means it is hung or gone (one timer per connection watches
that, not one per call): the connection is closed, every caller on it gets a TimeoutError
(their commands may or may not have run), and the next call connects again (asking the
Sentinels for the primary again, after a failover).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.sentinel import SentinelConnectionPool

Command = Sequence[str | bytes | int | float]
_C = TypeVar("_C", bound="_Connection")

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
    """One connection: commands written in order, each reply handed to the next waiter. With
    a timeout, Redis silent that long while commands wait closes it (one timer for all calls,
    not one per call)."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._heard_at = 0.0  # (a reply read, or the first command of an idle connection sent)
        self._out: list[bytes] = []  # commands to write at the end of this loop turn

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # (uvloop's: no subclass)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._heard_at = self._loop.time()
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        loop = self._loop
        if self._timeout_s is not None:
            if not self._waiting:
                self._heard_at = loop.time()  # (the silence counts from now)
            if self._timer is None:
                self._timer = loop.call_later(self._timeout_s, self._check_heard)
        waiters = [loop.create_future() for _ in commands]
        self._waiting.extend(waiters)
        if not self._out:  # (the commands of this loop turn go in one write)
            loop.call_soon(self._flush)
        self._out.extend(hiredis.pack_command(tuple(c)) for c in commands)
        return waiters

    def _flush(self) -> None:
        if self._transport is not None and self._out:
            self._transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()

    def _check_heard(self) -> None:
        """The timer: closes the connection when commands waited timeout_s without a reply."""
        self._timer = None
        if not self._waiting or self._timeout_s is None:
            return
        loop = self._loop
        left_s = self._heard_at + self._timeout_s - loop.time()
        if left_s > 0:
            self._timer = loop.call_later(left_s, self._check_heard)
        else:
            self.close(redis.exceptions.TimeoutError(
                f"no answer from Redis in {self._timeout_s:g} s"))


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
            redis.exceptions.ConnectionError: Redis is away (the commands may have run).
            redis.exceptions.TimeoutError: Redis was silent for the client's socket timeout
                while commands waited: the connection is closed (the commands may have run).
        """
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connected()
        waiters = connection.send(commands)  # (Redis silent for the timeout: all get an error)
        if len(waiters) == 1:
            try:
                return [await waiters[0]]
            except redis.exceptions.ReadOnlyError as e:  # (a primary demoted)
                connection.close(redis.exceptions.ConnectionError(str(e)))
                raise
        replies = await asyncio.gather(*waiters, return_exceptions=True)
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
        return await connect(self._pool, lambda: _Connection(self._timeout_s))

    async def subscribe(
        self, channels: Sequence[str], on_message: Callable[[bytes, bytes], None]
    ) -> Subscription:
        """A new connection subscribed to `channels` (apart from the link's own): each message
        is handed to `on_message(channel, data)` as soon as it is read.

        Raises:
            redis.exceptions.ResponseError (and its kinds): Redis refused the subscription.
            redis.exceptions.ConnectionError: Redis is away, or gave no answer in time.
        """
        try:
            async with asyncio.timeout(self._timeout_s):
                subscription = await connect(self._pool, lambda: Subscription(on_message))
                try:
                    await subscription.subscribe(channels)
                except BaseException:
                    subscription.close(redis.exceptions.ConnectionError("not subscribed"))
                    raise
        except (OSError, TimeoutError) as e:
            raise redis.exceptions.ConnectionError(f"cannot reach Redis: {e}") from e
        return subscription


class Subscription(_Connection):
    """A connection in subscribe mode: each message goes to `on_message(channel, data)` as it
    is parsed (no task, no await per message); subscribe confirmations to their waiters."""

    def __init__(self, on_message: Callable[[bytes, bytes], None]) -> None:
        super().__init__()
        self._on_message = on_message
        self.heard_at = self._loop.time()  # (anything read: a message, a pong)
        self._lost: asyncio.Future[redis.exceptions.RedisError] = self._loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.heard_at = self._loop.time()
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if type(reply) is list:
                    kind = reply[0]
                    if kind == b"message":
                        self._on_message(reply[1], reply[2])
                        continue
                    if kind == b"pong":
                        continue
                elif isinstance(reply, hiredis.ReplyError):  # (refused: no use going on)
                    self.close(error_of(reply))
                    return
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError, ValueError) as e:
            self.close(redis.exceptions.ConnectionError(f"Redis reply not understood: {e}"))

    def close(self, error: redis.exceptions.RedisError) -> None:
        super().close(error)
        if not self._lost.done():
            self._lost.set_result(error)

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Subscribes to `channels`, once Redis confirmed each."""
        if self._transport is None:
            raise redis.exceptions.ConnectionError("connection to Redis closed")
        waiters = [self._loop.create_future() for _ in channels]
        self._waiting.extend(waiters)
        self._transport.write(hiredis.pack_command(("SUBSCRIBE", *channels)))
        for reply in await asyncio.gather(*waiters, return_exceptions=True):
            if isinstance(reply, BaseException):
                raise reply

    async def follow(self, ping_every_s: float) -> None:
        """Returns never: raises the error that ended the subscription (the connection lost,
        or no answer to pings: a quiet connection is pinged every ping_every_s, and taken
        for lost after 3 times that without a word).

        Raises:
            redis.exceptions.RedisError: the subscription ended.
        """
        while True:
            await asyncio.wait([self._lost], timeout=ping_every_s)
            if self._lost.done():
                raise self._lost.result()
            quiet_s = self._loop.time() - self.heard_at
            if quiet_s > 3 * ping_every_s:  # (a Redis stopped, say)
                self.close(redis.exceptions.ConnectionError("no answer to pings"))
            elif quiet_s >= ping_every_s and self._transport is not None:
                self._transport.write(hiredis.pack_command(("PING",)))


async def connect(
    pool: aioredis.ConnectionPool, protocol: Callable[[], _C]
) -> _C:
    """A new connection to the primary of a redis-py pool's settings (address, TLS, the
    Sentinels' primary), logged in and on its database; `protocol` makes its protocol."""
    options = pool.connection_kwargs
    loop = asyncio.get_running_loop()
    if isinstance(pool, SentinelConnectionPool):
        host, port = await pool.get_master_address()
        _, connection = await loop.create_connection(protocol, host, port)
    elif options.get("path"):
        _, connection = await loop.create_unix_connection(protocol, options["path"])
    else:
        tls = (_tls_context(options) if issubclass(pool.connection_class,
                                                   aioredis.SSLConnection) else None)
        _, connection = await loop.create_connection(
            protocol, options.get("host", "localhost"), options.get("port", 6379), ssl=tls)
    setup: list[Command] = []
    if options.get("password"):
        setup.append(("AUTH", *filter(None, (options.get("username"),)), options["password"]))
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
