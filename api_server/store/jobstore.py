"""The job store: queues per endpoint, leases, results, and who is waiting on what.

`JobStore` keeps every live job's small state in memory (reads cost no I/O) and writes each
change through a `Journal` (SQLite by default) before it changes that state: acknowledged means
durable, and a write the journal refuses (a full disk) leaves no trace and is answered 507/503.
Large inputs and outputs are not kept in memory; they are read back from the journal when a
worker claims the job or a client asks for its result. A restart loses nothing: queued jobs stay
queued, running ones wait for their worker under a fresh lease, results stay readable until
their TTL.

Concurrency: everything runs on the server's event loop. A change to a job first takes its
`busy` hold (waiting for any write in flight about it), decides, writes, and applies once the
write is durable; reads never wait.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from api_server.config import Endpoint, EndpointSection
from api_server.store.base import JobEvents, NoJobEvents, wait_on
from api_server.store.journal import Journal, JournalError
from api_server.store.model import (
    INLINE_VALUE_MAX_BYTES,
    Clock,
    Job,
    JobIdConflict,
    JobView,
    QueueFull,
    ReportAnswer,
    StoreUnavailable,
    WorkerReport,
    now_ms,
)
from api_server.store.queue import JobQueue
from api_server.store.workers import WorkerRegistry
from jobhive.protocol import (
    Grant,
    JobStatus,
    held_lengths,
    new_job_id,
    rebuild_progress,
    texts_extend,
)

log = logging.getLogger("jobhive.jobs")

_Update = tuple[Job, dict[str, Any], bytes | None]  # a job, its new field values, its outputs


class JobStore:
    """Queues, leases and results of every endpoint's jobs.

    Args:
        endpoints (Mapping[str, Endpoint]): the endpoints by name.
        journal (Journal): where every change is made durable.
        clock (Clock, default now_ms): wall-clock milliseconds (tests pass a fake one).
        worker_seen_ttl_s (float, default 120): a worker unseen this long leaves the status.
        max_progress_chars (int, default 32 Mi): the longest a progress text may grow from a
            worker's parts (the server's max_body_bytes: what one whole report could carry).
    """

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        journal: Journal,
        clock: Clock = now_ms,
        worker_seen_ttl_s: float = 120.0,
        max_progress_chars: int = 32 * 1024 * 1024,
    ) -> None:
        self._max_progress_chars = max_progress_chars
        self._endpoints = endpoints
        self._journal = journal
        self._clock = clock
        self.workers = WorkerRegistry(clock)
        self._worker_seen_ttl_s = worker_seen_ttl_s
        self._jobs: dict[str, Job] = {}
        self._queues: dict[str, JobQueue] = {name: JobQueue() for name in endpoints}
        self._submitting: dict[str, list[int]] = {name: [0, 0] for name in endpoints}  # jobs, bytes
        self._inserting: dict[str, asyncio.Future[None]] = {}  # job ids being written
        # Jobs being written that a waiting worker may take as they arrive (see `_insert`).
        self._arriving: dict[str, dict[str, Job]] = {name: {} for name in endpoints}
        self._running: dict[str, Job] = {}
        self._expiry: list[tuple[int, str]] = []  # heap of (expires_at_ms, job_id)
        # Futures set to True by a change (False when their wait ran out; see `wait_on`).
        self._job_waiters: dict[str, list[asyncio.Future[bool]]] = {}
        self._finish_waiters: dict[str, list[asyncio.Future[bool]]] = {}  # only at the end
        self._worker_waiters: dict[str, list[asyncio.Future[bool]]] = {n: [] for n in endpoints}
        self._run_s: dict[str, float] = dict.fromkeys(endpoints, 1.0)  # moving average per job
        self._closing = False  # shutting down: long-polls answer at once, no more grants
        # Called with the ids of jobs forgotten (their TTL passed): their files go too.
        self._forget_hooks: list[Callable[[list[str]], Awaitable[None]]] = []
        self._observer: JobEvents = NoJobEvents()  # told of each change (the metrics)

    # ----- start-up and shut-down

    async def open(self) -> None:
        """Loads the journal. Queued jobs stay queued. Running jobs keep running under a fresh
        lease: their worker may still be at work and will report to the new server (progress or
        result, the lease_id is kept); if it does not within lease_s, the sweeper puts the job
        back at the front of its queue, as for any expired lease. So a restart re-runs nothing
        that is still being worked on. A job of a removed endpoint fails (once the sweeper can
        write that), keeping its owner: only its client's key may read it."""
        started_ms = self._clock()
        for job in await self._journal.open(started_ms):
            # Versions are not stored: starting them at the clock keeps them growing across
            # restarts, so a client's Last-Event-ID or ?since= from before is always behind.
            job.version = job.texts_since = started_ms
            self._jobs[job.id] = job
            if job.status.finished:
                job.inputs_json = None
                heapq.heappush(self._expiry, (job.expires_at_ms or 0, job.id))
            elif job.endpoint not in self._endpoints or job.status is JobStatus.RUNNING:
                job.lease_expires_at_ms = started_ms + round(self._lease_s(job) * 1000)
                self._running[job.id] = job
            else:
                self._queues[job.endpoint].push(job)
        queued = sum(len(q) for q in self._queues.values())
        log.info("store opened: %d jobs, %d queued, %d running (waiting for their workers)",
                 len(self._jobs), queued, len(self._running))

    @property
    def closing(self) -> bool:
        return self._closing

    def stop_waiting(self) -> None:
        """Answers every long-poll now, and later ones at once (the server is shutting down and
        would otherwise wait for each to time out); claims grant nothing more."""
        self._closing = True
        for waiters in (*self._job_waiters.values(), *self._finish_waiters.values(),
                        *self._worker_waiters.values()):
            for w in waiters:
                if not w.done():
                    w.set_result(True)

    async def close(self) -> None:
        for waiters in (*self._job_waiters.values(), *self._finish_waiters.values(),
                        *self._worker_waiters.values()):
            for w in waiters:
                if not w.done():
                    w.cancel()
        await self._journal.close()

    # ----- clients

    async def get(self, job_id: str) -> JobView | None:
        """The job as it is now (its outputs read back when they are large); None if unknown."""
        job = self._jobs.get(job_id)
        return None if job is None else await self._view(job)

    async def endpoints_of(self, job_ids: Iterable[str]) -> dict[str, str]:
        """The endpoint of each known job (a cheap look-up for routing worker reports)."""
        return {i: job.endpoint for i in job_ids if (job := self._jobs.get(i)) is not None}

    async def queue_position(self, job_id: str) -> int | None:
        """How many jobs are ahead of this one in its queue (0: next); None unless queued."""
        job = self._jobs.get(job_id)
        return None if job is None else self._position(job)

    async def submit(
        self,
        endpoint: Endpoint,
        job_id: str | None,
        inputs_json: bytes,
        owner: str,
        wait_s: float = 0.0,
    ) -> tuple[JobView, bool]:
        """Queues a job once it is durable, and wakes a waiting worker.

        Args:
            endpoint (Endpoint): where the job goes.
            job_id (str | None): the client's own id; a repeat with the same inputs returns the
                first job. None: a fresh random id.
            inputs_json (bytes): the validated inputs, serialised.
            owner (str): a hash of the client's key ("" when the endpoint is open).
            wait_s (float): then wait up to this long for the job to finish (0: answer at once).

        Returns:
            tuple[JobView, bool]: the job (finished, or as it is once wait_s ran out), and
            whether it was created by this call.

        Raises:
            JobIdConflict: the id names another endpoint's, owner's or inputs' job.
            QueueFull: the endpoint's queue is at max_queue_length or max_queue_bytes.
            StoreUnavailable: the journal could not write it; nothing was queued.
        """
        job: Job | None = None
        while job_id is not None:
            if (inserting := self._inserting.get(job_id)) is not None:
                await asyncio.wait({inserting})  # the same id being written: answer after it
                continue
            job = self._jobs.get(job_id)
            if job is None:
                break
            await self._check_repeat(job, endpoint, owner, inputs_json)
            break
        created = job is None
        if job is None:
            job = await self._insert(endpoint, job_id, inputs_json, owner)
        if wait_s and not job.status.finished:
            job = await self._until_finished(job.id, wait_s) or job
        return await self._view(job), created

    async def _check_repeat(
        self, existing: Job, endpoint: Endpoint, owner: str, inputs_json: bytes
    ) -> None:
        if existing.endpoint != endpoint.name or existing.owner != owner:
            raise JobIdConflict(f"job_id {existing.id!r} is already used by another job")
        same = existing.inputs_bytes == len(inputs_json) and (
            existing.inputs_json or (await self._read_inputs([existing]))[existing.id]
        ) == inputs_json
        if not same:
            raise JobIdConflict(f"job_id {existing.id!r} was already submitted with other inputs")

    async def _insert(
        self,
        endpoint: Endpoint,
        job_id: str | None,
        inputs_json: bytes,
        owner: str,
    ) -> Job:
        name, settings = endpoint.name, endpoint.endpoint
        queue, submitting = self._queues[name], self._submitting[name]
        if len(queue) + submitting[0] >= settings.max_queue_length:
            raise QueueFull(f"the queue of endpoint {name!r} is full "
                            f"({settings.max_queue_length} jobs); retry later",
                            self._retry_after_s(name))
        if queue.bytes + submitting[1] + len(inputs_json) > settings.max_queue_bytes:
            raise QueueFull(f"the queue of endpoint {name!r} is full "
                            f"({settings.max_queue_bytes} bytes of inputs); retry later",
                            self._retry_after_s(name))
        inline = len(inputs_json) <= INLINE_VALUE_MAX_BYTES
        created_at_ms = self._clock()
        job = Job(
            id=job_id or new_job_id(created_at_ms),
            endpoint=name,
            owner=owner,
            inputs_json=inputs_json if inline else None,
            inputs_bytes=len(inputs_json),
            created_at_ms=created_at_ms,
        )
        submitting[0] += 1
        submitting[1] += len(inputs_json)
        if job_id is not None:  # a repeat of this id waits for this write
            inserting = self._inserting[job_id] = asyncio.get_running_loop().create_future()
        arriving = self._arriving[name]
        if inline:
            # A worker may take the job as it arrives, its lease written in the same commit as
            # the job (so nothing is granted that the disk refused). Woken before the job is
            # written, a waiting worker runs before that commit.
            arriving[job.id] = job
            self._wake_worker(name)
        write = self._journal.insert(job, inputs_json)
        job.insert_write = write
        try:
            await write
        except JournalError as e:
            raise StoreUnavailable(e, e.disk_full) from e
        finally:
            job.insert_write = None
            arriving.pop(job.id, None)
            submitting[0] -= 1
            submitting[1] -= len(inputs_json)
            if job_id is not None:
                del self._inserting[job_id]
                inserting.set_result(None)
        self._jobs[job.id] = job
        self._observer.job_submitted(name)
        if job.busy is None and job.status is JobStatus.QUEUED:  # not taken as it arrived
            queue.push(job)
            self._wake_worker(name)
            log.info("job %s queued endpoint=%s position=%d", job.id, name, len(queue) - 1)
        return job

    async def wait_for_change(
        self, job_id: str, since_version: int, timeout_s: float
    ) -> JobView | None:
        """The job once its version passes `since_version`, or after timeout_s; None if it is
        gone (its result expired)."""
        job = self._jobs.get(job_id)
        if job is not None and job.version <= since_version:
            await self._wait(job_id, timeout_s)
        return await self.get(job_id)

    async def _until_finished(self, job_id: str, timeout_s: float) -> Job | None:
        """The job once it finishes, or as it is after timeout_s; None if it is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        job = self._jobs.get(job_id)
        while job is not None and not job.status.finished and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await self._wait(job_id, remaining, self._finish_waiters)
            job = self._jobs.get(job_id)
        return job

    async def _wait(
        self,
        job_id: str,
        timeout_s: float,
        waiting: dict[str, list[asyncio.Future[bool]]] | None = None,
    ) -> None:
        """Returns at the job's next change (or, waiting in `_finish_waiters`, when it
        finishes), or after timeout_s; at once when closing."""
        if timeout_s <= 0 or self._closing:
            return
        waiting = self._job_waiters if waiting is None else waiting
        waiter = asyncio.get_running_loop().create_future()
        waiting.setdefault(job_id, []).append(waiter)
        try:
            await wait_on(waiter, timeout_s)
        finally:
            waiters = waiting.get(job_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del waiting[job_id]

    async def cancel(self, job_id: str) -> JobView | None:
        """Cancels a job: a queued one leaves its queue; a running one is stopped when its
        worker next reports. A finished job is left as it is. None if unknown."""
        held = await self._hold([job_id])
        try:
            job = held.jobs.get(job_id)
            if job is None:
                return None
            if not job.status.finished:
                await self._write([self._finished(job, JobStatus.CANCELED,
                                                  error="canceled by the client")])
                self._after_finish(job)
            return await self._view(job)
        finally:
            held.release()

    # ----- workers

    async def claim(
        self, endpoints: Sequence[Endpoint], max_batch: int, worker_id: str, timeout_s: float
    ) -> list[Grant]:
        """Leases up to max_batch jobs of one endpoint to a worker, waiting up to timeout_s.

        The endpoint whose oldest queued job has waited longest goes first; a batch never
        mixes endpoints.

        Raises:
            StoreUnavailable: the journal could not record the lease; the jobs stay queued.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._closing:
            jobs = self._take(endpoints, max_batch)
            if jobs:
                return await self._lease(jobs, worker_id)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            waiter = loop.create_future()
            for endpoint in endpoints:
                self._worker_waiters[endpoint.name].append(waiter)
            try:
                if not await wait_on(waiter, remaining):
                    return []
            except asyncio.CancelledError:  # the worker hung up: pass on a wake meant for it
                if waiter.done() and not waiter.cancelled():
                    for endpoint in endpoints:
                        if self._queues[endpoint.name]:
                            self._wake_worker(endpoint.name)
                raise
            finally:
                for endpoint in endpoints:
                    waiters = self._worker_waiters[endpoint.name]
                    if waiter in waiters:
                        waiters.remove(waiter)
        return []

    def _take(self, endpoints: Sequence[Endpoint], max_batch: int) -> list[Job]:
        """Takes up to max_batch jobs of the endpoint whose first job has waited longest:
        off the front of its queue, then from its jobs arriving now (those whose insert is
        still in the commit that the leases will join). Holds them: no other change can touch
        them until `_lease` is done."""
        heads = [
            (first.created_at_ms, i)
            for i, e in enumerate(endpoints)
            if (first := self._queues[e.name].first(ready=True) or self._arrived(e.name))
        ]
        if not heads:
            return []
        endpoint = endpoints[min(heads)[1]]
        queue, arriving = self._queues[endpoint.name], self._arriving[endpoint.name]
        count = min(max_batch, endpoint.worker.max_batch)
        hold = asyncio.get_running_loop().create_future()
        jobs = []
        while len(jobs) < count and (job := queue.pop_first(ready=True)) is not None:
            job.busy = hold
            jobs.append(job)
        while len(jobs) < count and (job := self._arrived(endpoint.name)) is not None:
            del arriving[job.id]
            job.busy = hold
            jobs.append(job)
        return jobs

    def _arrived(self, endpoint: str) -> Job | None:
        """The first job arriving at the endpoint whose insert a write made now would join."""
        for job in self._arriving[endpoint].values():
            if job.insert_write is not None and self._journal.joins(job.insert_write):
                return job
        return None

    async def _lease(self, jobs: list[Job], worker_id: str) -> list[Grant]:
        hold = jobs[0].busy
        assert hold is not None
        try:
            inputs = await self._read_inputs(jobs)
            now = self._clock()
            lease_ms = round(self._lease_s(jobs[0]) * 1000)
            worker_id = sys.intern(worker_id)  # one string per worker, not per job
            await self._write([
                (job, {
                    "status": JobStatus.RUNNING,
                    "attempts": job.attempts + 1,
                    "lease_id": secrets.token_hex(8),
                    "worker_id": worker_id,
                    "lease_expires_at_ms": now + lease_ms,
                    "started_at_ms": now,
                }, None)  # (progress is 0 and progress_outputs None in a queued job)
                for job in jobs
            ])
        except BaseException:
            queue = self._queues[jobs[0].endpoint]
            for job in reversed(jobs):  # back where they were, in their order (a job taken
                if job.id in self._jobs:  # as it arrived is gone: its insert failed too)
                    queue.push_front(job)
            self._wake_worker(jobs[0].endpoint)
            raise
        finally:
            _release(jobs, hold)
        for job in jobs:
            self._jobs[job.id] = job  # (one taken as it arrived may not be there yet)
            self._running[job.id] = job
            self._changed(job)
            log.info("job %s running endpoint=%s worker=%s attempt=%d waited=%.3fs", job.id,
                     job.endpoint, worker_id, job.attempts, (now - job.created_at_ms) / 1000)
        self.workers.started(worker_id, (job.id for job in jobs))
        lease_s = self._lease_s(jobs[0])
        return [  # the inputs as the serialised JSON they are kept as
            Grant(job.id, job.endpoint, job.lease_id, lease_s, job.lease_expires_at_ms,
                  job.attempts, orjson.Fragment(inputs[job.id]))
            for job in jobs
        ]

    async def report_progress(self, reports: Iterable[WorkerReport]) -> list[ReportAnswer]:
        """Records progress and renews each lease (in memory only: after a restart the worker
        just reports again). A worker whose lease had expired but whose job was not yet taken
        by another worker gets the job back (written first, as any change of status)."""
        answers = []
        for report in reports:
            job, answer = self._leased(report)
            if job is None:
                answers.append(answer)
                continue
            if job.status is JobStatus.QUEUED:  # lease lapsed, nobody took it: resume
                answer = await self._resume(job, report)
                if job.status is not JobStatus.RUNNING:
                    answers.append(answer)
                    continue
            job.lease_expires_at_ms = self._clock() + round(self._lease_s(job) * 1000)
            if report.progress is not None:
                job.progress = report.progress
            held = None
            if report.outputs is not None:
                held = job.progress_outputs or {}
                outputs = report.outputs
                if report.offsets:  # parts of texts: joined to those held
                    outputs, _ = rebuild_progress(held, outputs, report.offsets,
                                                  self._max_progress_chars)
                job.progress_outputs = outputs
            self._changed(job)
            if held is not None and not texts_extend(held, job.progress_outputs):
                job.texts_since = job.version
            lengths = held_lengths(report.outputs, job.progress_outputs)
            answers.append(ReportAnswer(job.id, ok=True, offsets=lengths))
        return answers

    async def _resume(self, job: Job, report: WorkerReport) -> ReportAnswer:
        held = await self._hold([job.id])
        try:
            job, answer = self._leased(report)
            if job is not None and job.status is JobStatus.QUEUED:
                await self._write([(job, {"status": JobStatus.RUNNING}, None)])
                self._dequeue(job)
                self._running[job.id] = job
            return answer
        finally:
            held.release()

    async def report_results(self, reports: Sequence[WorkerReport]) -> list[ReportAnswer]:
        """Records results, errors and hand-backs; answers once they are durable. A result
        repeated for the same lease is accepted again (idempotent).

        Raises:
            StoreUnavailable: the journal could not write them; nothing was recorded.
        """
        held = await self._hold([r.job_id for r in reports])
        try:
            answers: list[ReportAnswer] = []
            updates: list[_Update] = []
            requeued: list[Job] = []
            for report in reports:
                job, answer = self._leased(report, finished_ok=True)
                if job is None:
                    answers.append(answer)
                elif job.status.finished:
                    answers.append(await self._repeat_answer(job, report))
                elif report.release:
                    # A queued one is back already (its lease expired and that attempt
                    # counted); one of a removed endpoint is failed by the sweeper.
                    if job.status is JobStatus.RUNNING and job.endpoint in self._queues:
                        updates.append(self._requeued(job, count=False))
                        requeued.append(job)
                    answers.append(ReportAnswer(job.id, ok=True))
                else:  # (a queued job's lease lapsed but nobody took it: the result counts)
                    if report.error is not None:
                        updates.append(self._finished(job, JobStatus.FAILED, error=report.error))
                    else:
                        updates.append(self._finished(job, JobStatus.DONE,
                                                      outputs_json=report.outputs_json or b"{}"))
                    answers.append(ReportAnswer(job.id, ok=True))
            await self._write(updates)
            for job, _, _ in updates:
                if job in requeued:
                    self._after_requeue(job, "handed back by its worker")
                    self._observer.job_handed_back(job.endpoint)
                else:
                    self._after_finish(job)
            return answers
        finally:
            held.release()

    async def _repeat_answer(self, job: Job, report: WorkerReport) -> ReportAnswer:
        """A repeat of the result we have is fine (the worker retried after losing our
        answer); another result for a finished job is not."""
        if report.release:
            same = False
        elif report.error is not None:
            same = job.error == report.error
        else:
            outputs = report.outputs_json or b"{}"
            stored = job.outputs_json
            if stored is None and job.outputs_bytes == len(outputs):
                stored = await self._journal.read_outputs(job.id)
            same = job.status is JobStatus.DONE and stored == outputs
        if same:
            return ReportAnswer(job.id, ok=True)
        return ReportAnswer.job_finished(job.id, job.status, job.error)

    def _leased(
        self, report: WorkerReport, finished_ok: bool = False
    ) -> tuple[Job | None, ReportAnswer]:
        """The job a report is about, if the reporting worker still holds its lease."""
        job = self._jobs.get(report.job_id)
        if job is None:
            return None, ReportAnswer.unknown_job(report.job_id)
        if job.lease_id != report.lease_id:
            return None, ReportAnswer.lease_lost(job.id)
        if job.status is JobStatus.CANCELED:
            return None, ReportAnswer.job_canceled(job.id)
        if job.status.finished and not finished_ok:
            return None, ReportAnswer.job_finished(job.id, job.status)
        return job, ReportAnswer(job.id, ok=True)

    # ----- housekeeping

    async def sweep(self) -> None:
        """Requeues or fails jobs whose lease expired or that ran too long; forgets results
        past their TTL and workers unseen for worker_seen_ttl_s. Jobs with a write in flight
        wait for the next sweep. A failed write changes nothing and is tried again at the next
        sweep."""
        self.workers.forget_unseen(self._worker_seen_ttl_s)
        now = self._clock()
        updates: list[_Update] = []
        requeued: dict[Job, str] = {}
        expired: list[tuple[str, bool]] = []  # (endpoint, requeued) of each lease expired
        for job in list(self._running.values()):
            if job.busy is not None:
                continue
            endpoint = self._endpoints.get(job.endpoint)
            if endpoint is None:
                updates.append(self._finished(job, JobStatus.FAILED,
                                              error=f"endpoint {job.endpoint!r} was removed"))
                continue
            settings = endpoint.endpoint
            if now - (job.started_at_ms or now) > settings.job_timeout_s * 1000:
                error = f"ran longer than job_timeout_s ({settings.job_timeout_s:g} s)"
                updates.append(self._finished(job, JobStatus.FAILED, error=error))
            elif now > job.lease_expires_at_ms:
                if job.attempts >= settings.max_attempts:
                    error = (
                        f"worker {job.worker_id} stopped reporting and the lease expired "
                        f"{job.attempts} times (max_attempts = {settings.max_attempts})"
                    )
                    updates.append(self._finished(job, JobStatus.FAILED, error=error))
                    expired.append((job.endpoint, False))
                else:
                    updates.append(self._requeued(job, count=True))
                    requeued[job] = f"lease expired: worker {job.worker_id} stopped reporting"
                    expired.append((job.endpoint, True))
        if updates:
            hold = asyncio.get_running_loop().create_future()
            jobs = [job for job, _, _ in updates]
            for job in jobs:
                job.busy = hold
            try:
                await self._write(updates)
            finally:
                _release(jobs, hold)
            for job in jobs:
                if job in requeued:
                    self._after_requeue(job, requeued[job])
                else:
                    self._after_finish(job)
            for endpoint_name, back in expired:
                self._observer.lease_expired(endpoint_name, back)
        await self._forget_expired(now)

    async def _forget_expired(self, now: int) -> None:
        expired: list[Job] = []
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            job = self._jobs.get(job_id)
            if job is not None and job.status.finished and (job.expires_at_ms or 0) <= now:
                expired.append(job)
        if not expired:
            return
        try:
            await self._journal.delete(job.id for job in expired)
        except JournalError as e:
            log.warning("could not forget %d expired results yet: %s", len(expired), e)
            for job in expired:
                heapq.heappush(self._expiry, (now + 1000, job.id))
            return
        for job in expired:
            del self._jobs[job.id]
        for hook in self._forget_hooks:
            try:
                await hook([job.id for job in expired])
            except Exception:  # the sweeper goes on; an orphan is removed at the next start
                log.exception("a hook on forgotten jobs failed")

    def on_forget(self, hook: Callable[[list[str]], Awaitable[None]]) -> None:
        """Calls `await hook(job_ids)` after jobs are forgotten at the end of their TTL."""
        self._forget_hooks.append(hook)

    def observe(self, events: JobEvents) -> None:
        """Tells `events` of every job submitted, finished or requeued from now on."""
        self._observer = events

    async def worker_seen(
        self,
        worker_id: str,
        key_owner: str,
        job_types: Sequence[str],
        address: str,
        info: dict[str, Any],
    ) -> None:
        self.workers.seen(worker_id, key_owner, job_types, address, info)

    async def worker_goodbye(self, worker_id: str, key_owner: str) -> bool:
        return self.workers.goodbye(worker_id, key_owner)

    async def lease_answer(self, job_id: str, lease_id: str) -> ReportAnswer:
        """Whether the worker holding `lease_id` may still add to the job (upload a file): ok,
        or what its progress report would get (404 unknown; 409 lease lost or job finished;
        canceled)."""
        return self._leased(WorkerReport(job_id, lease_id))[1]

    async def checkpoint(self) -> None:
        """Makes the journal's recent writes safe from a power cut too (an fsync)."""
        await self._journal.checkpoint()

    async def stats(self, with_addresses: bool = False) -> dict[str, Any]:
        """Queue lengths, running jobs and workers online per endpoint, and the workers seen,
        for `/api/v1/status` and `/api/v1/endpoints`; worker addresses only when asked."""
        running: dict[str, int] = dict.fromkeys(self._endpoints, 0)
        for job in self._running.values():
            if job.endpoint in running:
                running[job.endpoint] += 1
        return {
            "endpoints": {
                name: {
                    "queued": len(self._queues[name]),
                    "queued_bytes": self._queues[name].bytes,
                    "running": running[name],
                    "workers": self.workers.online(e.job_type),
                }
                for name, e in self._endpoints.items()
            },
            "workers": self.workers.to_json(with_addresses),
        }

    # ----- transitions: each builds an update; the `_after_*` side effects run once written

    async def _write(self, updates: list[_Update]) -> None:
        """Writes the updates' new states, then applies them to the jobs. The journal groups
        them into one commit; on failure nothing is applied."""
        if not updates:
            return
        writes = [self._journal.update(job, change, outputs) for job, change, outputs in updates]
        failed: JournalError | None = None
        for write in writes:  # (one group commit: usually one future, awaited once)
            try:
                await write
            except JournalError as e:
                failed = failed or e
        if failed is not None:
            raise StoreUnavailable(failed, failed.disk_full) from failed
        for job, change, _ in updates:
            for key, value in change.items():
                setattr(job, key, value)

    def _finished(
        self,
        job: Job,
        status: JobStatus,
        *,
        outputs_json: bytes | None = None,
        error: str | None = None,
    ) -> _Update:
        now = self._clock()
        endpoint = self._endpoints.get(job.endpoint)  # None: removed from the config
        ttl_s = (endpoint.endpoint if endpoint else EndpointSection()).result_ttl_s
        inline = outputs_json is not None and len(outputs_json) <= INLINE_VALUE_MAX_BYTES
        change: dict[str, Any] = {
            "status": status,
            "finished_at_ms": now,
            "expires_at_ms": now + round(ttl_s * 1000),
            "outputs_json": outputs_json if inline else None,
            "outputs_bytes": len(outputs_json or b""),
            "error": error,
            "inputs_json": None,  # only a repeated submit compares them: read back then
        }
        if status is JobStatus.DONE:
            change["progress"] = 100.0
            change["progress_outputs"] = None  # the outputs have it all
        return job, change, outputs_json

    def _after_finish(self, job: Job) -> None:
        now = job.finished_at_ms or self._clock()
        self._running.pop(job.id, None)
        self._dequeue(job)
        self.workers.ended(job.worker_id, job.id, job.status)
        heapq.heappush(self._expiry, (job.expires_at_ms or now, job.id))
        self._changed(job)
        for waiter in self._finish_waiters.pop(job.id, ()):
            if not waiter.done():
                waiter.set_result(True)
        if job.started_at_ms is not None and job.status is JobStatus.DONE:
            run_s = (now - job.started_at_ms) / 1000
            if job.endpoint in self._run_s:
                self._run_s[job.endpoint] = 0.9 * self._run_s[job.endpoint] + 0.1 * run_s
            self._observer.job_finished(job.endpoint, job.status,
                                        (job.started_at_ms - job.created_at_ms) / 1000, run_s)
        else:
            self._observer.job_finished(job.endpoint, job.status, None, None)
        log.info(
            "job %s %s endpoint=%s worker=%s run=%.3fs total=%.3fs%s",
            job.id,
            job.status,
            job.endpoint,
            job.worker_id or "-",
            (now - job.started_at_ms) / 1000 if job.started_at_ms else 0.0,
            (now - job.created_at_ms) / 1000,
            f" error={job.error!r}" if job.error else "",
        )

    def _requeued(self, job: Job, *, count: bool) -> _Update:
        """Puts a running job back at the front of its queue (once written)."""
        attempts = job.attempts if count else max(0, job.attempts - 1)
        change = {"status": JobStatus.QUEUED, "attempts": attempts, "progress": 0.0,
                  "progress_outputs": None}
        return job, change, None

    def _after_requeue(self, job: Job, reason: str) -> None:
        self._running.pop(job.id, None)
        self.workers.ended(job.worker_id, job.id, None)
        self._queues[job.endpoint].push_front(job)
        self._changed(job)
        job.texts_since = job.version  # (its progress texts are gone: the next attempt's start)
        self._wake_worker(job.endpoint)
        log.warning(
            "job %s requeued endpoint=%s attempt=%d: %s", job.id, job.endpoint, job.attempts, reason
        )

    def _changed(self, job: Job) -> None:
        job.version += 1
        for waiter in self._job_waiters.pop(job.id, ()):
            if not waiter.done():
                waiter.set_result(True)

    def _wake_worker(self, endpoint: str) -> None:
        waiters = self._worker_waiters[endpoint]
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(True)
                return

    # ----- helpers

    async def _hold(self, job_ids: Iterable[str]) -> _Held:
        """Waits until none of these jobs has a write in flight, then holds them."""
        ids = list(job_ids)
        while True:
            jobs = {i: job for i in ids if (job := self._jobs.get(i)) is not None}
            busy = {job.busy for job in jobs.values() if job.busy is not None}
            if not busy:
                break
            await asyncio.wait(busy)
        held = _Held(jobs, asyncio.get_running_loop().create_future())
        for job in jobs.values():
            job.busy = held.future
        return held

    async def _read_inputs(self, jobs: list[Job]) -> dict[str, bytes]:
        """The jobs' inputs: from memory, or from the journal for large ones."""
        inputs = {job.id: job.inputs_json for job in jobs if job.inputs_json is not None}
        missing = [job.id for job in jobs if job.inputs_json is None]
        if missing:
            try:
                inputs.update(await self._journal.read_inputs(missing))
            except JournalError as e:
                raise StoreUnavailable(e, e.disk_full) from e
        return inputs  # type: ignore[return-value]

    async def _view(self, job: Job) -> JobView:
        outputs = job.outputs_json
        if outputs is None and job.outputs_bytes and job.status is JobStatus.DONE:
            try:
                outputs = await self._journal.read_outputs(job.id)
            except JournalError as e:
                raise StoreUnavailable(e, e.disk_full) from e
        return JobView(
            id=job.id,
            endpoint=job.endpoint,
            owner=job.owner,
            status=job.status,
            version=job.version,
            progress=job.progress,
            queue_position=self._position(job),
            progress_outputs=job.progress_outputs,
            outputs_json=outputs,
            error=job.error,
            attempts=job.attempts,
            created_at_ms=job.created_at_ms,
            started_at_ms=job.started_at_ms,
            finished_at_ms=job.finished_at_ms,
            texts_since=job.texts_since,
        )

    def _dequeue(self, job: Job) -> None:
        if (queue := self._queues.get(job.endpoint)) is not None:
            queue.remove(job.id)

    def _position(self, job: Job) -> int | None:
        if job.status is not JobStatus.QUEUED or job.endpoint not in self._queues:
            return None
        return self._queues[job.endpoint].position(job.id)

    def _lease_s(self, job: Job) -> float:
        endpoint = self._endpoints.get(job.endpoint)
        return (endpoint.endpoint if endpoint else EndpointSection()).lease_s

    def _retry_after_s(self, endpoint: str) -> int:
        """A guess at when a queue slot frees: one job's run time over the jobs running."""
        running = sum(1 for job in self._running.values() if job.endpoint == endpoint)
        return max(1, math.ceil(self._run_s[endpoint] / max(1, running)))


class _Held:
    """Jobs held for one change (see `JobStore._hold`)."""

    __slots__ = ("future", "jobs")

    def __init__(self, jobs: dict[str, Job], future: asyncio.Future[None]) -> None:
        self.jobs, self.future = jobs, future

    def release(self) -> None:
        _release(self.jobs.values(), self.future)


def _release(jobs: Iterable[Job], hold: asyncio.Future[None]) -> None:
    for job in jobs:
        if job.busy is hold:
            job.busy = None
    if not hold.done():
        hold.set_result(None)
