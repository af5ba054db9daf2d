"""A worker's link to its server: JSON posts, what counts as the server being away, backoff.

Every reply the runner reads goes through `ServerLink.post`: a reply that is not JSON (a
reverse proxy's HTML 502 while the server restarts, an empty body, another content type) raises
ServerUnavailable, which is retried like a refused connection, with the same log line.

Given several servers (API servers sharing one queue, so any of them serves any request), the
link talks to one at a time; a request the runner retries moves it on to the next at once, and
only after every server failed in a row does it back off (and goes on rotating).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from jobhive.files import upload_file
from jobhive.protocol import WORKER_GOODBYE_PATH, FileRef, server_urls

log = logging.getLogger("jobhive.worker")

UPLOAD_TIMEOUT_S = 60.0  # an upload's time limit, plus a second per MB
GOODBYE_TIMEOUT_S = 2.0  # a goodbye is a courtesy: a server slow to take it is not waited for
FIRST_BACKOFF_S = 0.25  # the first wait after every server failed; it doubles each round


class ServerUnavailable(Exception):
    """A reply that is not the server's JSON (a proxy's HTML error page, an empty body, another
    content type): whoever answered, the server is away, as when a connection is refused."""

    def __init__(self, status: int, content_type: str) -> None:
        super().__init__(f"HTTP {status} {content_type or 'without content type'}, not JSON")
        self.status = status


# What a retry may fix: the connection, a timeout, a reply not from the server.
RETRYABLE = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ServerUnavailable)


def maybe_taken(error: BaseException) -> bool:
    """Whether a request that failed so may have been taken by the server all the same: unless
    the connection was never made. (A dropped connection or a timeout may come after the
    server took it; so may a proxy's 502, when its upstream went away mid-request.)"""
    return not isinstance(error, aiohttp.ClientConnectorError)


class ServerLink:
    """One worker's HTTP sessions with its servers, one per server (an async context manager).

    Args:
        urls (str | Sequence[str]): the servers' base URLs (a str: separated by commas); the
            link starts with the first.
        key (str): the worker key, sent as a bearer token.
        max_backoff_s (float): the longest wait between two tries when the servers are away.

    Attributes:
        urls (tuple[str, ...]): the servers, in the order they are tried.
        moves (int): how often the link moved on to the next server: a request that failed
            after the link moved on (another one failed meanwhile) moves it no further.

    Raises:
        ValueError: `urls` holds no server URL, or one that is not http(s)://HOST[:PORT].
    """

    def __init__(self, urls: str | Sequence[str], key: str, max_backoff_s: float) -> None:
        self.urls = server_urls(urls, paths=False)
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self._max_backoff_s = max_backoff_s
        self.moves = 0
        self._failed = 0  # requests failed in a row, whichever servers they went to
        self._sessions: list[aiohttp.ClientSession] = []

    @property
    def url(self) -> str:
        """The server requests go to now."""
        return self.urls[self.moves % len(self.urls)]

    async def __aenter__(self) -> ServerLink:
        self._sessions = [aiohttp.ClientSession(url, headers=self._headers) for url in self.urls]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for session in self._sessions:
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        """The current server's session, for a request about to go."""
        assert self._sessions, "use the link as `async with`"
        return self._sessions[self.moves % len(self.urls)]

    async def post(
        self, path: str, body: dict[str, Any] | bytes, timeout_s: float
    ) -> tuple[int, Any]:
        """The status and JSON of the server's reply (None for a 204, or for a 413 that is not
        JSON: whoever said it, the request was too large).

        Raises:
            ServerUnavailable: any other reply that is not JSON.
            aiohttp.ClientError, asyncio.TimeoutError, OSError: the request failed.
        """
        data = body if isinstance(body, bytes) else orjson.dumps(
            body, option=orjson.OPT_SERIALIZE_NUMPY)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._http().post(path, data=data, timeout=timeout) as response:
            raw = await response.read()
            status, content_type = response.status, response.content_type
        try:
            if content_type != "application/json":
                raise ValueError(content_type)
            return status, orjson.loads(raw)
        except ValueError:  # orjson.JSONDecodeError too
            if status in (204, 413):
                return status, None
            raise ServerUnavailable(status, content_type) from None

    async def upload(
        self, job_id: str, lease_id: str, name: str, media_type: str, data: bytes
    ) -> FileRef:
        """PUTs one output file of a job (jobhive.files.upload_file); its reference.

        Raises:
            jobhive.files.FileUploadError: the server (or a proxy) answered other than 200.
            aiohttp.ClientError, asyncio.TimeoutError, OSError: the request failed.
        """
        # Long enough for a slow link (1 MB/s), not forever: a hung upload is retried.
        timeout_s = UPLOAD_TIMEOUT_S + len(data) / 1e6
        return await upload_file(self._http(), job_id, lease_id, name, media_type, data,
                                 timeout_s=timeout_s)

    async def post_unless(
        self, path: str, body: dict[str, Any] | bytes, timeout_s: float, stop: asyncio.Future[Any]
    ) -> tuple[int, Any] | None:
        """Posts, but gives up (None) as soon as `stop` resolves: a poll left hanging would
        hold the shut-down for its whole wait. The server drops a poll whose client left."""
        post = asyncio.ensure_future(self.post(path, body, timeout_s))
        try:
            await asyncio.wait({post, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # (a continuous batch's poller, when its model stalled)
            post.cancel()
            raise
        if not post.done():
            post.cancel()
            return None
        return post.result()

    async def retry_later(
        self,
        problem: object,
        *wake: asyncio.Future[Any],
        at_most_s: float | None = None,
        moves: int | None = None,
    ) -> None:
        """Notes a failed request, to be tried again: moves on to the next server at once;
        once every server failed in a row, first waits, twice as long each round (with
        jitter), up to max_backoff_s (and at_most_s, when given), or until one of `wake`
        resolves.

        Args:
            problem (object): what went wrong (an exception, or a str), for the log line.
            *wake (asyncio.Future): futures that cut a wait short.
            at_most_s (float | None): the longest wait; None: max_backoff_s.
            moves (int | None): `moves` when the request left, if the link may have moved on
                since (a request made beside others); None: now.
        """
        if moves is not None and moves != self.moves:
            return  # moved on already, from that server: try the current one
        failed_url = self.url
        self._failed += 1
        self.moves += 1
        why = str(problem) or type(problem).__name__
        rounds, partway = divmod(self._failed, len(self.urls))
        if partway:
            log.warning("server %s unavailable (%s); trying %s", failed_url, why, self.url)
            return
        wait_s = min(self._max_backoff_s, FIRST_BACKOFF_S * 2 ** (rounds - 1))
        if at_most_s is not None:
            wait_s = max(0.0, min(wait_s, at_most_s))
        if len(self.urls) == 1:
            log.warning("server %s unavailable (%s); retrying in %.1f s", failed_url, why, wait_s)
        else:
            log.warning("server %s unavailable (%s); all %d servers failed, retrying in %.1f s "
                        "with %s", failed_url, why, len(self.urls), wait_s, self.url)
        await asyncio.wait(set(wake), timeout=wait_s * random.uniform(0.8, 1.0))

    def move_on(self, problem: object, moves: int | None = None) -> None:
        """Notes a failed request that is not tried again (a progress report): the next
        request goes to the next server (with several), unless the link moved on since this
        one left. It adds nothing to the backoff: the runner does not wait for it.

        Args:
            problem (object): what went wrong, for the log line.
            moves (int | None): `moves` when the request left; None: now.
        """
        if len(self.urls) == 1 or (moves is not None and moves != self.moves):
            return
        failed_url = self.url
        self.moves += 1
        log.warning("server %s unavailable (%s); trying %s", failed_url,
                    str(problem) or type(problem).__name__, self.url)

    def reached(self) -> None:
        """Notes an answer the runner takes (not one it retries): the streak of failures
        ends, and the next backoff starts short again."""
        if self._failed >= len(self.urls):  # (it had backed off)
            log.info("server %s reachable again", self.url)
        self._failed = 0

    async def say_goodbye(self, worker_id: str) -> None:
        """Tells the server this worker is gone, so it leaves /api/v1/status now instead of
        when it has been quiet long enough. Best effort: any failure (server gone, an older
        server without the route) is logged and ignored."""
        try:
            status, _ = await self.post(
                WORKER_GOODBYE_PATH, {"worker_id": worker_id}, GOODBYE_TIMEOUT_S
            )
        except ServerUnavailable as e:
            if e.status >= 500:
                log.info("goodbye not delivered (%s)", e)
                return
            status = e.status  # an older server's 404 for the route is text
        except Exception as e:  # whatever went wrong, the worker stops all the same
            log.info("goodbye not delivered (%s)", str(e) or type(e).__name__)
            return
        if status == 200:
            log.debug("said goodbye to %s", self.url)
        else:
            log.info("goodbye not taken (HTTP %d); the server forgets this worker in time", status)
