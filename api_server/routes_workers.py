"""Worker routes: long-poll for jobs, progress (which renews the lease), results.

Progress and results come one job per request or a whole batch per request; both go through
the same parsing and the same store calls.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from api_server.config import Endpoint
from api_server.httputil import (
    ApiError,
    bearer_key,
    json_response,
    key_in,
    read_json,
    read_object,
    unauthorized,
)
from api_server.jobs import ReportAnswer, WorkerReport
from api_server.state import CONFIG, ENDPOINTS, STORE

routes = web.RouteTableDef()

_REPORT_KEYS = ("job_id", "lease_id", "progress", "outputs", "error", "release")


def _worker_endpoints(request: web.Request, job_types: Sequence[str]) -> list[Endpoint]:
    """The endpoints of these job types whose [WORKER] keys include the request's key."""
    endpoints = request.app[ENDPOINTS].values()
    known = {e.job_type for e in endpoints}
    unknown = [t for t in job_types if t not in known]
    if unknown:
        raise ApiError(
            400,
            "unknown job types",
            {
                "job_types": f"no endpoint serves {', '.join(map(repr, unknown))} "
                f"(job types: {', '.join(sorted(known)) or 'none'})"
            },
        )
    key = bearer_key(request)
    allowed = [e for e in endpoints if e.job_type in job_types and key_in(key, e.worker.auth_keys)]
    if not allowed:
        raise unauthorized("worker")
    return allowed


def _check(errors: dict[str, str], name: str, ok: bool, reason: str) -> None:
    if not ok:
        errors[name] = reason


def _parse_report(entry: Any, where: str, errors: dict[str, str]) -> WorkerReport | None:
    """One progress/result entry; adds `where.key: reason` errors instead of raising."""
    if not isinstance(entry, dict):
        errors[where or "body"] = "must be a JSON object"
        return None
    prefix = f"{where}." if where else ""
    for key in entry.keys() - set(_REPORT_KEYS):
        errors[prefix + key] = f"unknown key; allowed: {', '.join(_REPORT_KEYS)}"
    progress = entry.get("progress")
    found = len(errors)
    for key in ("job_id", "lease_id"):
        value = entry.get(key)
        _check(
            errors,
            prefix + key,
            isinstance(value, str) and 0 < len(value) <= 128,
            "must be a non-empty string",
        )
    _check(
        errors,
        prefix + "progress",
        progress is None
        or (
            isinstance(progress, int | float)
            and not isinstance(progress, bool)
            and math.isfinite(progress)
            and 0 <= progress <= 100
        ),
        "must be a number from 0 to 100",
    )
    _check(
        errors,
        prefix + "outputs",
        entry.get("outputs") is None or isinstance(entry["outputs"], dict),
        "must be a JSON object",
    )
    _check(
        errors,
        prefix + "error",
        entry.get("error") is None or isinstance(entry["error"], str),
        "must be a string",
    )
    _check(
        errors,
        prefix + "release",
        isinstance(entry.get("release", False), bool),
        "must be true or false",
    )
    if len(errors) > found:
        return None
    return WorkerReport(
        job_id=entry["job_id"],
        lease_id=entry["lease_id"],
        progress=progress,
        outputs=entry.get("outputs"),
        error=entry.get("error"),
        release=entry.get("release", False),
    )


async def _read_reports(request: web.Request, batch: bool) -> list[WorkerReport]:
    """The reports of a request: `{"reports": [...]}` for a batch, the entry itself for one job
    (its job_id taken from the URL)."""
    data = await read_json(request, request.app[CONFIG].max_body_bytes)
    errors: dict[str, str] = {}
    if batch:
        entries = read_object(data, ("reports",)).get("reports")
        if not isinstance(entries, list) or not entries:
            raise ApiError(400, "invalid reports", {"reports": "must be a non-empty list"})
        reports = [_parse_report(e, f"reports[{i}]", errors) for i, e in enumerate(entries)]
    else:
        if isinstance(data, dict):
            data = {**data, "job_id": request.match_info["job_id"]}
        reports = [_parse_report(data, "", errors)]
    if errors:
        raise ApiError(400, "invalid worker report", errors)
    return reports  # type: ignore[return-value]  # no errors: every entry parsed


def _authorized(
    request: web.Request, reports: list[WorkerReport]
) -> tuple[list[WorkerReport], list[ReportAnswer]]:
    """Splits reports into those the worker key may make and refusals for the rest."""
    key = bearer_key(request)
    endpoints = request.app[ENDPOINTS]
    if not any(key_in(key, e.worker.auth_keys) for e in endpoints.values()):
        raise unauthorized("worker")
    store = request.app[STORE]
    allowed, refused = [], []
    for report in reports:
        job = store.get(report.job_id)
        endpoint = endpoints.get(job.endpoint) if job is not None else None
        if job is None or endpoint is None:
            refused.append(ReportAnswer(report.job_id, ok=False, error="unknown job"))
        elif not key_in(key, endpoint.worker.auth_keys):
            refused.append(
                ReportAnswer(
                    report.job_id, ok=False, error=f"worker key not accepted by {endpoint.name!r}"
                )
            )
        else:
            allowed.append(report)
    return allowed, refused


def _single_answer(answers: list[ReportAnswer]) -> web.Response:
    """A one-job route's reply: 200 `{canceled}` when accepted (or canceled), else 404/409."""
    (answer,) = answers
    if answer.ok or answer.canceled:
        return json_response(answer.to_json())
    if answer.error == "unknown job":
        raise ApiError(404, f"no job with id {answer.job_id!r}")
    if answer.error and answer.error.startswith("worker key"):
        raise ApiError(403, answer.error)
    raise ApiError(409, answer.error or "refused")


@routes.post("/api/v1/worker/jobs")
async def poll_jobs(request: web.Request) -> web.Response:
    """Long-poll for jobs: `{worker_id, job_types, max_batch, info, wait_s}` → 200 `{jobs}`
    (each with its lease) or 204 when none came within wait_s."""
    config = request.app[CONFIG]
    body = read_object(
        await read_json(request, config.max_body_bytes),
        ("worker_id", "job_types", "max_batch", "info", "wait_s"),
    )
    errors: dict[str, str] = {}
    worker_id, job_types = body.get("worker_id"), body.get("job_types")
    max_batch, info = body.get("max_batch", 1), body.get("info", {})
    wait_s = body.get("wait_s", config.worker_poll_max_s)
    _check(
        errors,
        "worker_id",
        isinstance(worker_id, str) and 0 < len(worker_id) <= 128,
        "must be a string of 1 to 128 characters",
    )
    _check(
        errors,
        "job_types",
        isinstance(job_types, list)
        and bool(job_types)
        and all(isinstance(t, str) for t in job_types),
        "must be a non-empty list of strings",
    )
    _check(
        errors,
        "max_batch",
        isinstance(max_batch, int) and not isinstance(max_batch, bool) and 1 <= max_batch <= 1024,
        "must be an integer from 1 to 1024",
    )
    _check(errors, "info", isinstance(info, dict), "must be a JSON object")
    _check(
        errors,
        "wait_s",
        isinstance(wait_s, int | float)
        and not isinstance(wait_s, bool)
        and 0 <= wait_s <= config.worker_poll_max_s,
        f"must be a number of seconds from 0 to {config.worker_poll_max_s:g}",
    )
    if errors:
        raise ApiError(400, "invalid job poll", errors)
    endpoints = _worker_endpoints(request, job_types)
    store = request.app[STORE]
    store.worker_seen(worker_id, job_types, request.remote or "", info)
    jobs = await store.claim(endpoints, max_batch, worker_id, wait_s)
    if not jobs:
        return web.Response(status=204)
    lease_s = request.app[ENDPOINTS][jobs[0].endpoint].endpoint.lease_s
    return json_response({"jobs": [job.grant_json(lease_s) for job in jobs]})


async def _report(
    request: web.Request,
    batch: bool,
    record: Callable[[list[WorkerReport]], Awaitable[list[ReportAnswer]]],
) -> web.Response:
    reports = await _read_reports(request, batch)
    allowed, refused = _authorized(request, reports)
    answers = (await record(allowed) if allowed else []) + refused
    if batch:
        return json_response({"answers": [a.to_json() for a in answers]})
    return _single_answer(answers)


@routes.post("/api/v1/worker/jobs/{job_id}/progress")
async def job_progress(request: web.Request) -> web.Response:
    return await _report(request, False, request.app[STORE].report_progress)


@routes.post("/api/v1/worker/progress")
async def batch_progress(request: web.Request) -> web.Response:
    return await _report(request, True, request.app[STORE].report_progress)


@routes.post("/api/v1/worker/jobs/{job_id}/result")
async def job_result(request: web.Request) -> web.Response:
    return await _report(request, False, request.app[STORE].report_results)


@routes.post("/api/v1/worker/results")
async def batch_results(request: web.Request) -> web.Response:
    return await _report(request, True, request.app[STORE].report_results)
