"""Worker routes: long-poll for jobs, progress (which renews the lease), results, goodbye.

Progress and results come one job per request or a whole batch per request; both go through
the same parsing and the same store calls. Every route first checks that the caller's key is
a worker key (before reading the body, so an unknown caller gets no parsing for free), and a
report is taken only for jobs of endpoints that key serves.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web

from api_server.auth import unauthorized
from api_server.config import Endpoint
from api_server.httputil import ApiError, json_response, read_json, read_object
from api_server.metrics import MODEL_OUTPUTS
from api_server.state import CALLER, CONFIG, ENDPOINTS, FILES, METRICS, OUTPUT_FILTER, STORE
from api_server.store import ReportAnswer, WorkerReport
from api_server.store.base import TakesWithResults
from jobhive import protocol

routes = web.RouteTableDef()


def _require_worker_key(request: web.Request) -> None:
    if not request[CALLER].role.worker_of:
        raise unauthorized("worker")


def worker_endpoints(
    request: web.Request, job_types: Sequence[str], field: str = "job_types"
) -> list[Endpoint]:
    """The endpoints of these job types; 400 naming any type that is unknown or that the
    caller's key does not serve (a worker lists only what it may take)."""
    endpoints = request.app[ENDPOINTS].values()
    allowed = request[CALLER].worker_endpoints(endpoints)
    allowed_types = {e.job_type for e in allowed}
    known = {e.job_type for e in endpoints}
    unknown = [t for t in job_types if t not in known]
    if unknown:
        raise ApiError(
            400,
            "unknown job types",
            {
                field: f"no endpoint serves {', '.join(map(repr, unknown))} "
                f"(job types: {', '.join(sorted(known)) or 'none'})"
            },
        )
    other = [t for t in job_types if t not in allowed_types]
    if other:
        raise ApiError(
            400,
            "job types of another worker key",
            {field: f"this worker key does not serve {', '.join(map(repr, other))} (it serves "
                    f"{', '.join(sorted(allowed_types))})"},
        )
    return [e for e in allowed if e.job_type in job_types]


def _check(errors: dict[str, str], name: str, ok: bool, reason: str) -> None:
    if not ok:
        errors[name] = reason


def _parse_report(
    entry: Any, where: str, errors: dict[str, str], results: bool
) -> WorkerReport | None:
    """One progress/result entry; adds `where.key: reason` errors instead of raising."""
    if not isinstance(entry, dict):
        errors[where or "body"] = "must be a JSON object"
        return None
    prefix = f"{where}." if where else ""
    for key in entry.keys() - set(protocol.REPORT_KEYS):
        errors[prefix + key[:80]] = f"unknown key; allowed: {', '.join(protocol.REPORT_KEYS)}"
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
    offsets = entry.get("offsets")
    if offsets is not None:
        _check_offsets(errors, prefix + "offsets", offsets, entry.get("outputs"), results)
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
        offsets=offsets or None,
    )


def _check_offsets(
    errors: dict[str, str], where: str, offsets: Any, outputs: Any, results: bool
) -> None:
    """A progress report's `offsets` (protocol.progress_delta): {output: offset}, each naming a
    string output of the report; a result is always whole."""
    if results:
        errors[where] = "only a progress report sends text as parts; a result is whole"
    elif not isinstance(offsets, dict):
        errors[where] = "must be a JSON object of output names and offsets"
    else:
        for key, offset in offsets.items():
            if not (isinstance(outputs, dict) and isinstance(outputs.get(key), str)):
                errors[f"{where}.{key[:80]}"] = "names no string output of this report"
            elif not (isinstance(offset, int) and not isinstance(offset, bool)
                      and 0 <= offset <= 2**53):
                errors[f"{where}.{key[:80]}"] = "must be a whole number of characters"


def _parse_reports(entries: Any, results: bool) -> list[WorkerReport]:
    """The entries of a batch route's `reports` list; 400 naming each bad entry's key."""
    if not isinstance(entries, list) or not entries:
        raise ApiError(400, "invalid reports", {"reports": "must be a non-empty list"})
    errors: dict[str, str] = {}
    reports = [_parse_report(e, f"reports[{i}]", errors, results)
               for i, e in enumerate(entries)]
    first_of: dict[str, int] = {}  # one answer per job: a job twice in a batch is ambiguous
    for i, report in enumerate(reports):
        if report is not None and first_of.setdefault(report.job_id, i) != i:
            errors[f"reports[{i}].job_id"] = f"repeats reports[{first_of[report.job_id]}]"
    if errors:
        raise ApiError(400, "invalid worker report", errors)
    return reports  # type: ignore[return-value]  # no errors: every entry parsed


async def _read_body(request: web.Request) -> Any:
    config = request.app[CONFIG]
    return await read_json(request, config.max_body_bytes, config.max_json_depth)


async def _read_reports(
    request: web.Request, batch: bool, results: bool
) -> list[WorkerReport]:
    """The reports of a request: `{"reports": [...]}` for a batch, the entry itself for one job
    (its job_id taken from the URL)."""
    data = await _read_body(request)
    if batch:
        return _parse_reports(read_object(data, ("reports",)).get("reports"), results)
    if isinstance(data, dict):
        data = {**data, "job_id": request.match_info["job_id"]}
    errors: dict[str, str] = {}
    report = _parse_report(data, "", errors, results)
    if errors or report is None:
        raise ApiError(400, "invalid worker report", errors)
    return [report]


async def _authorized(
    request: web.Request, reports: list[WorkerReport], results: bool, worker: str
) -> tuple[list[WorkerReport], list[ReportAnswer], dict[str, tuple[str, dict[str, Any]]]]:
    """Splits reports into those the caller's key may make (their outputs kept to what the
    endpoint declares, file references checked against the job's files and rewritten from
    them, and serialised once for results) and refusals for the rest (400 for a reference to
    a file the job does not have, naming the output). Also gives, by job id, the endpoint
    and outputs of each result with numbers for the metrics (api_server.metrics)."""
    app = request.app
    worker_of = request[CALLER].role.worker_of
    endpoints_of = await app[STORE].endpoints_of(r.job_id for r in reports)
    allowed, refused = [], []
    outputs_of: dict[str, tuple[str, dict[str, Any]]] = {}
    for report in reports:
        endpoint = app[ENDPOINTS].get(endpoints_of.get(report.job_id, ""))
        if endpoint is None:
            refused.append(ReportAnswer.unknown_job(report.job_id))
        elif endpoint.name not in worker_of:
            error = f"worker key not accepted by {endpoint.name!r}"
            refused.append(ReportAnswer(report.job_id, ok=False, error=error, status=403))
        elif report.outputs is None:
            allowed.append(report)
        else:
            keep = app[OUTPUT_FILTER].results if results else app[OUTPUT_FILTER].progress
            media = endpoint.media_outputs if results else endpoint.media_progress_outputs
            outputs, bad = await app[FILES].references(
                report.job_id, keep(endpoint, report.outputs, worker), media
            )
            if bad:  # a reference to a file this job does not have: the report is refused
                error = "; ".join(f"{key}: {reason}" for key, reason in bad.items())
                refused.append(ReportAnswer(report.job_id, ok=False, error=error, status=400))
            elif results:
                allowed.append(WorkerReport(report.job_id, report.lease_id, report.progress,
                                            outputs_json=orjson.dumps(outputs),
                                            error=report.error, release=report.release))
                if not MODEL_OUTPUTS.isdisjoint(outputs):  # (what model workers measure)
                    outputs_of[report.job_id] = (endpoint.name, outputs)
            else:
                offsets = report.offsets and {
                    key: offset for key, offset in report.offsets.items() if key in outputs
                }
                allowed.append(WorkerReport(report.job_id, report.lease_id, report.progress,
                                            outputs=outputs, offsets=offsets or None))
    return allowed, refused, outputs_of


async def record_reports(
    request: web.Request,
    reports: list[WorkerReport],
    results: bool,
    worker: str = "",
    record: Callable[[list[WorkerReport]], Awaitable[list[ReportAnswer]]] | None = None,
) -> list[ReportAnswer]:
    """Records the reports the worker's key may make (with `record` when given, else the
    store's report_results or report_progress); answers all of them, in their order (507/503
    for the whole request when the store cannot write them)."""
    store = request.app[STORE]
    worker = worker or f"with key {request[CALLER].owner[:8]}"
    allowed, refused, outputs_of = await _authorized(request, reports, results, worker)
    record = record or (store.report_results if results else store.report_progress)
    answers = await record(allowed) if allowed else []  # (a StoreError: the app's edge)
    if outputs_of:
        metrics = request.app[METRICS]
        for answer in answers:
            if answer.ok and answer.job_id in outputs_of:
                metrics.result_taken(*outputs_of[answer.job_id])
    by_job = {a.job_id: a for a in answers + refused}
    return [by_job[report.job_id] for report in reports]


def _single_answer(answers: list[ReportAnswer]) -> web.Response:
    """A one-job route's reply: 200 `{canceled}` when accepted (or canceled), else its error."""
    (answer,) = answers
    if answer.status == 200:
        return json_response(answer.to_json())
    if answer.status == 404:
        raise ApiError(404, f"no job with id {answer.job_id!r}")
    raise ApiError(answer.status, answer.error or "refused")


@dataclass(frozen=True)
class Poll:
    """A worker's request for jobs (the poll route's body, or `poll` beside a batch's results)."""

    worker_id: str
    job_types: list[str]
    max_batch: int
    info: dict[str, Any]
    wait_s: float


def _parse_poll(data: Any, max_wait_s: float, prefix: str = "") -> Poll:
    body = read_object(data, protocol.POLL_KEYS, prefix.rstrip("."))
    worker_id, job_types = body.get("worker_id"), body.get("job_types")
    max_batch, info = body.get("max_batch", 1), body.get("info", {})
    wait_s = body.get("wait_s", max_wait_s)
    errors: dict[str, str] = {}
    _check(errors, prefix + "worker_id", isinstance(worker_id, str) and 0 < len(worker_id) <= 128,
           "must be a string of 1 to 128 characters")
    _check(errors, prefix + "job_types", isinstance(job_types, list) and bool(job_types)
           and all(isinstance(t, str) for t in job_types), "must be a non-empty list of strings")
    _check(errors, prefix + "max_batch", isinstance(max_batch, int)
           and not isinstance(max_batch, bool) and 1 <= max_batch <= 1024,
           "must be an integer from 1 to 1024")
    _check(errors, prefix + "info", isinstance(info, dict), "must be a JSON object")
    _check(errors, prefix + "wait_s", isinstance(wait_s, int | float)
           and not isinstance(wait_s, bool) and 0 <= wait_s <= max_wait_s,
           f"must be a number of seconds from 0 to {max_wait_s:g}")
    if errors:
        raise ApiError(400, "invalid job poll", errors)
    return Poll(worker_id, job_types, max_batch, info, float(wait_s))


async def _grant(request: web.Request, poll: Poll, endpoints: list[Endpoint]) -> list[Any]:
    """Claims up to poll.max_batch jobs (waiting up to poll.wait_s); returns their grants."""
    store = request.app[STORE]
    await store.worker_seen(poll.worker_id, request[CALLER].owner,
                            [e.job_type for e in endpoints], request.remote or "", poll.info)
    grants = await store.claim(endpoints, poll.max_batch, poll.worker_id, poll.wait_s)
    return [grant.to_json() for grant in grants]


@routes.post(protocol.WORKER_POLL_PATH)
async def poll_jobs(request: web.Request) -> web.Response:
    """Long-poll for jobs: `{worker_id, job_types, max_batch, info, wait_s}` → 200 `{jobs}`
    (each with its lease) or 204 when none came within wait_s."""
    _require_worker_key(request)
    poll = _parse_poll(await _read_body(request), request.app[CONFIG].worker_poll_max_s)
    grants = await _grant(request, poll, worker_endpoints(request, poll.job_types))
    return json_response({"jobs": grants}) if grants else web.Response(status=204)


async def _report(request: web.Request, batch: bool, results: bool) -> web.Response:
    _require_worker_key(request)
    answers = await record_reports(request, await _read_reports(request, batch, results),
                                   results)
    if batch:
        return json_response({"answers": [a.to_json() for a in answers]})
    return _single_answer(answers)


@routes.post(protocol.WORKER_JOB_PROGRESS_ROUTE)
async def job_progress(request: web.Request) -> web.Response:
    """One job's progress `{lease_id, progress, outputs}`: renews its lease; `{canceled}`."""
    return await _report(request, batch=False, results=False)


@routes.post(protocol.WORKER_PROGRESS_PATH)
async def batch_progress(request: web.Request) -> web.Response:
    """A batch's progress: `{"reports": [...]}` → `{"answers": [...]}`."""
    return await _report(request, batch=True, results=False)


@routes.post(protocol.WORKER_JOB_RESULT_ROUTE)
async def job_result(request: web.Request) -> web.Response:
    """One job's result `{lease_id, outputs}` or `{lease_id, error}`, or `release`."""
    return await _report(request, batch=False, results=True)


@routes.post(protocol.WORKER_RESULTS_PATH)
async def batch_results(request: web.Request) -> web.Response:
    """A batch's results: `{"reports": [...]}` → `{"answers": [...]}`. With `"poll": {...}`
    (the poll route's body) the same request then waits for the worker's next batch and adds
    `"jobs": [...]`: one round trip per batch instead of two."""
    config = request.app[CONFIG]
    _require_worker_key(request)
    body = read_object(await _read_body(request), ("reports", "poll"))
    reports = _parse_reports(body.get("reports"), results=True)
    if "poll" not in body:
        answers = await record_reports(request, reports, True)
        return json_response({"answers": [a.to_json() for a in answers]})
    poll = _parse_poll(body["poll"], config.worker_poll_max_s, prefix="poll.")
    endpoints = worker_endpoints(request, poll.job_types, "poll.job_types")
    if not hasattr(request.app[STORE], "report_results_and_take"):  # (TakesWithResults)
        answers = await record_reports(request, reports, True, poll.worker_id)
        jobs = await _grant(request, poll, endpoints)
        return json_response({"answers": [a.to_json() for a in answers], "jobs": jobs})
    store = cast(TakesWithResults, request.app[STORE])
    # The results and a first look for the next jobs in one step (the Redis store: one
    # script); the worker is recorded first, so that nothing fails once jobs are taken.
    await store.worker_seen(poll.worker_id, request[CALLER].owner,
                            [e.job_type for e in endpoints], request.remote or "", poll.info)
    taken: list[protocol.Grant] = []

    async def record_and_take(allowed: list[WorkerReport]) -> list[ReportAnswer]:
        answers, grants = await store.report_results_and_take(
            allowed, endpoints, poll.max_batch, poll.worker_id)
        taken.extend(grants)
        return answers

    answers = await record_reports(request, reports, True, poll.worker_id, record_and_take)
    grants = taken or await store.claim(endpoints, poll.max_batch, poll.worker_id, poll.wait_s)
    return json_response({"answers": [a.to_json() for a in answers],
                          "jobs": [grant.to_json() for grant in grants]})


@routes.post(protocol.WORKER_GOODBYE_PATH)
async def goodbye(request: web.Request) -> web.Response:
    """A worker stopping cleanly: `{worker_id}` → 200 `{ok}`; it leaves the status at once
    (`ok` false when no worker of that id polled with this key)."""
    _require_worker_key(request)
    body = read_object(await _read_body(request), protocol.GOODBYE_KEYS)
    worker_id = body.get("worker_id")
    if not (isinstance(worker_id, str) and 0 < len(worker_id) <= 128):
        raise ApiError(400, "invalid goodbye",
                       {"worker_id": "must be a string of 1 to 128 characters"})
    left = await request.app[STORE].worker_goodbye(worker_id, request[CALLER].owner)
    return json_response({"ok": left})
