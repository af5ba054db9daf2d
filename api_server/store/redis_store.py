"""The Redis job store: any number of API servers share one queue, and any of them may die.

Every change of a job is one Lua script (api_server/store/redis_scripts.py), atomic in Redis:
a submit checks the queue's limits and an earlier job of the same id, a claim pops jobs and
writes their leases, a result checks the lease and finishes the job (and when the worker's
results post carries a poll, leases it its next jobs too: one round trip, not two). A server
keeps no job in memory; it answers only after Redis has taken the change (and, by
`durability`, fsynced or replicated it), so a server killed at any moment loses nothing it
acknowledged.

Each change is also published on its endpoint's channel, and every server follows the channels
of its endpoints (api_server/store/redis_events.py) to wake its own waiters: a long-polled
job, an event stream, a `?wait=` submit, a waiting worker. A lost message costs a waiter at
most one re-check (a second for workers and queued jobs' positions): waits re-read Redis when
they time out.

Versions live in Redis, so `?since=` and Last-Event-ID mean the same on every server.
Progress previews are never stored in Redis, so they cost its append-only file nothing: a
progress report's script renews the lease and bumps the version, and the server then publishes
the change with the previews (a PUBLISH outside a script is not in the file).
Redis being away (or refusing writes) is a StoreUnavailable: 503 with Retry-After, and the
server recovers by itself once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.asyncio.sentinel
import redis.exceptions

from api_server.config import DURABILITY, Endpoint
from api_server.store import redis_scripts as lua
from api_server.store.base import JobEvents, NoJobEvents, wait_on
from api_server.store.model import (
    Clock,
    JobIdConflict,
    JobView,
    QueueFull,
    ReportAnswer,
    StoreConfigError,
    StoreUnavailable,
    WorkerReport,
    now_ms,
)
from api_server.store.redis_events import RedisEvents
from api_server.store.redis_link import RedisLink, Script
from jobhive.protocol import Grant, JobStatus, held_lengths, new_job_id

log = logging.getLogger("jobhive.jobs")

RECHECK_S = 1.0  # a waiting worker re-reads the queue this often (a lost wake costs no more)
SETTLE_MAX_S = 0.002  # a woken worker waits this long at most for submits in flight
BATCH_JOBS = 256  # submits sent in one script at most
BATCH_BYTES = 4 * 1024 * 1024  # and inputs (a larger job goes alone)
SWEEP_LIMIT = 500  # leases and results one sweep script looks at (then the next batch)
SWEEP_BATCHES = 40  # batches per endpoint per sweep at most (the rest: next sweep)
WORKER_WRITE_S = 1.0  # a worker's polls update its record at most this often


class RedisStore:
    """Queues, leases and results of every endpoint's jobs, in a Redis shared by servers.

    Args:
        endpoints (Mapping[str, Endpoint]): the endpoints by name.
        redis (redis.asyncio.Redis): the connection (pool) to the primary.
        prefix (str): the prefix of every key (several deployments may share one Redis).
        durability (str): "everysec" (AOF, fsynced every second: a power cut can lose up to
            about 2 s of acknowledged changes), "always" (AOF fsynced before each reply) or
            "replicated" (each change waits for a replica's copy: WAIT 1).
        clock (Clock, default now_ms): wall-clock milliseconds (tests pass a fake one).
        worker_seen_ttl_s (float): a worker unseen this long leaves the status.
        sweep_interval_s (float): the servers sweep each endpoint at most this often, together.
        replication_wait_ms (int): with "replicated", how long a change waits for a replica
            before it is answered 503.
        max_progress_chars (int): the longest a progress text may grow from a worker's parts
            (the server's max_body_bytes, as JobStore's).
    """

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        redis: aioredis.Redis,
        prefix: str = "jobhive",
        durability: str = "everysec",
        clock: Clock = now_ms,
        worker_seen_ttl_s: float = 120.0,
        sweep_interval_s: float = 0.5,
        replication_wait_ms: int = 1000,
        max_progress_chars: int = 32 * 1024 * 1024,
    ) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self._endpoints = endpoints
        self._redis = redis
        self._p = prefix + ":"
        self._durability = durability
        self._clock = clock
        self._worker_seen_ttl_s = worker_seen_ttl_s
        self._sweep_interval_ms = round(sweep_interval_s * 1000)
        self._replication_wait_ms = replication_wait_ms
        self._link = RedisLink(redis)  # (the scripts: see redis_link.py for why)
        self._scripts = {
            name: Script(getattr(lua, name))
            for name in ("SUBMIT", "CLAIM", "PROGRESS", "RESULTS", "RESULTS_CLAIM", "CANCEL",
                         "SWEEP", "VIEW", "STATS", "GOODBYE", "FORGET_WORKERS")
        }
        self._events = RedisEvents(self._link, self._p, endpoints, max_progress_chars)
        self._submitting: dict[str, int] = {}  # submits in flight per endpoint (see _settle)
        self._batches: dict[str, _Batch] = {}  # the submits of this loop turn, per endpoint
        self._sending: set[asyncio.Task[None]] = set()
        self._settled: dict[str, asyncio.Future[bool]] = {}
        # Workers of this server waiting for jobs (their waiters: worker id, max batch).
        self._parked: dict[asyncio.Future[Any], tuple[str, int]] = {}
        self._worker_written: dict[str, tuple[int, tuple[Any, ...]]] = {}
        self._forget_hooks: list[Callable[[list[str]], Awaitable[None]]] = []
        self._observer: JobEvents = NoJobEvents()  # told of this server's changes (metrics)

    # ----- keys

    def _base(self, endpoint: str) -> str:
        return f"{self._p}{{{endpoint}}}:"

    # ----- start-up and shut-down

    async def open(self) -> None:
        """Checks the Redis (reachable, `noeviction`, AOF for the durability asked), then
        subscribes to the endpoints' channels.

        Raises:
            StoreConfigError: the Redis would lose jobs (the message says how to fix it).
        """
        try:
            await self._redis.ping()
        except redis.exceptions.RedisError as e:
            raise StoreConfigError(f"cannot reach Redis: {e}") from e
        await self._check_config()
        try:
            await self._events.start()
        except redis.exceptions.ResponseError as e:
            raise StoreConfigError(f"Redis refuses this server's subscription to the job "
                                   f"events ({e}): allow SUBSCRIBE and PUBLISH on "
                                   f"{self._p}* channels (ACL)") from e
        log.info("store opened: Redis, prefix %r, durability %s", self._p[:-1], self._durability)

    async def _check_config(self) -> None:
        try:
            config = await self._redis.config_get("maxmemory-policy", "appendonly", "appendfsync")
        except redis.exceptions.ResponseError as e:  # a managed Redis may forbid CONFIG
            log.warning("cannot read the Redis config (%s): make sure maxmemory-policy is "
                        "noeviction and AOF is on", e)
            return
        config = {_text(k): _text(v) for k, v in config.items()}
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            raise StoreConfigError(
                f"Redis evicts keys under memory pressure (maxmemory-policy {policy}), which "
                "would drop queued jobs: set `maxmemory-policy noeviction` in redis.conf (or "
                "run CONFIG SET maxmemory-policy noeviction)")
        if config.get("appendonly") != "yes":
            raise StoreConfigError(
                "Redis keeps no append-only file, so a Redis restart would lose every job: set "
                "`appendonly yes` in redis.conf (or run CONFIG SET appendonly yes)")
        if self._durability == "always" and config.get("appendfsync") != "always":
            raise StoreConfigError(
                f"durability 'always' needs `appendfsync always` in redis.conf (it is "
                f"{config.get('appendfsync')!r}), or choose durability 'everysec'")

    @property
    def closing(self) -> bool:
        return self._events.closing

    def stop_waiting(self) -> None:
        self._events.stop_waiting()

    async def close(self) -> None:
        await self._events.stop()
        await asyncio.gather(*self._sending, return_exceptions=True)  # (submits on their way)
        await self._link.close()
        await self._redis.aclose()

    # ----- calling Redis

    async def _run(self, script: str, args: Sequence[Any], acknowledged: bool = False) -> Any:
        """Runs one of the scripts; Redis away or refusing is a StoreUnavailable. With
        `acknowledged` (its changes are answered to a client or worker) and durability
        "replicated", also waits for a replica to hold them: WAIT on the script's own
        connection (it counts that connection's writes), in one pipeline with it.

        Raises:
            StoreUnavailable: Redis is away or refused the script.
            NotReplicated: the script ran, but no replica confirmed it in time.
        """
        try:
            if not acknowledged or self._durability != "replicated":
                return (await self._link.script(self._scripts[script], args))[0]
            result, copies = await self._link.script(self._scripts[script], args,
                                                     ("WAIT", 1, self._replication_wait_ms))
        except redis.exceptions.RedisError as e:
            raise unavailable(e) from e
        if copies < 1:
            raise NotReplicated(result, self._replication_wait_ms)
        return result

    # ----- clients

    async def get(self, job_id: str) -> JobView | None:
        reply = await self._run("VIEW", [self._p, job_id])
        if reply is None:
            return None
        endpoint, fields, rank = reply
        own, st, v, pr, out, err, att, cat, sat, fat = fields
        status = JobStatus(st.decode())
        previews, texts_since = self._events.previews(job_id, status)
        return JobView(
            id=job_id,
            endpoint=endpoint.decode(),
            owner=own.decode(),
            status=status,
            version=int(v),
            progress=float(pr or 0),
            queue_position=rank,
            progress_outputs=previews,
            outputs_json=out,
            error=err.decode() if err is not None else None,
            attempts=int(att),
            created_at_ms=int(cat),
            started_at_ms=int(sat) if sat is not None else None,
            finished_at_ms=int(fat) if fat is not None else None,
            texts_since=texts_since or int(v),
        )

    async def endpoints_of(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        found = {i: e for i in ids if (e := self._events.endpoint_of(i)) is not None}
        missing = [i for i in ids if i not in found]
        if missing:
            try:
                values = await self._redis.mget([self._p + "id:" + i for i in missing])
            except redis.exceptions.RedisError as e:
                raise unavailable(e) from e
            for job_id, value in zip(missing, values, strict=True):
                if value is not None:  # (not remembered: this server knows not if it ended)
                    found[job_id] = value.decode()
        return found

    async def queue_position(self, job_id: str) -> int | None:
        job = await self.get(job_id)
        return None if job is None else job.queue_position

    async def submit(
        self,
        endpoint: Endpoint,
        job_id: str | None,
        inputs_json: bytes,
        owner: str,
        wait_s: float = 0.0,
    ) -> tuple[JobView, bool]:
        name, settings = endpoint.name, endpoint.endpoint
        now = self._clock()
        job_id = job_id or new_job_id(now)
        waiter = None
        if wait_s:  # before the submit: a quick job may finish before its reply comes back
            waiter = self._events.job_waiter(job_id, finish=True)
        try:
            self._submitting[name] = self._submitting.get(name, 0) + 1
            try:
                outcome, *detail = await self._submit_together(endpoint, [
                    job_id, owner, inputs_json, now])
            finally:
                self._submitted(name)
            outcome = outcome.decode()
            if outcome == "conflict":
                what = {b"endpoint": "another endpoint's", b"owner": "another client's"}
                if detail[0] in what:
                    raise JobIdConflict(f"job_id {job_id!r} is already used by "
                                        f"{what[detail[0]]} job")
                raise JobIdConflict(f"job_id {job_id!r} was already submitted with other inputs")
            if outcome == "full":
                limit = (f"{settings.max_queue_length} jobs" if detail[0] == b"length"
                         else f"{settings.max_queue_bytes} bytes of inputs")
                raise QueueFull(f"the queue of endpoint {name!r} is full ({limit}); retry "
                                "later", await self._retry_after_s(name))
            created = outcome == "created"
            if created:
                self._events.remember(job_id, name)
                self._observer.job_submitted(name)
                log.info("job %s queued endpoint=%s position=%d", job_id, name, detail[0])
                if waiter is None:
                    return JobView(job_id, name, owner, JobStatus.QUEUED, 1, 0.0, detail[0],
                                   None, None, None, 0, now, None, None), True
            if waiter is not None:
                return await self._until_finished(job_id, waiter, wait_s, created), created
        finally:
            if waiter is not None:
                self._events.forget(job_id, waiter, finish=True)
        return await self._read_back(job_id), created

    async def _until_finished(
        self, job_id: str, waiter: asyncio.Future[Any], wait_s: float, created: bool
    ) -> JobView:
        """The job once it ends (its waiter registered before it was submitted, so no end
        is missed), or as it is after wait_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        job = None if created else await self._read_back(job_id)  # a repeat may have ended
        try:
            while job is None or not job.status.finished:
                remaining = deadline - loop.time()
                if remaining <= 0 or self.closing:
                    break
                woken = await wait_on(waiter, remaining)
                if isinstance(woken, JobView):  # the finished job came in its event
                    return woken
                if not woken:
                    break
                # Woken for nothing (the events were followed again): wait on, but first
                # read the job again, after the new waiter (an end in between is not missed).
                self._events.forget(job_id, waiter, finish=True)
                waiter = self._events.job_waiter(job_id, finish=True)
                job = await self._read_back(job_id)
        finally:
            self._events.forget(job_id, waiter, finish=True)
        return await self._read_back(job_id) if job is None or not job.status.finished else job

    async def _read_back(self, job_id: str) -> JobView:
        job = await self.get(job_id)
        if job is None:  # forgotten in between (a TTL shorter than the wait)
            raise JobIdConflict(f"job {job_id!r} ended and was forgotten; submit it again")
        return job

    def _submit_together(self, endpoint: Endpoint, job: list[Any]) -> asyncio.Future[Any]:
        """The SUBMIT script's answer for this job, sent with the other submits to the
        endpoint made in this turn of the event loop: one script, one round trip for all
        (a Redis error fails them all, and none was queued)."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        batch = self._batches.get(endpoint.name)
        size = len(job[2])
        if batch is not None and (len(batch.jobs) >= BATCH_JOBS or
                                  batch.bytes + size > BATCH_BYTES):
            self._send_batch(endpoint, batch)  # full: it goes now, this job in the next
            batch = None
        if batch is None:
            batch = self._batches[endpoint.name] = _Batch()
            loop.call_soon(self._send_batch, endpoint, batch)  # once this turn's are in
        batch.jobs.append((job, answer))
        batch.bytes += size
        return answer

    def _send_batch(self, endpoint: Endpoint, batch: _Batch) -> None:
        if batch.sent:
            return
        batch.sent = True
        if self._batches.get(endpoint.name) is batch:
            del self._batches[endpoint.name]
        task = asyncio.ensure_future(self._run_batch(endpoint, batch.jobs))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _run_batch(
        self, endpoint: Endpoint, batch: list[tuple[list[Any], asyncio.Future[Any]]]
    ) -> None:
        settings = endpoint.endpoint
        # A worker of this server waiting for the endpoint takes the jobs in the same script,
        # when they make its whole batch or no other submit is under way (a batch worker is
        # rather woken when more are coming, to take them together: see _settle).
        wanted = endpoint.worker.max_batch
        alone = self._submitting.get(endpoint.name, 0) <= len(batch)

        def takes_them(waiter: asyncio.Future[Any]) -> bool:
            parked = self._parked.get(waiter)
            return parked is not None and (alone or min(parked[1], wanted) <= len(batch))

        taker = self._events.take_worker(endpoint.name, among=takes_them)
        worker_id, count = self._parked[taker] if taker else ("", 0)
        mark = self._events.wakes_heard([endpoint.name])
        args = [self._base(endpoint.name), self._p + "id:", endpoint.name,
                settings.max_queue_length, settings.max_queue_bytes, self._p + "w:",
                self._clock(), round(settings.lease_s * 1000),
                round(settings.job_timeout_s * 1000), worker_id,
                min(count, endpoint.worker.max_batch), secrets.token_hex(8)]
        for job, _ in batch:
            args += job
        try:
            answers, taken, left = await self._run("SUBMIT", args, acknowledged=True)
        except BaseException as e:
            for _, answer in (*batch, (None, taker)):
                if answer is not None and not answer.done():
                    answer.set_exception(e)
                    answer.exception()  # (a worker gone meanwhile: nobody else retrieves it)
            if not isinstance(e, Exception):
                raise
            return
        for (_, answer), reply in zip(batch, answers, strict=True):
            if not answer.done():
                answer.set_result(reply)
        if left == 0:  # the worker took every job queued: the next poll need not look
            self._events.drained([endpoint.name], mark)
        if taker is not None:
            grants = self._grants(endpoint, taken, worker_id)
            if taker.done():  # the worker's wait ended meanwhile: the jobs go back
                if taken:
                    await self._release(endpoint.name, taken)
            else:
                taker.set_result(grants or True)  # (none: it looks for itself)

    def _submitted(self, endpoint: str) -> None:
        self._submitting[endpoint] -= 1
        settled = None if self._submitting[endpoint] else self._settled.pop(endpoint, None)
        if settled is not None and not settled.done():
            settled.set_result(True)

    async def _settle(self, endpoints: Sequence[Endpoint]) -> None:
        """Waits (SETTLE_MAX_S at most) for the submits this server is making to these
        endpoints: a worker woken by the first of several jobs sent together then takes them
        in one batch, as the SQLite store's same-commit hand-over does."""
        for endpoint in endpoints:
            if self._submitting.get(endpoint.name):
                settled = self._settled.get(endpoint.name)
                if settled is None:
                    settled = self._settled[endpoint.name] = (
                        asyncio.get_running_loop().create_future())
                await wait_on(settled, SETTLE_MAX_S)

    async def wait_for_change(
        self, job_id: str, since_version: int, timeout_s: float
    ) -> JobView | None:
        waiter = self._events.job_waiter(job_id)  # before the read: no change falls between
        try:
            job = await self.get(job_id)
            if job is None or job.version > since_version or timeout_s <= 0 or self.closing:
                return job
            await wait_on(waiter, timeout_s)
        finally:
            self._events.forget(job_id, waiter)
        return await self.get(job_id)

    async def cancel(self, job_id: str) -> JobView | None:
        endpoint = (await self.endpoints_of([job_id])).get(job_id)
        if endpoint is None:
            return None
        outcome = await self._run("CANCEL", [
            self._base(endpoint), self._p + "id:", self._p + "w:", self._clock(),
            self._ttl_ms(endpoint), job_id,
        ], acknowledged=True)
        if outcome == b"canceled":
            log.info("job %s canceled endpoint=%s", job_id, endpoint)
            self._observer.job_finished(endpoint, JobStatus.CANCELED, None, None)
        return await self.get(job_id)

    # ----- workers

    async def claim(
        self, endpoints: Sequence[Endpoint], max_batch: int, worker_id: str, timeout_s: float
    ) -> list[Grant]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        names = [e.name for e in endpoints]
        woken, recheck = False, timeout_s <= 0  # (a poll that will not wait always looks)
        while not self.closing:
            waiter = self._events.worker_waiter(names)  # before trying: no wake falls between
            try:
                if woken and max_batch > 1:
                    await self._settle(endpoints)
                if recheck or not self._events.known_empty(names):
                    grants = await self._take(endpoints, max_batch, worker_id)
                    if grants:
                        full = len(grants) == min(max_batch, self._max_batch(grants[0]))
                        if waiter.done() and full:  # more may be queued: a wake not for us
                            self._events.wake_worker(grants[0].endpoint)
                        return grants
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                self._parked[waiter] = (worker_id, max_batch)  # (submits may hand it jobs)
                try:
                    woken = await wait_on(waiter, min(remaining, RECHECK_S))
                finally:
                    del self._parked[waiter]
                if isinstance(woken, list):  # jobs handed over by the submit that queued them
                    return woken
                recheck = not woken  # (a lost wake costs at most RECHECK_S)
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    result = waiter.result()
                    if result is True:  # pass on the wake it took
                        for name in names:
                            self._events.wake_worker(name)
                    elif isinstance(result, list) and result:  # jobs handed over: back
                        await asyncio.shield(self._hand_back(result))
                raise
            finally:
                self._events.forget_worker(names, waiter)
        return []

    def _max_batch(self, grant: Grant) -> int:
        endpoint = self._endpoints.get(grant.endpoint)
        return endpoint.worker.max_batch if endpoint else 1

    async def _take(
        self, endpoints: Sequence[Endpoint], max_batch: int, worker_id: str
    ) -> list[Grant]:
        """Leases up to max_batch jobs of the endpoint whose first job has waited longest."""
        mark = self._events.wakes_heard(e.name for e in endpoints)
        if len(endpoints) == 1:
            return await self._claim(endpoints[0], max_batch, worker_id, mark)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for e in endpoints:
                    pipe.zrange(self._base(e.name) + "q", 0, 0, withscores=True)
                heads = await pipe.execute()
        except redis.exceptions.RedisError as e:
            raise unavailable(e) from e
        firsts = sorted((head[0][1], i) for i, head in enumerate(heads) if head)
        if not firsts:
            self._events.drained((e.name for e in endpoints), mark)
        for _, i in firsts:  # (another worker may have emptied the first meanwhile)
            if grants := await self._claim(endpoints[i], max_batch, worker_id, mark):
                return grants
        return []

    async def _claim(
        self, endpoint: Endpoint, max_batch: int, worker_id: str, mark: Mapping[str, int]
    ) -> list[Grant]:
        """Leases up to max_batch jobs of one endpoint (none when its queue is empty)."""
        settings = endpoint.endpoint
        count = min(max_batch, endpoint.worker.max_batch)
        lease_ms = round(settings.lease_s * 1000)
        try:
            taken, left = await self._run("CLAIM", [
                self._base(endpoint.name), self._p + "w:", self._clock(), lease_ms,
                round(settings.job_timeout_s * 1000), worker_id, count, secrets.token_hex(8),
            ], acknowledged=True)
        except NotReplicated as e:  # (not granted: handed back, without counting an attempt)
            await asyncio.shield(self._release(endpoint.name, e.result[0]))
            raise
        if left == 0:  # the queue was emptied by this claim
            self._events.drained([endpoint.name], mark)
        return self._grants(endpoint, taken, worker_id)

    def _grants(self, endpoint: Endpoint, taken: list[Any], worker_id: str) -> list[Grant]:
        """The grants of jobs a script leased (CLAIM's, or SUBMIT's to a waiting worker)."""
        grants = []
        for job_id, lease_id, attempt, expires_ms, inputs in taken:
            job_id = job_id.decode()
            self._events.remember(job_id, endpoint.name)
            grants.append(Grant(job_id, endpoint.name, lease_id.decode(),
                                endpoint.endpoint.lease_s, int(expires_ms), attempt,
                                orjson.Fragment(inputs)))
            log.info("job %s running endpoint=%s worker=%s attempt=%d", job_id, endpoint.name,
                     worker_id, attempt)
        return grants

    async def _hand_back(self, grants: list[Grant]) -> None:
        """Hands back jobs granted to a worker whose poll ended before it got them."""
        taken = [(g.job_id, g.lease_id) for g in grants]
        await self._release(grants[0].endpoint, taken)

    async def _release(self, endpoint: str, taken: list[Any]) -> None:
        """Hands back jobs a claim took but could not grant (best effort: else their leases
        run out)."""
        args: list[Any] = [self._base(endpoint), self._p + "id:", self._p + "w:", self._clock(),
                           self._ttl_ms(endpoint)]
        for job_id, lease_id, *_ in taken:
            args += [job_id, lease_id, "release", ""]
        try:
            await self._run("RESULTS", args)
        except StoreUnavailable as e:
            log.warning("could not hand back %d jobs not granted (%s): their leases run out",
                        len(taken), e)

    async def report_progress(self, reports: Iterable[WorkerReport]) -> list[ReportAnswer]:
        """Renews the leases and records the progress; then publishes each change with its
        previews (not stored: see the module's notes). A lapsed lease nobody took yet is the
        worker's again."""
        reports = list(reports)
        answers: dict[str, ReportAnswer] = {}
        for endpoint, group in (await self._by_endpoint(reports, answers)).items():
            settings = self._endpoints[endpoint].endpoint if endpoint in self._endpoints else None
            lease_ms = round((settings.lease_s if settings else 30.0) * 1000)
            timeout_ms = round((settings.job_timeout_s if settings else 3600.0) * 1000)
            args: list[Any] = [self._base(endpoint), self._clock(), lease_ms, timeout_ms]
            for r in group:
                args += [r.job_id, r.lease_id, "" if r.progress is None else r.progress]
            outcomes = await self._run("PROGRESS", args)
            events = []
            for report, outcome in zip(group, outcomes, strict=True):
                outcome, _, version = outcome.decode().partition(" ")
                answers[report.job_id] = _answer(report.job_id, outcome)
                if outcome == "ok":
                    event = f"{report.job_id} {version} progress".encode()
                    if report.outputs is not None:
                        event = self._previews_event(report, int(version))
                        held, _ = self._events.previews(report.job_id, JobStatus.RUNNING)
                        answers[report.job_id] = answers[report.job_id]._replace(
                            offsets=held_lengths(report.outputs, held))
                    events.append(event)
            if events:
                await self._publish(self._base(endpoint) + "ev", b"\n".join(events))
        return [answers[r.job_id] for r in reports]

    def _previews_event(self, report: WorkerReport, version: int) -> bytes:
        """Keeps a report's previews (here first: its answer says what this server holds) and
        makes its event: "ID VERSION progress OUTPUTS" (whole), or "ID VERSION parts
        {outputs, offsets}" when its texts came as parts (protocol.progress_delta), unless
        another server asked for them whole (it lacks their start)."""
        outputs = report.outputs or {}
        whole = report.offsets and self._events.want_whole(report.job_id)
        message = orjson.dumps({"outputs": outputs, "offsets": report.offsets}) \
            if report.offsets else orjson.dumps(outputs)
        missing = self._events.keep_previews(report.job_id, version, outputs, report.offsets,
                                             len(message))
        if whole and not missing:
            held, _ = self._events.previews(report.job_id, JobStatus.RUNNING)
            return b"%s %d progress %s" % (report.job_id.encode(), version, orjson.dumps(held))
        kind = b"parts" if report.offsets else b"progress"
        return b"%s %d %s %s" % (report.job_id.encode(), version, kind, message)

    async def _publish(self, channel: str, message: bytes) -> None:
        try:
            await self._redis.publish(channel, message)
        except redis.exceptions.RedisError as e:  # the lease is renewed: only watchers miss it
            log.warning("progress not published: %s", e)

    async def report_results(self, reports: Sequence[WorkerReport]) -> list[ReportAnswer]:
        answers, _ = await self._record(reports, None)
        return answers

    async def report_results_and_take(
        self, reports: Sequence[WorkerReport], endpoints: Sequence[Endpoint], max_batch: int,
        worker_id: str,
    ) -> tuple[list[ReportAnswer], list[Grant]]:
        """Records a worker's results (as report_results) and, in the same script (one round
        trip instead of two), leases it up to max_batch more jobs without waiting, when its
        results post carries a poll: when the poll names one endpoint, the results are of
        that endpoint's jobs and its queue is not known empty.

        Returns:
            tuple[list[ReportAnswer], list[Grant]]: the answers, and the jobs taken ([]: none,
                or not tried; the caller then claims as usual, waiting if it will).
        """
        take = None
        if len(endpoints) == 1 and not self.closing:
            take = (endpoints[0], max_batch, worker_id)
        return await self._record(reports, take)

    async def _record(
        self, reports: Sequence[WorkerReport], take: tuple[Endpoint, int, str] | None
    ) -> tuple[list[ReportAnswer], list[Grant]]:
        """Records results, an endpoint's in one script each; with `take` (endpoint, max
        batch, worker), that endpoint's script also leases the worker its next jobs."""
        answers: dict[str, ReportAnswer] = {}
        grants: list[Grant] = []
        for endpoint, group in (await self._by_endpoint(reports, answers)).items():
            now = self._clock()
            args: list[Any] = [self._base(endpoint), self._p + "id:", self._p + "w:", now,
                               self._ttl_ms(endpoint)]
            taker = None
            if (take is not None and take[0].name == endpoint
                    and not self._events.known_empty([endpoint])):
                taker, max_batch, worker_id = take
                mark = self._events.wakes_heard([endpoint])
                args += [round(taker.endpoint.lease_s * 1000),
                         round(taker.endpoint.job_timeout_s * 1000), worker_id,
                         min(max_batch, taker.worker.max_batch), secrets.token_hex(8)]
            for r in group:
                if r.release:
                    args += [r.job_id, r.lease_id, "release", ""]
                elif r.error is not None:
                    args += [r.job_id, r.lease_id, "failed", r.error]
                else:
                    args += [r.job_id, r.lease_id, "done", r.outputs_json or b"{}"]
            if taker is None:
                outcomes = await self._run("RESULTS", args, acknowledged=True)
            else:
                try:
                    outcomes, taken, left = await self._run("RESULTS_CLAIM", args,
                                                            acknowledged=True)
                except NotReplicated as e:  # (not granted: handed back, uncounted)
                    await asyncio.shield(self._release(endpoint, e.result[1]))
                    raise
                if left == 0:  # the queue was emptied by this claim
                    self._events.drained([endpoint], mark)
                grants = self._grants(taker, taken, worker_id)
            for report, (outcome, *detail) in zip(group, outcomes, strict=True):
                outcome = outcome.decode()
                if outcome == "finished":
                    answers[report.job_id] = ReportAnswer.job_finished(
                        report.job_id, detail[0].decode(), detail[1].decode())
                else:
                    answers[report.job_id] = _answer(report.job_id, outcome)
                if outcome == "ok":
                    log.info("job %s %s endpoint=%s", report.job_id,
                             "handed back" if report.release else
                             "failed" if report.error is not None else "done", endpoint)
                    self._changed_by_result(endpoint, detail, now)
        return [answers[r.job_id] for r in reports], grants

    def _changed_by_result(self, endpoint: str, detail: list[bytes], now: int) -> None:
        """Tells the observer what a RESULTS answer 'ok' changed: [] a repeat (nothing),
        ['requeued'] a job handed back, [STATUS, CREATED, STARTED] a job finished."""
        if not detail:
            return
        if detail[0] == b"requeued":
            self._observer.job_handed_back(endpoint)
            return
        status, created_ms, started_ms = detail[0].decode(), int(detail[1]), detail[2]
        if status == "done" and started_ms:
            started = int(started_ms)
            self._observer.job_finished(endpoint, JobStatus.DONE, (started - created_ms) / 1000,
                                        (now - started) / 1000)
        else:
            self._observer.job_finished(endpoint, JobStatus(status), None, None)

    async def _by_endpoint(
        self, reports: Sequence[WorkerReport], answers: dict[str, ReportAnswer]
    ) -> dict[str, list[WorkerReport]]:
        """The reports grouped by their jobs' endpoints; unknown jobs answered 404."""
        endpoints = await self.endpoints_of(r.job_id for r in reports)
        groups: dict[str, list[WorkerReport]] = {}
        for report in reports:
            endpoint = endpoints.get(report.job_id)
            if endpoint is None:
                answers[report.job_id] = _answer(report.job_id, "unknown")
            else:
                groups.setdefault(endpoint, []).append(report)
        return groups

    async def lease_answer(self, job_id: str, lease_id: str) -> ReportAnswer:
        endpoint = (await self.endpoints_of([job_id])).get(job_id)
        if endpoint is None:
            return _answer(job_id, "unknown")
        try:
            st, lid = await self._redis.hmget(self._base(endpoint) + "job:" + job_id, "st", "lid")
        except redis.exceptions.RedisError as e:
            raise unavailable(e) from e
        if st is None:
            return _answer(job_id, "unknown")
        if lid is None or lid.decode() != lease_id:
            return _answer(job_id, "lost")
        if st in (b"queued", b"running"):
            return _answer(job_id, "ok")
        return _answer(job_id, "canceled" if st == b"canceled" else f"finished {st.decode()}")

    async def worker_seen(
        self,
        worker_id: str,
        key_owner: str,
        job_types: Sequence[str],
        address: str,
        info: dict[str, Any],
    ) -> None:
        """Records a poll: at most once a second per worker unless what it says changed."""
        now = self._clock()
        said = (key_owner, tuple(job_types), address, orjson.dumps(info))
        written = self._worker_written.get(worker_id)
        if written is not None and written[1] == said and now - written[0] < WORKER_WRITE_S * 1000:
            return
        key = self._p + "w:" + worker_id
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(key)
                pipe.hset(key, mapping={"own": key_owner, "types": orjson.dumps(list(job_types)),
                                        "addr": address, "info": said[3], "seen": now})
                pipe.pexpire(key, round(self._worker_seen_ttl_s * 2000))
                pipe.zadd(self._p + "workers", {worker_id: now})
                existed, *_ = await pipe.execute()
        except redis.exceptions.RedisError as e:
            raise unavailable(e) from e
        self._worker_written[worker_id] = (now, said)
        if not existed:
            log.info("worker %s connected from %s for %s", worker_id, address,
                     ",".join(job_types))

    async def worker_goodbye(self, worker_id: str, key_owner: str) -> bool:
        left = await self._run("GOODBYE", [self._p, worker_id, key_owner])
        self._worker_written.pop(worker_id, None)
        if left:
            log.info("worker %s said goodbye", worker_id)
        return bool(left)

    # ----- housekeeping

    async def sweep(self) -> None:
        """Sweeps each endpoint (unless another server just did): expired leases requeued or
        failed, results past their TTL forgotten (and the forget hooks called); then forgets
        workers unseen for worker_seen_ttl_s."""
        now = self._clock()
        for name, endpoint in self._endpoints.items():
            for batch in range(SWEEP_BATCHES):  # (a full batch: the rest right after it)
                if not await self._sweep_batch(name, endpoint, now, more=batch > 0):
                    break
        cutoff = now - round(self._worker_seen_ttl_s * 1000)
        for worker_id in await self._run("FORGET_WORKERS", [self._p, cutoff]):
            log.info("worker %s gone (unseen for %g s)", worker_id.decode(),
                     self._worker_seen_ttl_s)
        for worker_id in [w for w, (t, _) in self._worker_written.items() if t < cutoff]:
            del self._worker_written[worker_id]

    async def _sweep_batch(self, name: str, endpoint: Endpoint, now: int, more: bool) -> bool:
        """One SWEEP script; whether its batch was full (more may be due)."""
        settings = endpoint.endpoint
        timeout_error = f"ran longer than job_timeout_s ({settings.job_timeout_s:g} s)"
        swept = await self._run("SWEEP", [
            self._base(name), self._p + "id:", self._p + "w:", now,
            round(settings.result_ttl_s * 1000), round(settings.job_timeout_s * 1000),
            settings.max_attempts, self._sweep_interval_ms, SWEEP_LIMIT, timeout_error,
            "more" if more else "",
        ])
        if swept is None:  # another server swept it just now
            return False
        changed, forgotten, looked_at = swept
        for what, job_id, *detail in changed:
            if what == b"requeued":
                log.warning("job %s requeued endpoint=%s attempt=%s: lease expired: worker "
                            "%s stopped reporting", job_id.decode(), name, detail[1].decode(),
                            detail[0].decode())
                self._observer.lease_expired(name, requeued=True)
            else:
                log.info("job %s failed endpoint=%s error=%r", job_id.decode(), name,
                         detail[0].decode())
                self._observer.job_finished(name, JobStatus.FAILED, None, None)
                if detail[0].decode() != timeout_error:  # (else it ran past job_timeout_s)
                    self._observer.lease_expired(name, requeued=False)
        if forgotten:
            await self._forgotten([job_id.decode() for job_id in forgotten])
        return looked_at >= SWEEP_LIMIT

    async def _forgotten(self, job_ids: list[str]) -> None:
        for hook in self._forget_hooks:
            try:
                await hook(job_ids)
            except Exception:  # the sweeper goes on; an orphan is removed at the next start
                log.exception("a hook on forgotten jobs failed")

    def on_forget(self, hook: Callable[[list[str]], Awaitable[None]]) -> None:
        self._forget_hooks.append(hook)

    def observe(self, events: JobEvents) -> None:
        """Tells `events` of the changes this server makes (each server its own: together
        they count every change once)."""
        self._observer = events

    async def checkpoint(self) -> None:
        """Nothing to do: Redis fsyncs its append-only file by itself."""

    async def stats(self, with_addresses: bool = False) -> dict[str, Any]:
        now = self._clock()
        cutoff = now - round(self._worker_seen_ttl_s * 1000)
        queues, workers = await self._run("STATS", [self._p, now, cutoff, *self._endpoints])
        listed = []
        for worker_id, types, address, info, seen, done, failed, running in workers:
            listed.append({
                "worker_id": worker_id.decode(),
                "job_types": orjson.loads(types),
                **({"address": address.decode()} if with_addresses else {}),
                "info": orjson.loads(info) if info else {},
                "last_seen_ms": int(seen),
                "last_seen_s_ago": round((now - int(seen)) / 1000, 3),
                "jobs_done": int(done),
                "jobs_failed": int(failed),
                "running": max(0, int(running)),
            })
        return {
            "endpoints": {
                name: {
                    "queued": queued,
                    "queued_bytes": int(queued_bytes),
                    "running": running,
                    "workers": sum(e.job_type in w["job_types"] for w in listed),
                }
                for (name, e), (queued, queued_bytes, running) in zip(
                    self._endpoints.items(), queues, strict=True)
            },
            "workers": listed,
        }

    # ----- helpers

    def _ttl_ms(self, endpoint: str) -> int:
        settings = self._endpoints.get(endpoint)
        return round((settings.endpoint.result_ttl_s if settings else 600.0) * 1000)

    async def _retry_after_s(self, endpoint: str) -> int:
        """A guess at when a queue slot frees: one job's run time over the jobs running."""
        base = self._base(endpoint)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hget(base + "stats", "run_s")
                pipe.zcard(base + "leases")
                run_s, running = await pipe.execute()
        except redis.exceptions.RedisError:
            return 5
        return max(1, math.ceil(float(run_s or 1.0) / max(1, running)))


class RedisRateLimiter:
    """The same limits, held in Redis: exact across every server of a deployment (a GCRA, one
    key per endpoint and client, expiring once its bucket would be full again).

    Args:
        redis (redis.asyncio.Redis): the store's Redis.
        prefix (str): the store's key prefix.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._script = redis.register_script(lua.RATE_LIMIT)
        self._prefix = prefix

    async def take(self, endpoint: str, client: str, rate_per_s: float, burst: int) -> float:
        """As RateLimiter.take; Redis away is a StoreUnavailable (503)."""
        if rate_per_s <= 0:
            return 0.0
        key = f"{self._prefix}:rl:{{{endpoint}}}:{client}"
        try:
            wait_ms = await self._script(args=[key, now_ms(), 1000 / rate_per_s, max(1, burst)])
        except redis.exceptions.RedisError as e:
            raise unavailable(e) from e
        return wait_ms / 1000


class _Batch:
    """Submits to one endpoint sent together (see RedisStore._submit_together)."""

    __slots__ = ("bytes", "jobs", "sent")

    def __init__(self) -> None:
        self.jobs: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self.bytes = 0  # their inputs
        self.sent = False


class NotReplicated(StoreUnavailable):
    """A change Redis made but no replica confirmed within replication_wait_ms (503): it may
    survive a failover or not; the client retries it (with the same job_id)."""

    def __init__(self, result: Any, wait_ms: int) -> None:
        super().__init__(RuntimeError(f"no replica confirmed the change within {wait_ms} ms"),
                         disk_full=False, maybe_done=True)
        self.result = result


def connect(url: str, timeout_s: float = 5.0) -> aioredis.Redis:
    """A Redis client for a store URL: `redis://[:PASSWORD@]HOST:PORT/DB`, `rediss://` (TLS),
    or `redis+sentinel://[:PASSWORD@]HOST:PORT,HOST:PORT/MASTER_NAME/DB` (the primary that the
    Sentinels name, found again after a failover). No command waits longer than timeout_s:
    a Redis that is away is answered 503, never a hang."""
    options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
               "health_check_interval": 30}
    if not url.startswith("redis+sentinel://"):
        return aioredis.Redis.from_url(url, **options)
    parsed = urllib.parse.urlsplit(url)
    hosts = []
    for part in parsed.netloc.rpartition("@")[2].split(","):
        host, _, port = part.rpartition(":")
        hosts.append((host or part, int(port or 26379)))
    master, _, db = parsed.path.strip("/").partition("/")
    sentinel = aioredis.sentinel.Sentinel(hosts, **options)
    return sentinel.master_for(master, db=int(db or 0), password=parsed.password, **options)


def unavailable(error: redis.exceptions.RedisError) -> StoreUnavailable:
    """A Redis error as the store's refusal: 507 when Redis refuses writes for lack of memory
    or disk (OOM, MISCONF), 503 for anything else (away, read-only, loading). A timeout or a
    connection lost mid-command says nothing of whether Redis ran it."""
    full = isinstance(error, redis.exceptions.OutOfMemoryError) or (
        isinstance(error, redis.exceptions.ResponseError) and str(error).startswith("MISCONF"))
    unknown = isinstance(error, redis.exceptions.TimeoutError | redis.exceptions.ConnectionError)
    return StoreUnavailable(error, disk_full=full, maybe_done=unknown,
                            what="Redis refuses writes" if full else
                            "the job store (Redis) is unavailable")


def _answer(job_id: str, outcome: str) -> ReportAnswer:
    """A script's answer about one job ('ok', 'unknown', 'lost', 'canceled', 'finished ST')."""
    if outcome == "ok":
        return ReportAnswer(job_id, True)
    if outcome == "unknown":
        return ReportAnswer.unknown_job(job_id)
    if outcome == "lost":
        return ReportAnswer.lease_lost(job_id)
    if outcome == "canceled":
        return ReportAnswer.job_canceled(job_id)
    return ReportAnswer.job_finished(job_id, outcome.split()[-1])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
