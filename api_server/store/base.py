"""`Store`: what the routes need of a job store, whichever backend keeps the jobs.

Two backends implement it: `JobStore` (one server: state in memory, every change journaled to
SQLite first) and `RedisStore` (any number of servers sharing one Redis). Both hand routes
frozen snapshots (`JobView`), never a live record, and raise `StoreError`s that the app's edge
turns into statuses (409, 429, 503, 507).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from api_server.config import Endpoint
from api_server.store.model import JobView, ReportAnswer, WorkerReport
from jobhive.protocol import Grant, JobStatus


class JobEvents(Protocol):
    """What a store tells, as it happens, about the jobs it changes (the server's metrics
    count them: api_server.metrics). Called on the event loop; must not block or raise."""

    def job_submitted(self, endpoint: str) -> None: ...

    def job_finished(
        self, endpoint: str, status: JobStatus, wait_s: float | None, run_s: float | None
    ) -> None:
        """A job ended done, failed or canceled; for a done job, its wait (submit to the start
        of its last attempt) and run (that start to its result) in seconds."""
        ...

    def lease_expired(self, endpoint: str, requeued: bool) -> None:
        """A worker stopped reporting: its job was requeued, or failed (max_attempts)."""
        ...

    def job_handed_back(self, endpoint: str) -> None:
        """A worker handed a running job back (release): it is queued again."""
        ...


class NoJobEvents:
    """The JobEvents of a store nobody observes: each does nothing."""

    def job_submitted(self, endpoint: str) -> None:
        pass

    def job_finished(
        self, endpoint: str, status: JobStatus, wait_s: float | None, run_s: float | None
    ) -> None:
        pass

    def lease_expired(self, endpoint: str, requeued: bool) -> None:
        pass

    def job_handed_back(self, endpoint: str) -> None:
        pass


class Store(Protocol):
    @property
    def closing(self) -> bool:
        """Shutting down: long-polls answer at once, claims grant nothing."""
        ...

    async def open(self) -> None: ...

    def stop_waiting(self) -> None:
        """Answers every long-poll now and later ones at once (the server is shutting down)."""
        ...

    async def close(self) -> None: ...

    # ----- clients

    async def get(self, job_id: str) -> JobView | None: ...

    async def endpoints_of(self, job_ids: Iterable[str]) -> dict[str, str]:
        """The endpoint of each known job among these."""
        ...

    async def queue_position(self, job_id: str) -> int | None: ...

    async def submit(
        self,
        endpoint: Endpoint,
        job_id: str | None,
        inputs_json: bytes,
        owner: str,
        wait_s: float = 0.0,
    ) -> tuple[JobView, bool]:
        """Queues a job once it is durable (and, with wait_s, waits that long for it to
        finish); returns it and whether this call created it."""
        ...

    async def wait_for_change(
        self, job_id: str, since_version: int, timeout_s: float
    ) -> JobView | None: ...

    async def cancel(self, job_id: str) -> JobView | None: ...

    # ----- workers

    async def claim(
        self, endpoints: Sequence[Endpoint], max_batch: int, worker_id: str, timeout_s: float
    ) -> list[Grant]: ...

    async def report_progress(self, reports: Iterable[WorkerReport]) -> list[ReportAnswer]: ...

    async def report_results(self, reports: Sequence[WorkerReport]) -> list[ReportAnswer]: ...

    async def lease_answer(self, job_id: str, lease_id: str) -> ReportAnswer:
        """Whether the worker holding lease_id may still add to the job (upload a file)."""
        ...

    async def worker_seen(
        self,
        worker_id: str,
        key_owner: str,
        job_types: Sequence[str],
        address: str,
        info: dict[str, Any],
    ) -> None:
        """Records a worker's poll, for the status page."""
        ...

    async def worker_goodbye(self, worker_id: str, key_owner: str) -> bool:
        """A worker stopping cleanly leaves the status at once; False when unknown or polled
        with another key."""
        ...

    # ----- housekeeping

    async def sweep(self) -> None:
        """Requeues or fails expired leases, forgets results past their TTL and workers unseen
        for worker_seen_ttl_s."""
        ...

    async def checkpoint(self) -> None: ...

    async def stats(self, with_addresses: bool = False) -> dict[str, Any]: ...

    def on_forget(self, hook: Callable[[list[str]], Awaitable[None]]) -> None:
        """Calls `await hook(job_ids)` after jobs are forgotten at the end of their TTL."""
        ...

    def observe(self, events: JobEvents) -> None:
        """Tells `events` of this server's changes of jobs from now on (one observer)."""
        ...


class TakesWithResults(Store, Protocol):
    """A store that records a worker's results and looks for its next jobs in one step (the
    Redis store: one script, one round trip instead of two), for a results post that carries
    a poll (routes tell it by hasattr: an isinstance check of a Protocol costs 8 µs)."""

    async def report_results_and_take(
        self, reports: Sequence[WorkerReport], endpoints: Sequence[Endpoint], max_batch: int,
        worker_id: str,
    ) -> tuple[list[ReportAnswer], list[Grant]]:
        """The reports' answers, and up to max_batch jobs leased to the worker without
        waiting ([]: none, or not tried: claim as usual)."""
        ...


async def wait_on(waiter: asyncio.Future[Any], timeout_s: float) -> Any:
    """Waits for a waiter (its result: True when woken, or what woke it) or timeout_s
    (False). By hand, not asyncio.wait_for: that takes two more loop turns to wake the waiting
    task, and a woken worker must take the jobs arriving before the commit that writes them
    (see `JobStore._insert`)."""
    timer = asyncio.get_running_loop().call_later(timeout_s, _time_out, waiter)
    try:
        return await waiter
    finally:
        timer.cancel()


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(False)
