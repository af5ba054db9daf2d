"""What one server of a Redis deployment hears of every change, and who waits for it.

The scripts publish each change of a job on its endpoint's channel (`P:{E}:ev`, a line
"ID VERSION STATUS[ ...]" per change, see redis_scripts; servers publish "ID VERSION progress
[PREVIEWS]" after a progress report) and each queued job on `P:{E}:wake`.
`RedisEvents` follows both channels of every endpoint for as long as the store is open and
wakes this server's waiters: long-polls and event streams of a job, `?wait=` submits (handed
the finished job itself when the event carries it), workers waiting for jobs. It also keeps
what the events tell without asking Redis: the latest progress previews of running jobs (they
are published, never stored), the endpoint of unfinished jobs, and whether a claim would find
an endpoint's queue empty.

A lost message costs a waiter at most one re-check (the store's waits time out and read Redis
again); a lost subscription is followed again with backoff, and then every waiter is woken and
what was known of the queues is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
import redis.exceptions

from api_server.store.model import JobView
from api_server.store.redis_link import RedisLink
from jobhive.protocol import JobStatus, rebuild_progress, texts_extend

log = logging.getLogger("jobhive.jobs")

PING_EVERY_S = 5.0  # a quiet subscription is pinged this often; 3 pings unanswered: lost
PREVIEW_CACHE = 10_000  # jobs whose latest previews a server keeps
PREVIEW_CACHE_BYTES = 256 * 1024 * 1024  # and their bytes at most (a worker may send large ones)
ENDPOINT_CACHE = 100_000  # unfinished jobs whose endpoint a server keeps
UNCLAIMED_KEPT = 10_000  # queued jobs per endpoint a server follows (see known_empty)
_ENDED = ("done", "failed", "canceled")

Waiters = dict[str, list[asyncio.Future[Any]]]


class RedisEvents:
    """The endpoints' channels followed, and this server's waiters woken by them.

    Args:
        link (RedisLink): the store's link to Redis (the subscription gets its own connection).
        prefix (str): the store's key prefix, with its colon ("jobhive:").
        endpoints (Iterable[str]): the endpoints whose channels to follow.
        max_progress_chars (int): the longest a progress text may grow from parts (JobStore).
    """

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        endpoints: Iterable[str],
        max_progress_chars: int = 32 * 1024 * 1024,
    ) -> None:
        self._link = link
        self._max_progress_chars = max_progress_chars  # (see JobStore)
        self._p = prefix
        self._endpoints = list(endpoints)
        self.closing = False  # set by stop_waiting: waits answer at once
        self._jobs: Waiters = {}  # job id -> its long-polls and event streams
        self._finishes: Waiters = {}  # job id -> its ?wait= submits (woken only at the end)
        self._workers: dict[str, list[asyncio.Future[Any]]] = {e: [] for e in self._endpoints}
        self._previews: dict[str, _Previews] = {}  # job id -> its latest progress outputs
        self._previews_bytes = 0
        self._wanted: set[str] = set()  # jobs whose next previews another server wants whole
        self._asking: set[asyncio.Task[None]] = set()
        self._endpoint_of: dict[str, str] = {}  # unfinished job id -> endpoint
        # The queues as far as the events tell (see known_empty): endpoints a claim drained,
        # jobs queued since (their wakes heard) not yet seen claimed, wakes heard.
        self._drained: set[str] = set()
        self._unclaimed: dict[str, set[str]] = {e: set() for e in self._endpoints}
        self._wakes: dict[str, int] = dict.fromkeys(self._endpoints, 0)
        self._listener: asyncio.Task[None] | None = None
        self._bad_logged_at = -math.inf

    async def start(self) -> None:
        """Subscribes (in a task that follows the channels until stop).

        Raises:
            redis.exceptions.ResponseError: Redis refused the subscription (an ACL).
        """
        started = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(started), name="jobhive-redis-events")
        await started

    async def stop(self) -> None:
        self.stop_waiting()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    def stop_waiting(self) -> None:
        """Wakes every waiter now, and makes later waits end at once (shutting down)."""
        self.closing = True
        self.wake_all()

    # ----- following the channels

    async def _listen(self, started: asyncio.Future[None]) -> None:
        channels = [f"{self._p}{{{e}}}:{kind}" for e in self._endpoints for kind in ("ev", "wake")]
        backoff_s = 0.1
        while True:
            subscription = None
            try:
                try:
                    subscription = await self._link.subscribe(channels, self._dispatch_safely)
                except redis.exceptions.ResponseError as e:  # (refused: no retry helps)
                    if not started.done():
                        started.set_exception(e)
                        return
                    raise
                if started.done():
                    log.warning("Redis events followed again")
                    self._forget_what_was_heard()
                else:
                    started.set_result(None)
                backoff_s = 0.1
                await subscription.follow(PING_EVERY_S)  # (messages: to _dispatch_safely)
            except redis.exceptions.RedisError as e:
                log.warning("Redis events lost (%s): following again in %.1f s", e, backoff_s)
                if not started.done():  # (the store opens all the same: waits re-check)
                    started.set_result(None)
                self._forget_what_was_heard()
                await asyncio.sleep(backoff_s)
                backoff_s = min(5.0, backoff_s * 2)
            finally:
                if subscription is not None:
                    subscription.close(redis.exceptions.ConnectionError("unsubscribed"))

    def _forget_what_was_heard(self) -> None:
        """Messages may have been missed: what they told is unknown, every waiter re-reads.
        (The wake counts move on too, so that a claim under way marks nothing drained.)"""
        self._drained.clear()
        self._endpoint_of.clear()
        for job_id in list(self._previews):  # (a text's missed part would go unnoticed)
            self._drop_previews(job_id)
        for endpoint in self._wakes:
            self._wakes[endpoint] += 1
        self.wake_all()

    def _dispatch_safely(self, channel: bytes, data: bytes) -> None:
        """Dispatches a message; one this server cannot read (another version's, say) is
        logged, at most once a minute, and skipped: the subscription goes on."""
        try:
            self._dispatch(channel, data)
        except Exception:
            now = asyncio.get_running_loop().time()
            if now - self._bad_logged_at >= 60:
                self._bad_logged_at = now
                log.exception("an event message not understood, skipped: %r", data[:200])

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        endpoint, _, kind = channel.decode()[len(self._p) + 1:].rpartition("}:")
        if kind == "wake":
            for job_id in data.decode().split("\n"):
                self._queued(endpoint, job_id)
            return
        for line in data.split(b"\n"):
            job_id, version, status, *rest = line.split(b" ", 3)
            self._changed(endpoint, job_id.decode(), int(version), status.decode(),
                          rest[0] if rest else b"")

    def _queued(self, endpoint: str, job_id: str) -> None:
        if endpoint in self._unclaimed:
            self._wakes[endpoint] += 1
            unclaimed = self._unclaimed[endpoint]
            if len(unclaimed) < UNCLAIMED_KEPT:
                unclaimed.add(job_id)
            else:  # too many queued to follow: claims stop skipping
                self._drained.discard(endpoint)
        self.wake_worker(endpoint)

    def _changed(self, endpoint: str, job_id: str, version: int, status: str, rest: bytes
                 ) -> None:
        """One change of a job heard: what it tells kept, then its waiters woken (a ?wait=
        submit with the finished job itself when the event carries it)."""
        if status == "want":  # another server lacks a text's start: send the next one whole
            if len(self._wanted) < PREVIEW_CACHE:
                self._wanted.add(job_id)
            return
        if status == "progress" or status == "parts":  # (published after the script: may
            if rest:  # come late) previews: kept before anyone wakes to read them
                self._heard_previews(endpoint, job_id, version, status == "parts", rest)
        elif status != "queued" and endpoint in self._unclaimed:
            self._unclaimed[endpoint].discard(job_id)  # claimed (or ended): no longer queued
        if status == "queued" or status == "done":  # (a failed job keeps its previews)
            self._drop_previews(job_id)
        if status in _ENDED:
            # Only unfinished jobs are remembered: a finished one is forgotten in time, and
            # its id may then name a job of another endpoint.
            self._endpoint_of.pop(job_id, None)
            self._wanted.discard(job_id)
        _wake(self._jobs.pop(job_id, ()), True)
        if status in _ENDED and job_id in self._finishes:
            view: JobView | bool = True  # (woken: read the job back)
            if rest:  # a job done with small outputs comes whole
                view = _done_view(job_id, endpoint, version, rest)
            _wake(self._finishes.pop(job_id), view)

    # ----- waiting

    def job_waiter(self, job_id: str, finish: bool = False) -> asyncio.Future[Any]:
        """A future resolved at the job's next change (finish: at its end, with the finished
        JobView when the event carried it, else True); end it with `forget`."""
        waiter = asyncio.get_running_loop().create_future()
        if self.closing:
            waiter.set_result(True)
        (self._finishes if finish else self._jobs).setdefault(job_id, []).append(waiter)
        return waiter

    def forget(self, job_id: str, waiter: asyncio.Future[Any], finish: bool = False) -> None:
        waiting = self._finishes if finish else self._jobs
        waiters = waiting.get(job_id)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del waiting[job_id]

    def worker_waiter(self, endpoints: Sequence[str]) -> asyncio.Future[Any]:
        """A future resolved when a job is queued at one of these endpoints (one waiter is
        woken per job); end it with `forget_worker`."""
        waiter = asyncio.get_running_loop().create_future()
        for endpoint in endpoints:
            self._workers[endpoint].append(waiter)
        return waiter

    def forget_worker(self, endpoints: Sequence[str], waiter: asyncio.Future[Any]) -> None:
        for endpoint in endpoints:
            waiters = self._workers[endpoint]
            if waiter in waiters:
                waiters.remove(waiter)

    def take_worker(
        self, endpoint: str, among: Callable[[asyncio.Future[Any]], bool]
    ) -> asyncio.Future[Any] | None:
        """The first waiter (of those `among` accepts) of a worker waiting for jobs of this
        endpoint, taken out of every endpoint's waiters (no wake resolves it any more): the
        caller resolves it, with the jobs a script leased to that worker, or True."""
        for waiter in self._workers.get(endpoint, ()):
            if not waiter.done() and among(waiter):
                for waiters in self._workers.values():
                    if waiter in waiters:
                        waiters.remove(waiter)
                return waiter
        return None

    def wake_worker(self, endpoint: str) -> None:
        waiters = self._workers.get(endpoint, [])
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(True)
                return

    def wake_all(self) -> None:
        for waiters in (*self._jobs.values(), *self._finishes.values(), *self._workers.values()):
            _wake(waiters, True)

    # ----- what the events tell

    def previews(self, job_id: str, status: JobStatus) -> tuple[dict[str, Any] | None, int]:
        """The job's latest progress outputs heard (none once it is done or queued again),
        and the version from which its texts only grew (JobView.texts_since; 0: none heard)."""
        if status is JobStatus.DONE or status is JobStatus.QUEUED:
            return None, 0
        previews = self._previews.get(job_id)
        return (None, 0) if previews is None else (previews.outputs, previews.texts_since)

    def _heard_previews(
        self, endpoint: str, job_id: str, version: int, parts: bool, message: bytes
    ) -> None:
        """Keeps the previews of a progress event: whole (`progress`: the outputs' JSON) or
        with parts of texts (`parts`: {"outputs", "offsets"}); a part whose start this server
        lacks (it started, or lost its subscription, while the job ran) asks the server that
        hears the job's next report to publish it whole (again at each such part, until a
        whole one comes: the ask may pass that report on the way)."""
        data = orjson.loads(message)
        outputs, offsets = (data["outputs"], data["offsets"]) if parts else (data, None)
        if self.keep_previews(job_id, version, outputs, offsets, len(message)):
            channel = f"{self._p}{{{endpoint}}}:ev"
            asking = asyncio.create_task(self._ask(channel, f"{job_id} 0 want".encode()))
            self._asking.add(asking)
            asking.add_done_callback(self._asking.discard)

    async def _ask(self, channel: str, message: bytes) -> None:
        try:
            await self._link.run(("PUBLISH", channel, message))
        except redis.exceptions.RedisError as e:  # (the text shows again at its next copy)
            log.warning("could not ask for a whole progress text: %s", e)

    def keep_previews(
        self,
        job_id: str,
        version: int,
        outputs: dict[str, Any],
        offsets: dict[str, int] | None = None,
        size: int = 0,
    ) -> list[str]:
        """Keeps a job's previews of this version (its texts' parts joined to those held: see
        protocol.progress_delta; an older version than the one held is skipped). Past
        PREVIEW_CACHE jobs or PREVIEW_CACHE_BYTES, the previews heard longest ago go first
        (their jobs show none until their next report).

        Returns:
            list[str]: the outputs whose parts could not be joined (their start not held).
        """
        held = self._previews.get(job_id)
        if held is not None and version <= held.version:
            return []  # (this server's own report, heard back; or a late one)
        missing: list[str] = []
        if offsets:
            outputs, missing = rebuild_progress(held and held.outputs, outputs, offsets,
                                                self._max_progress_chars)
        grew = held is not None and not missing and texts_extend(held.outputs, outputs)
        texts_since = held.texts_since if grew and held is not None else version
        size += held.size if held is not None and offsets else 0
        self._drop_previews(job_id)  # (re-inserted last: the oldest go first)
        while self._previews and (len(self._previews) >= PREVIEW_CACHE or
                                  self._previews_bytes + size > PREVIEW_CACHE_BYTES):
            self._drop_previews(next(iter(self._previews)))
        self._previews[job_id] = _Previews(version, outputs, texts_since, size)
        self._previews_bytes += size
        return missing

    def want_whole(self, job_id: str) -> bool:
        """Whether another server asked for this job's next previews whole (asked once)."""
        if job_id in self._wanted:
            self._wanted.discard(job_id)
            return True
        return False

    def _drop_previews(self, job_id: str) -> None:
        dropped = self._previews.pop(job_id, None)
        if dropped is not None:
            self._previews_bytes -= dropped.size
        self._wanted.discard(job_id)

    def endpoint_of(self, job_id: str) -> str | None:
        return self._endpoint_of.get(job_id)

    def remember(self, job_id: str, endpoint: str) -> None:
        """Notes an unfinished job's endpoint (it never changes; forgotten when it ends)."""
        if len(self._endpoint_of) >= ENDPOINT_CACHE:
            del self._endpoint_of[next(iter(self._endpoint_of))]
        self._endpoint_of[job_id] = endpoint

    def known_empty(self, endpoints: Iterable[str]) -> bool:
        """Whether these endpoints' queues are known to be empty: drained by a claim of this
        server, and every job queued since (its wake heard) already claimed or ended (its
        event heard). A claim then would take nothing: the worker just waits."""
        return all(e in self._drained and not self._unclaimed[e] for e in endpoints)

    def wakes_heard(self, endpoints: Iterable[str]) -> Mapping[str, int]:
        """A mark to give `drained` once a claim that began now found the queues empty."""
        return {e: self._wakes[e] for e in endpoints}

    def drained(self, endpoints: Iterable[str], mark: Mapping[str, int]) -> None:
        """A claim found these queues empty: known empty, unless a wake came in while it ran
        (its job may have been queued just before the claim). Every job queued until then
        was claimed by someone."""
        for endpoint in endpoints:
            if self._wakes[endpoint] == mark[endpoint]:
                self._drained.add(endpoint)
                self._unclaimed[endpoint].clear()


class _Previews(NamedTuple):
    """A running job's latest previews as heard: its progress outputs, texts whole."""

    version: int  # the job's version they came with
    outputs: dict[str, Any]
    texts_since: int  # the version from which its texts only grew (JobView.texts_since)
    size: int  # the bytes of the messages that made them (what the cache counts)


def _wake(waiters: Iterable[asyncio.Future[Any]], result: Any) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(result)


def _done_view(job_id: str, endpoint: str, version: int, rest: bytes) -> JobView:
    """The JobView of a done event that carries the job ("ATTEMPTS CREATED STARTED FINISHED
    OWNER OUTPUTS", see redis_scripts)."""
    attempts, created, started, finished, owner, outputs = rest.split(b" ", 5)
    return JobView(job_id, endpoint, owner.decode(), JobStatus.DONE, version, 100.0, None, None,
                   outputs, None, int(attempts), int(created),
                   None if started == b"-" else int(started), int(finished))
