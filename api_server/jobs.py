"""The job record, its states, and the errors the job store raises."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson


def now_ms() -> int:
    """Wall-clock time in milliseconds: persisted timestamps and lease deadlines use it."""
    return time.time_ns() // 1_000_000


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting in its endpoint's queue for a worker
    RUNNING = "running"  # leased to a worker, which renews the lease with progress reports
    DONE = "done"  # finished; outputs are readable until the endpoint's result_ttl_s
    FAILED = "failed"  # finished with an error (from the worker, or leases/timeouts ran out)
    CANCELED = "canceled"  # stopped by its client; a running worker hears at its next report

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELED)


@dataclass(slots=True, eq=False)
class Job:
    """One job. The store owns it and is the only writer; routes read and shape it.

    `inputs_json` and `outputs_json` hold serialised JSON made once (on submit and on result):
    the database, the worker's grant and the client's reads all reuse those bytes.
    """

    id: str
    endpoint: str
    owner: str  # a hash of the submitting client's key; "" on an open endpoint
    inputs_json: bytes
    status: JobStatus = JobStatus.QUEUED
    created_at_ms: int = field(default_factory=now_ms)
    attempts: int = 0  # leases granted so far
    lease_id: str = ""  # the current (or last) lease; progress and results must name it
    worker_id: str = ""
    lease_expires_at_ms: int = 0
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    expires_at_ms: int | None = None  # when a finished job is forgotten
    progress: float = 0.0
    progress_outputs: dict[str, Any] | None = None
    outputs_json: bytes | None = None
    error: str | None = None
    version: int = 1  # bumped on every visible change; also the SSE event id

    def to_json(self, queue_position: int | None) -> dict[str, Any]:
        """The job as clients see it (`GET /api/v1/jobs/{id}`)."""
        return {
            "job_id": self.id,
            "endpoint": self.endpoint,
            "status": self.status.value,
            "version": self.version,
            "progress": self.progress,
            "queue_position": queue_position,
            "progress_outputs": self.progress_outputs,
            "outputs": orjson.Fragment(self.outputs_json) if self.outputs_json else None,
            "error": self.error,
            "attempts": self.attempts,
            "created_at_ms": self.created_at_ms,
            "started_at_ms": self.started_at_ms,
            "finished_at_ms": self.finished_at_ms,
        }

    def grant_json(self, lease_s: float) -> dict[str, Any]:
        """The job as a worker receives it from `POST /api/v1/worker/jobs`."""
        return {
            "job_id": self.id,
            "endpoint": self.endpoint,
            "lease_id": self.lease_id,
            "lease_s": lease_s,
            "lease_expires_at_ms": self.lease_expires_at_ms,
            "attempt": self.attempts,
            "inputs": orjson.Fragment(self.inputs_json),
        }


class StoreError(Exception):
    """Base of the store's refusals; routes turn each into its HTTP status."""

    status = 409
    retry_after_s: int | None = None  # set when trying again later may succeed


class QueueFull(StoreError):
    status = 429

    def __init__(self, endpoint: str, limit: int, retry_after_s: int) -> None:
        super().__init__(f"the queue of endpoint {endpoint!r} is full ({limit} jobs); retry later")
        self.retry_after_s = retry_after_s


class JobIdConflict(StoreError):
    """A client-chosen job_id already names a different job."""


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One entry of a worker's progress or result report."""

    job_id: str
    lease_id: str
    progress: float | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None
    release: bool = False  # hand the job back to the queue (worker shutting down)


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    """The store's answer to one WorkerReport; `status` is what a one-job route answers with
    (a batch route gives every answer in its body instead)."""

    job_id: str
    ok: bool
    canceled: bool = False
    error: str | None = None
    status: int = 200

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job_id": self.job_id, "ok": self.ok, "canceled": self.canceled}
        if self.error:
            out["error"] = self.error
        return out
