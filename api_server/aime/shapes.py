"""AIME's reply shapes, made from jobhive's endpoints, grants and jobs.

AIME workers see a job as a flat `job_data` object (its inputs beside `job_id`); its `job_id`
here is `JOB_ID#LEASE_ID`, so the lease travels with every progress and result the worker
posts (AIME's own ids have the same `uuid#counter` look) and no server keeps a table of them.
Clients see AIME's `job_state` (queued, processing, done) and its `job_result`; a job that
failed or was canceled is `done` with the reason in `job_result.error` (as an AIME worker's
error is), and jobhive's own status rides along as `status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from api_server.aime.cfg import AimeInfo
from api_server.config import Endpoint
from api_server.routes.jobs import shown
from api_server.store import JobView
from jobhive.protocol import Grant, JobStatus

LEASE_SEPARATOR = "#"  # never in a jobhive job id (protocol.JOB_ID_PATTERN)
# AIME's job_state for each jobhive status (finished ones: "done", see above).
JOB_STATES = {JobStatus.QUEUED: "queued", JobStatus.RUNNING: "processing"}


def info_of(endpoint: Endpoint, infos: Mapping[str, AimeInfo]) -> AimeInfo:
    """The endpoint's AIME facts: from its AIME config, or made from its endpoint.toml."""
    info = infos.get(endpoint.name)
    if info is not None:
        return info
    return AimeInfo(
        inputs={n: s.schema() for n, s in endpoint.inputs.items()},
        outputs={n: s.schema() for n, s in endpoint.outputs.items()},
        progress_outputs={n: s.schema() for n, s in endpoint.progress_outputs.items()},
    )


def worker_job_id(grant: Grant) -> str:
    return f"{grant.job_id}{LEASE_SEPARATOR}{grant.lease_id}"


def split_worker_job_id(value: Any) -> tuple[str, str] | None:
    """(job_id, lease_id) of a job id an AIME worker got from us; None for anything else."""
    if not isinstance(value, str) or len(value) > 300:
        return None
    job_id, separator, lease_id = value.partition(LEASE_SEPARATOR)
    return (job_id, lease_id) if separator and job_id and lease_id else None


def job_cmd(endpoint: Endpoint, info: AimeInfo, grants: list[Grant]) -> dict[str, Any]:
    """The reply to `/worker_job_request` that hands a batch over (AIME's `cmd: job`)."""
    return {
        "cmd": "job",
        "endpoint_name": endpoint.name,
        "input_descriptions": info.inputs,
        "progress_output_descriptions": info.progress_outputs,
        "final_output_descriptions": info.outputs,
        "job_data": [_job_data(grant) for grant in grants],
    }


def _job_data(grant: Grant) -> dict[str, Any]:
    inputs = orjson.loads(orjson.dumps(grant.inputs))  # (a serialised fragment in a grant)
    started_s = grant.lease_expires_at_ms / 1000 - grant.lease_s
    return {"job_id": worker_job_id(grant), "start_time": started_s,
            "start_time_compute": started_s, **inputs}


async def job_result(request: web.Request, endpoint: Endpoint, job: JobView) -> dict[str, Any]:
    """A finished job as AIME's clients read it: success, job_id, ep_version, the outputs
    (files inlined as data URLs), `error` when it failed, and its times in epoch seconds."""
    outputs = (await shown(request, job, inline=True))["outputs"] or {}
    result = {"success": True, "job_id": job.id, "ep_version": endpoint.endpoint.version,
              **outputs, "status": job.status.value}
    if job.status is not JobStatus.DONE:
        result["error"] = job.error or job.status.value
    created_s = job.created_at_ms / 1000
    started_s = (job.started_at_ms or job.created_at_ms) / 1000
    finished_s = (job.finished_at_ms or job.created_at_ms) / 1000
    result.update(start_time=created_s, start_time_compute=started_s,
                  result_received_time=finished_s,
                  total_duration=round(finished_s - created_s, 3),
                  compute_duration=round(finished_s - started_s, 3))
    return result


async def progress_reply(
    request: web.Request, endpoint: Endpoint, job: JobView, workers_online: int
) -> dict[str, Any]:
    """The reply to `/{endpoint}/progress`: the state, and the progress or the result."""
    reply: dict[str, Any] = {"success": True, "job_id": job.id,
                             "ep_version": endpoint.endpoint.version}
    if job.status.finished:
        return {**reply, "job_state": "done", "status": job.status.value,
                "job_result": await job_result(request, endpoint, job)}
    progress_data = (await shown(request, job, inline=True))["progress_outputs"] or {}
    queued = job.status is JobStatus.QUEUED
    return {**reply, "job_state": JOB_STATES[job.status], "status": job.status.value,
            "progress": {
                "progress": job.progress,
                # AIME counts places from 1 while queued, 0 once running
                "queue_position": (job.queue_position or 0) + 1 if queued else 0,
                "estimate": -1,  # jobhive makes no estimate
                "num_workers_online": workers_online,
                "progress_data": progress_data,
            }}


def details(endpoint: Endpoint, info: AimeInfo, stats: Mapping[str, Any]) -> dict[str, Any]:
    """`/api/endpoints/{name}`: the endpoint, its queue, its workers and its fields."""
    ours = stats["endpoints"].get(endpoint.name, {})
    workers = [w for w in stats["workers"] if endpoint.job_type in w["job_types"]]
    section = endpoint.endpoint
    return {
        "name": endpoint.name, "title": section.title, "description": section.description,
        "http_methods": list(info.methods), "version": section.version,
        "max_queue_length": section.max_queue_length, "max_time_in_queue": None,
        "free_queue_slots": max(0, section.max_queue_length - ours.get("queued", 0)),
        "category": info.category,
        "num_active_workers": len(workers), "num_workers": len(workers),
        "workers": [_worker(w) for w in workers],
        "parameter_description": {"input": info.inputs, "output": info.outputs,
                                  "progress": {"OUTPUTS": info.progress_outputs}},
    }


def _worker(worker: Mapping[str, Any]) -> dict[str, Any]:
    info = worker.get("info") or {}
    return {
        "name": worker["worker_id"], "state": "processing" if worker["running"] else "waiting",
        "max_batch_size": info.get("max_batch_size"),
        "free_slots": max(0, (info.get("max_batch_size") or 0) - worker["running"]),
        **{key: info.get(key) for key in ("gpu_name", "num_gpus", "framework",
                                          "framework_version", "pytorch_version")},
        "model": info.get("model", {}),
    }
