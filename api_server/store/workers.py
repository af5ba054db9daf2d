"""The workers the server has heard from lately, as `/api/v1/status` and the pages show them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from api_server.store.model import Clock
from jobhive.protocol import JobStatus

log = logging.getLogger("jobhive.jobs")

MODEL_TEXT_CHARS = 200  # a model's name, dtype or device as a worker reports it is cut here
MAX_MODELS_LISTED = 16  # models listed per endpoint (workers with others are still counted)


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


def models_served(workers: Iterable[Mapping[str, Any]], job_type: str) -> list[dict[str, Any]]:
    """The models the workers online for `job_type` have loaded, each once, in the order first
    seen: what `/api/v1/endpoints` lists per endpoint and the pages show.

    A worker's models are its info's `loaded_models` (workers/runtime/model.py describe_model);
    a worker without them (an older one) counts with its info's `model` name, never as random.
    What a worker sent that is not of the right type is left out: a listing never fails on it.

    Args:
        workers (Iterable[Mapping[str, Any]]): the workers as the store's stats list them
            (`job_types` and `info` each).
        job_type (str): the endpoint's job type.

    Returns:
        list[dict[str, Any]]: {"name": str, "dtype": str | None, "device": str | None,
        "random": bool, "workers": int}; random is true for the demo's tiny random weights.
    """
    served: dict[tuple[Any, ...], dict[str, Any]] = {}
    for worker in workers:
        if job_type not in worker.get("job_types", ()):
            continue
        for model in _reported_models(worker.get("info")):
            key = (model["name"], model["dtype"], model["device"], model["random"])
            if key in served:
                served[key]["workers"] += 1
            elif len(served) < MAX_MODELS_LISTED:
                served[key] = {**model, "workers": 1}
    return list(served.values())


def _reported_models(info: Any) -> list[dict[str, Any]]:
    """A worker's models from its info: checked, each once."""
    if not isinstance(info, Mapping):
        return []
    reported = info.get("loaded_models")
    if not isinstance(reported, list):  # an older worker: its `model` name, if any
        reported = [{"name": info.get("model"), "dtype": info.get("dtype"),
                     "device": info.get("device")}]
    models: dict[tuple[Any, ...], dict[str, Any]] = {}
    for entry in reported[:MAX_MODELS_LISTED]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        model = {
            "name": entry["name"][:MODEL_TEXT_CHARS],
            "dtype": _text_or_none(entry.get("dtype")),
            "device": _text_or_none(entry.get("device")),
            "random": entry.get("random") is True,
        }
        models.setdefault(tuple(model.values()), model)
    return list(models.values())


def _text_or_none(value: Any) -> str | None:
    return value[:MODEL_TEXT_CHARS] if isinstance(value, str) and value else None
