"""The job record, the snapshot routes read, the reports workers send, and the store's errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from jobhive.protocol import JobStatus

Clock = Callable[[], int]  # wall-clock milliseconds; tests pass a fake one

# Inputs and outputs up to this size stay in memory (a tiny job costs no read); larger ones are
# only in the journal and read back when a worker claims the job or a client asks for it.
INLINE_VALUE_MAX_BYTES = 4096


def now_ms() -> int:
    """Wall-clock time in milliseconds: persisted timestamps and lease deadlines use it."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True, eq=False)
class Job:
    """One job as the store keeps it in memory. The store is its only writer.

    `inputs_json` and `outputs_json` are the serialised values when small; None when they are
    kept only in the journal (see INLINE_VALUE_MAX_BYTES). `busy` is set while a journal write
    about this job is in flight: any other change waits for it, so changes apply in order and
    only after they are durable.
    """

    id: str
    endpoint: str
    owner: str  # a hash of the submitting client's key; "" on an open endpoint
    inputs_json: bytes | None
    inputs_bytes: int
    status: JobStatus = JobStatus.QUEUED
    created_at_ms: int = 0
    attempts: int = 0  # leases granted so far
    lease_id: str = ""  # the current (or last) lease; progress and results must name it
    worker_id: str = ""
    lease_expires_at_ms: int = 0
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    expires_at_ms: int | None = None  # when a finished job is forgotten
    progress: float = 0.0
    progress_outputs: dict[str, Any] | None = None  # in memory only, while it runs
    texts_since: int = 0  # the version from which its progress texts only grew (see JobView)
    outputs_json: bytes | None = None
    outputs_bytes: int = 0  # 0: no outputs
    error: str | None = None
    version: int = 1  # bumped on every visible change; also the SSE event id
    busy: asyncio.Future[None] | None = None
    insert_write: Awaitable[None] | None = None  # its insert, while it is being written


class JobView(NamedTuple):
    """A job as it was at one moment: what the store hands to routes (never the live record).

    The store's records are NamedTuples, not frozen dataclasses: as immutable, and several
    times cheaper to make (a frozen dataclass sets each field through object.__setattr__),
    which counts on the hot path where every request makes one or more of them."""

    id: str
    endpoint: str
    owner: str
    status: JobStatus
    version: int
    progress: float
    queue_position: int | None  # jobs ahead of it (0: next); None unless queued
    progress_outputs: dict[str, Any] | None
    outputs_json: bytes | None
    error: str | None
    attempts: int
    created_at_ms: int
    started_at_ms: int | None
    finished_at_ms: int | None
    # Each progress text now extends the one the job had at any version from this one on: a
    # client holding the texts of such a version may be sent only their new parts.
    texts_since: int = 0

    def to_json(self) -> dict[str, Any]:
        """The job as clients see it (`GET /api/v1/jobs/{id}`)."""
        return {
            "job_id": self.id,
            "endpoint": self.endpoint,
            "status": self.status.value,
            "version": self.version,
            "progress": self.progress,
            "queue_position": self.queue_position,
            "progress_outputs": self.progress_outputs,
            "outputs": orjson.Fragment(self.outputs_json) if self.outputs_json else None,
            "error": self.error,
            "attempts": self.attempts,
            "created_at_ms": self.created_at_ms,
            "started_at_ms": self.started_at_ms,
            "finished_at_ms": self.finished_at_ms,
        }


class WorkerReport(NamedTuple):
    """One entry of a worker's progress or result report. `outputs_json` is the serialised
    outputs, already checked against the endpoint's declared fields."""

    job_id: str
    lease_id: str
    progress: float | None = None
    outputs: dict[str, Any] | None = None
    outputs_json: bytes | None = None
    error: str | None = None
    release: bool = False  # hand the job back to the queue (worker shutting down)
    offsets: dict[str, int] | None = None  # outputs sent as parts of texts (progress_delta)


class ReportAnswer(NamedTuple):
    """The store's answer to one WorkerReport; `status` is what a one-job route answers with
    (a batch route gives every answer in its body instead)."""

    job_id: str
    ok: bool
    canceled: bool = False
    error: str | None = None
    status: int = 200
    offsets: dict[str, int] | None = None  # the whole texts' lengths after a report's parts

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job_id": self.job_id, "ok": self.ok, "canceled": self.canceled}
        if self.error:
            out["error"] = self.error
        if self.offsets is not None:
            out["offsets"] = self.offsets
        return out

    # The refusals both stores answer (their words and statuses, in one place).

    @classmethod
    def unknown_job(cls, job_id: str) -> ReportAnswer:
        return cls(job_id, False, error="unknown job", status=404)

    @classmethod
    def lease_lost(cls, job_id: str) -> ReportAnswer:
        return cls(job_id, False, error="lease lost: the job was given to another worker",
                   status=409)

    @classmethod
    def job_canceled(cls, job_id: str) -> ReportAnswer:
        """Not an error for the worker: it stops the job."""
        return cls(job_id, False, canceled=True, error="canceled")

    @classmethod
    def job_finished(cls, job_id: str, status: str, error: str | None = None) -> ReportAnswer:
        why = f"job already {status}" + (f": {error}" if error else "")
        return cls(job_id, False, error=why, status=409)


class StoreConfigError(Exception):
    """The store cannot start: its Redis is unreachable or would lose jobs (the message says
    how to fix it)."""


class StoreError(Exception):
    """Base of the store's refusals; routes turn each into its HTTP status."""

    status = 409
    retry_after_s: int | None = None  # set when trying again later may succeed


class QueueFull(StoreError):
    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobIdConflict(StoreError):
    """A client-chosen job_id already names a different job."""


class StoreUnavailable(StoreError):
    """The store refused a write: nothing was changed (`maybe_done`: the store did not answer
    in time, and the change may have been made). 507 when its disk (or Redis's memory) is full,
    503 for any other failure (an I/O error, the database locked or gone, Redis away)."""

    retry_after_s = 5

    def __init__(
        self,
        cause: BaseException,
        disk_full: bool,
        what: str | None = None,
        maybe_done: bool = False,
    ) -> None:
        self.status = 507 if disk_full else 503
        if what is None:
            what = "the job store's disk is full" if disk_full else "the job store cannot write"
        outcome = ("it may or may not have been made: try again (a submit with the same job_id)"
                   if maybe_done else "nothing was changed, try again later")
        super().__init__(f"{what} ({cause}); {outcome}")
