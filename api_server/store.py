"""The job store: queues per endpoint, leases, results, and who is waiting on what.

`JobStore` keeps every live job in memory (the authority while the server runs: reads cost no
I/O) and writes each change through a journal (SQLite by default) so that a restart loses
nothing: queued jobs stay queued, running ones go back to the queue, results stay readable until
their TTL. A Redis backend, for several API servers sharing one queue, implements the same public
methods.

Concurrency: everything here runs on the server's event loop, so no method needs a lock; the
only awaits are on the journal and on waiters.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from api_server.config import Endpoint, EndpointSection
from api_server.job_queue import JobQueue
from api_server.jobs import (
    Job,
    JobIdConflict,
    JobStatus,
    QueueFull,
    ReportAnswer,
    WorkerReport,
    now_ms,
)
from api_server.sqlite_journal import SqliteJournal

log = logging.getLogger("jobhive.jobs")


@dataclass(slots=True)
class WorkerSeen:
    """A worker as `/api/v1/status` shows it."""

    worker_id: str
    job_types: tuple[str, ...]
    address: str
    info: dict[str, Any]
    last_seen_ms: int
    jobs_done: int = 0
    jobs_failed: int = 0
    running: set[str] = field(default_factory=set)


class JobStore:
    """Queues, leases and results of every endpoint's jobs.

    Args:
        endpoints (Mapping[str, Endpoint]): the endpoints by name.
        journal (SqliteJournal): where every change is made durable.
    """

    def __init__(self, endpoints: Mapping[str, Endpoint], journal: SqliteJournal) -> None:
        self._endpoints = endpoints
        self._journal = journal
        self._jobs: dict[str, Job] = {}
        self._queues: dict[str, JobQueue] = {name: JobQueue() for name in endpoints}
        self._running: dict[str, Job] = {}
        self._expiry: list[tuple[int, str]] = []  # heap of (expires_at_ms, job_id)
        self._job_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._worker_waiters: dict[str, list[asyncio.Future[None]]] = {n: [] for n in endpoints}
        self._run_s: dict[str, float] = dict.fromkeys(endpoints, 1.0)  # moving average per job
        self._workers: dict[str, WorkerSeen] = {}
        self._closing = False  # shutting down: long-polls answer at once, no more grants

    # ----- start-up and shut-down

    async def open(self) -> None:
        """Loads the journal. Queued jobs stay queued. Running jobs keep running under a fresh
        lease: their worker may still be at work and will report to the new server (progress or
        result, the lease_id is kept); if it does not within lease_s, the sweeper puts the job
        back at the front of its queue, as for any expired lease. So a restart re-runs nothing
        that is still being worked on."""
        started_ms = now_ms()
        for job in await self._journal.open(started_ms):
            # Versions are not stored: starting them at the clock keeps them growing across
            # restarts, so a client's Last-Event-ID or ?since= from before is always behind.
            job.version = started_ms
            self._jobs[job.id] = job
            if job.status.finished:
                heapq.heappush(self._expiry, (job.expires_at_ms or 0, job.id))
            elif job.endpoint not in self._endpoints:
                self._finish(job, JobStatus.FAILED, error=f"endpoint {job.endpoint!r} was removed")
            elif job.status is JobStatus.RUNNING:
                lease_s = self._endpoints[job.endpoint].endpoint.lease_s
                job.lease_expires_at_ms = started_ms + round(lease_s * 1000)
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
        for waiters in (*self._job_waiters.values(), *self._worker_waiters.values()):
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def close(self) -> None:
        for waiters in (*self._job_waiters.values(), *self._worker_waiters.values()):
            for w in waiters:
                if not w.done():
                    w.cancel()
        await self._journal.close()

    # ----- clients

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def queue_position(self, job: Job) -> int | None:
        """How many jobs are ahead of this one in its queue (0: next); None unless queued."""
        if job.status is not JobStatus.QUEUED:
            return None
        return self._queues[job.endpoint].position(job.id)

    async def submit(
        self, endpoint: Endpoint, job_id: str | None, inputs_json: bytes, owner: str
    ) -> tuple[Job, bool]:
        """Queues a job, durably, and wakes a waiting worker.

        Args:
            endpoint (Endpoint): where the job goes.
            job_id (str | None): the client's own id; a repeat with the same inputs returns the
                first job. None: a fresh random id.
            inputs_json (bytes): the validated inputs, serialised.
            owner (str): a hash of the client's key ("" when the endpoint is open).

        Returns:
            tuple[Job, bool]: the job, and whether it was created by this call.

        Raises:
            JobIdConflict: the id names another endpoint's, owner's or inputs' job.
            QueueFull: the endpoint's queue is at max_queue_length.
        """
        if job_id is not None and (existing := self._jobs.get(job_id)) is not None:
            if existing.endpoint != endpoint.name or existing.owner != owner:
                raise JobIdConflict(f"job_id {job_id!r} is already used by another job")
            if existing.inputs_json != inputs_json:
                raise JobIdConflict(f"job_id {job_id!r} was already submitted with other inputs")
            return existing, False
        queue = self._queues[endpoint.name]
        if len(queue) >= endpoint.endpoint.max_queue_length:
            raise QueueFull(endpoint.name, len(queue), self._retry_after_s(endpoint.name))
        job = Job(
            id=job_id or secrets.token_hex(16),
            endpoint=endpoint.name,
            owner=owner,
            inputs_json=inputs_json,
        )
        self._jobs[job.id] = job
        queue.push(job)
        saved = self._journal.insert(job)
        self._wake_worker(endpoint.name)
        log.info("job %s queued endpoint=%s position=%d", job.id, job.endpoint, len(queue) - 1)
        await saved
        return job, True

    async def wait_for_change(self, job: Job, since_version: int, timeout_s: float) -> None:
        """Returns once the job's version passes `since_version`, or after timeout_s."""
        if job.version > since_version or timeout_s <= 0 or self._closing:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._job_waiters.setdefault(job.id, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            pass
        finally:
            waiters = self._job_waiters.get(job.id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._job_waiters[job.id]

    async def cancel(self, job: Job) -> None:
        """Cancels a job: a queued one leaves its queue; a running one is stopped when its
        worker next reports. A finished job is left as it is."""
        if job.status.finished:
            return
        self._queues[job.endpoint].remove(job.id)
        await self._finish(job, JobStatus.CANCELED, error="canceled by the client")

    # ----- workers

    def worker_seen(
        self, worker_id: str, job_types: Sequence[str], address: str, info: dict[str, Any]
    ) -> None:
        seen = self._workers.get(worker_id)
        if seen is None:
            seen = self._workers[worker_id] = WorkerSeen(
                worker_id, tuple(job_types), address, info, now_ms()
            )
            log.info("worker %s connected from %s for %s", worker_id, address, ",".join(job_types))
        seen.job_types, seen.address, seen.info = tuple(job_types), address, info
        seen.last_seen_ms = now_ms()

    async def claim(
        self, endpoints: Sequence[Endpoint], max_batch: int, worker_id: str, timeout_s: float
    ) -> list[Job]:
        """Leases up to max_batch jobs of one endpoint to a worker, waiting up to timeout_s.

        The endpoint whose oldest queued job has waited longest goes first; a batch never
        mixes endpoints.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._closing:
            jobs = self._take(endpoints, max_batch, worker_id)
            remaining = deadline - loop.time()
            if jobs or remaining <= 0:
                return jobs
            waiter = loop.create_future()
            for endpoint in endpoints:
                self._worker_waiters[endpoint.name].append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
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

    def _take(self, endpoints: Sequence[Endpoint], max_batch: int, worker_id: str) -> list[Job]:
        heads = [
            (first.created_at_ms, i)
            for i, e in enumerate(endpoints)
            if (first := self._queues[e.name].first()) is not None
        ]
        if not heads:
            return []
        endpoint = endpoints[min(heads)[1]]
        queue = self._queues[endpoint.name]
        count = min(max_batch, endpoint.worker.max_batch, len(queue))
        now = now_ms()
        lease_ms = round(endpoint.endpoint.lease_s * 1000)
        jobs = []
        for _ in range(count):
            job = queue.pop_first()
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.lease_id = secrets.token_hex(8)
            job.worker_id = worker_id
            job.lease_expires_at_ms = now + lease_ms
            job.started_at_ms = now
            job.progress = 0.0
            job.progress_outputs = None
            self._running[job.id] = job
            self._changed(job)
            self._journal.update(job)
            log.info(
                "job %s running endpoint=%s worker=%s attempt=%d waited=%.3fs",
                job.id,
                job.endpoint,
                worker_id,
                job.attempts,
                (now - job.created_at_ms) / 1000,
            )
            jobs.append(job)
        if (seen := self._workers.get(worker_id)) is not None:
            seen.running.update(job.id for job in jobs)
        return jobs

    async def report_progress(self, reports: Iterable[WorkerReport]) -> list[ReportAnswer]:
        """Records progress and renews each lease (in memory only: after a restart the worker
        just reports again). A worker whose lease had expired but whose job was not yet taken
        by another worker gets the job back."""
        now = now_ms()
        answers = []
        for report in reports:
            job, answer = self._leased(report)
            if job is None:
                answers.append(answer)
                continue
            if job.status is JobStatus.QUEUED:  # lease lapsed, nobody took it: resume
                self._resume(job)
                self._journal.update(job)
            endpoint = self._endpoints[job.endpoint]
            job.lease_expires_at_ms = now + round(endpoint.endpoint.lease_s * 1000)
            if report.progress is not None:
                job.progress = report.progress
            if report.outputs is not None:
                job.progress_outputs = report.outputs
            self._changed(job)
            answers.append(ReportAnswer(job.id, ok=True))
        return answers

    async def report_results(self, reports: Iterable[WorkerReport]) -> list[ReportAnswer]:
        """Records results, errors and hand-backs; answers once they are durable. A result
        repeated for the same lease is accepted again (idempotent)."""
        answers: list[ReportAnswer] = []
        saves = []
        for report in reports:
            job, answer = self._leased(report, finished_ok=True)
            if job is not None and job.status is JobStatus.QUEUED and not report.release:
                self._resume(job)  # its lease lapsed but nobody took it: the result counts
            if job is None:
                answers.append(answer)
            elif job.status.finished:  # a repeat of the result we have is fine; another is not
                same = not report.release and (
                    job.error == report.error
                    if report.error is not None
                    else job.outputs_json == orjson.dumps(report.outputs or {})
                )
                why = f"job already {job.status}" + (f": {job.error}" if job.error else "")
                answers.append(ReportAnswer(job.id, ok=same, error=None if same else why,
                                            status=200 if same else 409))
            elif report.release:
                if job.status is JobStatus.RUNNING:  # (a queued one is back already: its lease
                    reason = "handed back by its worker"  # expired and that attempt counted)
                    saves.append(self._requeue(job, reason=reason, count=False))
                answers.append(ReportAnswer(job.id, ok=True))
            else:
                if report.error is not None:
                    saves.append(self._finish(job, JobStatus.FAILED, error=report.error))
                else:
                    outputs = orjson.dumps(report.outputs or {})
                    saves.append(self._finish(job, JobStatus.DONE, outputs_json=outputs))
                answers.append(ReportAnswer(job.id, ok=True))
        if saves:
            await asyncio.gather(*saves)
        return answers

    def _leased(
        self, report: WorkerReport, finished_ok: bool = False
    ) -> tuple[Job | None, ReportAnswer]:
        """The job a report is about, if the reporting worker still holds its lease."""
        job = self._jobs.get(report.job_id)
        if job is None:
            return None, ReportAnswer(report.job_id, ok=False, error="unknown job", status=404)
        if job.lease_id != report.lease_id:
            return None, ReportAnswer(
                job.id, ok=False, error="lease lost: the job was given to another worker",
                status=409,
            )
        if job.status is JobStatus.CANCELED:
            return None, ReportAnswer(job.id, ok=False, canceled=True, error="canceled")
        if job.status.finished and not finished_ok:
            return None, ReportAnswer(job.id, ok=False, error=f"job already {job.status}",
                                      status=409)
        return job, ReportAnswer(job.id, ok=True)

    # ----- housekeeping

    async def sweep(self) -> None:
        """Requeues or fails jobs whose lease expired or that ran too long; forgets results
        past their TTL; drops workers unseen for long."""
        now = now_ms()
        saves = []
        for job in list(self._running.values()):
            settings = self._endpoints[job.endpoint].endpoint
            if now - (job.started_at_ms or now) > settings.job_timeout_s * 1000:
                error = f"ran longer than job_timeout_s ({settings.job_timeout_s:g} s)"
                saves.append(self._finish(job, JobStatus.FAILED, error=error))
            elif now > job.lease_expires_at_ms:
                if job.attempts >= settings.max_attempts:
                    error = (
                        f"worker {job.worker_id} stopped reporting and the lease expired "
                        f"{job.attempts} times (max_attempts = {settings.max_attempts})"
                    )
                    saves.append(self._finish(job, JobStatus.FAILED, error=error))
                else:
                    reason = f"lease expired: worker {job.worker_id} stopped reporting"
                    saves.append(self._requeue(job, reason=reason, count=True))
        expired = []
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            job = self._jobs.get(job_id)
            if job is not None and job.status.finished and (job.expires_at_ms or 0) <= now:
                del self._jobs[job_id]
                expired.append(job_id)
        if expired:
            saves.append(self._journal.delete(expired))
        if saves:
            await asyncio.gather(*saves)

    async def checkpoint(self) -> None:
        """Makes the journal's recent writes safe from a power cut too (an fsync)."""
        await self._journal.checkpoint()

    def forget_workers(self, unseen_s: float) -> None:
        cutoff = now_ms() - unseen_s * 1000
        for worker_id in [w for w, s in self._workers.items() if s.last_seen_ms < cutoff]:
            del self._workers[worker_id]
            log.info("worker %s gone (unseen for %g s)", worker_id, unseen_s)

    def stats(self) -> dict[str, Any]:
        """Queue lengths, running jobs and workers online per endpoint, and the workers seen,
        for `/api/v1/status` and `/api/v1/endpoints`."""
        running: dict[str, int] = dict.fromkeys(self._endpoints, 0)
        for job in self._running.values():
            running[job.endpoint] += 1
        return {
            "endpoints": {
                name: {
                    "queued": len(self._queues[name]),
                    "running": running[name],
                    "workers": sum(e.job_type in w.job_types for w in self._workers.values()),
                }
                for name, e in self._endpoints.items()
            },
            "workers": [
                {
                    "worker_id": w.worker_id,
                    "job_types": list(w.job_types),
                    "address": w.address,
                    "info": w.info,
                    "last_seen_ms": w.last_seen_ms,
                    "jobs_done": w.jobs_done,
                    "jobs_failed": w.jobs_failed,
                    "running": len(w.running),
                }
                for w in self._workers.values()
            ],
        }

    # ----- transitions

    def _changed(self, job: Job) -> None:
        job.version += 1
        for waiter in self._job_waiters.pop(job.id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _wake_worker(self, endpoint: str) -> None:
        waiters = self._worker_waiters[endpoint]
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _resume(self, job: Job) -> None:
        """Gives a requeued job back to the worker that still holds its lease."""
        self._queues[job.endpoint].remove(job.id)
        job.status = JobStatus.RUNNING
        self._running[job.id] = job

    def _requeue(self, job: Job, *, reason: str, count: bool) -> asyncio.Future[None]:
        """Puts a running job back at the front of its queue."""
        self._running.pop(job.id, None)
        self._release_worker(job)
        if not count:
            job.attempts = max(0, job.attempts - 1)
        job.status = JobStatus.QUEUED
        job.progress = 0.0
        job.progress_outputs = None
        self._queues[job.endpoint].push_front(job)
        self._changed(job)
        self._wake_worker(job.endpoint)
        log.warning(
            "job %s requeued endpoint=%s attempt=%d: %s", job.id, job.endpoint, job.attempts, reason
        )
        return self._journal.update(job)

    def _finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        outputs_json: bytes | None = None,
        error: str | None = None,
    ) -> asyncio.Future[None]:
        now = now_ms()
        self._running.pop(job.id, None)
        self._release_worker(job, status)
        job.status = status
        job.finished_at_ms = now
        job.outputs_json = outputs_json
        job.error = error
        if status is JobStatus.DONE:
            job.progress = 100.0
        endpoint = self._endpoints.get(job.endpoint)  # None: removed from the config
        ttl_s = (endpoint.endpoint if endpoint else EndpointSection()).result_ttl_s
        job.expires_at_ms = now + round(ttl_s * 1000)
        heapq.heappush(self._expiry, (job.expires_at_ms, job.id))
        self._changed(job)
        if job.started_at_ms is not None and status is JobStatus.DONE:
            run_s = (now - job.started_at_ms) / 1000
            self._run_s[job.endpoint] = 0.9 * self._run_s[job.endpoint] + 0.1 * run_s
        log.info(
            "job %s %s endpoint=%s worker=%s run=%.3fs total=%.3fs%s",
            job.id,
            status,
            job.endpoint,
            job.worker_id or "-",
            (now - job.started_at_ms) / 1000 if job.started_at_ms else 0.0,
            (now - job.created_at_ms) / 1000,
            f" error={error!r}" if error else "",
        )
        return self._journal.update(job)

    def _release_worker(self, job: Job, status: JobStatus | None = None) -> None:
        seen = self._workers.get(job.worker_id)
        if seen is None or job.id not in seen.running:
            return
        seen.running.discard(job.id)
        if status is JobStatus.DONE:
            seen.jobs_done += 1
        elif status is JobStatus.FAILED:
            seen.jobs_failed += 1

    def _retry_after_s(self, endpoint: str) -> int:
        """A guess at when a queue slot frees: one job's run time over the jobs running."""
        running = sum(1 for job in self._running.values() if job.endpoint == endpoint)
        return max(1, math.ceil(self._run_s[endpoint] / max(1, running)))
