"""The workers the server has heard from lately, as `/api/v1/status` and the pages show them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from api_server.store.model import Clock
from jobhive.protocol import JobStatus

log = logging.getLogger("jobhive.jobs")


@dataclass(slots=True)
class WorkerSeen:
    worker_id: str
    key_owner: str  # a hash of the worker key it polls with: only that key may say goodbye
    job_types: tuple[str, ...]
    address: str
    info: dict[str, Any]
    last_seen_ms: int
    jobs_done: int = 0
    jobs_failed: int = 0
    running: set[str] = field(default_factory=set)


class WorkerRegistry:
    """Workers by id: who polls for what, from where, and how many jobs each has run.

    Args:
        clock (Clock): wall-clock milliseconds.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._workers: dict[str, WorkerSeen] = {}

    def seen(
        self,
        worker_id: str,
        key_owner: str,
        job_types: Sequence[str],
        address: str,
        info: dict[str, Any],
    ) -> None:
        """Records a poll. `job_types` are only those the worker's key may take."""
        seen = self._workers.get(worker_id)
        if seen is None:
            seen = self._workers[worker_id] = WorkerSeen(
                worker_id, key_owner, tuple(job_types), address, info, self._clock()
            )
            log.info("worker %s connected from %s for %s", worker_id, address, ",".join(job_types))
        seen.key_owner, seen.job_types, seen.address, seen.info = (
            key_owner, tuple(job_types), address, info
        )
        seen.last_seen_ms = self._clock()

    def goodbye(self, worker_id: str, key_owner: str) -> bool:
        """A worker stopping cleanly leaves at once; False when unknown or another key's."""
        seen = self._workers.get(worker_id)
        if seen is None or seen.key_owner != key_owner:
            return False
        del self._workers[worker_id]
        log.info("worker %s said goodbye", worker_id)
        return True

    def forget_unseen(self, unseen_s: float) -> None:
        cutoff = self._clock() - unseen_s * 1000
        for worker_id in [w for w, s in self._workers.items() if s.last_seen_ms < cutoff]:
            del self._workers[worker_id]
            log.info("worker %s gone (unseen for %g s)", worker_id, unseen_s)

    def started(self, worker_id: str, job_ids: Iterable[str]) -> None:
        if (seen := self._workers.get(worker_id)) is not None:
            seen.running.update(job_ids)

    def ended(self, worker_id: str, job_id: str, status: JobStatus | None) -> None:
        """A job left the worker: finished with `status`, or None when it was requeued."""
        seen = self._workers.get(worker_id)
        if seen is None or job_id not in seen.running:
            return
        seen.running.discard(job_id)
        if status is JobStatus.DONE:
            seen.jobs_done += 1
        elif status is JobStatus.FAILED:
            seen.jobs_failed += 1

    def online(self, job_type: str) -> int:
        return sum(job_type in w.job_types for w in self._workers.values())

    def to_json(self, with_addresses: bool) -> list[dict[str, Any]]:
        now = self._clock()
        return [
            {
                "worker_id": w.worker_id,
                "job_types": list(w.job_types),
                **({"address": w.address} if with_addresses else {}),
                "info": w.info,
                "last_seen_ms": w.last_seen_ms,
                "last_seen_s_ago": round((now - w.last_seen_ms) / 1000, 3),
                "jobs_done": w.jobs_done,
                "jobs_failed": w.jobs_failed,
                "running": len(w.running),
            }
            for w in self._workers.values()
        ]
