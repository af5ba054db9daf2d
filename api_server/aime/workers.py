"""AIME's worker routes, under `[SERVER] aime_prefix`: `/worker_job_request` (a long-poll for
a batch), `/worker_job_progress` (one report or a batch's list), `/worker_job_result`,
`/worker_check_server_status` and `/worker_login`.

AIME workers send their key (`auth_key`), name (`auth`) and job type in every body, not in a
header; the key is looked up as jobhive's worker keys are, and each job's lease travels in its
job id (`shapes.worker_job_id`). Progress renews the lease and answers `canceled` for a job its
client canceled; a result is taken only from the lease's holder.

AIME's worker library acts on an error only when it comes as HTTP 200 with `cmd: error` (it
prints it and exits); any other status makes it send the request again at once, forever. So a
job request refused for good (a wrong worker key, an unknown job type) is answered 200
`{"cmd": "error", "msg": ...}` (AIME itself answers `null` or a 500, on which its worker
hangs), and a result that cannot be taken (lease lost, job canceled or gone) 200
`{"cmd": "warning", "msg": ...}`. A malformed request, which AIME's library never sends, and a
store that cannot write now (503, 507: try again) get real statuses.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from api_server.aime import shapes
from api_server.config import Endpoint
from api_server.httputil import ApiError, json_response, read_json
from api_server.routes.workers import record_reports, worker_endpoints
from api_server.state import AIME, CALLER, CONFIG, ENDPOINTS, KEYS, STORE
from api_server.store import ReportAnswer, WorkerReport

API_SERVER_VERSION = "jobhive (AIME API server protocol 0.9)"
# What AIME's worker library adds to a job's outputs besides the outputs themselves.
WORKER_META_KEYS = frozenset({
    "auth", "auth_key", "job_id", "job_type", "version", "error", "metrics", "progress",
    "start_time", "start_time_compute", "arrival_time", "finished_time", "result_sent_time",
    "preprocessing_duration", "pending_duration", "compute_duration", "total_duration",
    "worker_interface_version",
})
# Worker facts kept for `/api/endpoints/{name}` (AIME's job request and login send them).
_INFO_KEYS = ("gpu_name", "num_gpus", "version", "worker_version", "framework",
              "framework_version", "pytorch_version", "max_batch_size")
_MODEL_KEYS = ("label", "quantization", "size", "family", "type", "repo_name")


async def _body(request: web.Request) -> Any:
    config = request.app[CONFIG]
    return await read_json(request, config.max_body_bytes, config.max_json_depth)


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(400, "request body is not a JSON object",
                       {"body": f"must be a JSON object (got {type(data).__name__})"})
    return data


def _text(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise ApiError(400, f"invalid {key}", {key: "must be a string of 1 to 128 characters"})
    return value


def _endpoints_of(request: web.Request, data: dict[str, Any]) -> list[Endpoint]:
    """The endpoints of the body's job_type that its auth_key serves (the key becomes the
    request's caller); ApiError 401 or 400 otherwise."""
    request[CALLER] = request.app[KEYS].caller_of_key(data.get("auth_key"), "auth_key")
    return worker_endpoints(request, [_text(data, "job_type")], "job_type")


def _refusal_text(error: ApiError, job_type: Any) -> str:
    """AIME's words for a refused worker (its own tests look for them), and the reason."""
    reasons = "; ".join(f"{k}: {v}" for k, v in error.fields.items()) or error.message
    if error.status == 401:
        return f"Worker not authorized on job type {str(job_type)[:128]!r}: wrong auth_key"
    if "job_type" in error.fields:
        return f"No job queue for job_type {str(job_type)[:128]!r}: {reasons}"
    return f"Worker request refused: {reasons}"


def _worker_info(data: dict[str, Any], max_batch: int) -> dict[str, Any]:
    """The worker facts AIME sends (legacy job request or login), short scalars only."""
    def scalar(value: Any) -> bool:
        return isinstance(value, int | float | bool) or (isinstance(value, str)
                                                           and len(value) <= 200)
    info = {k: data[k] for k in _INFO_KEYS if scalar(data.get(k))}
    model = data.get("model_parameters") or {
        key: data.get(f"model_{key}") for key in _MODEL_KEYS}
    info["model"] = {k: v for k, v in model.items() if k in _MODEL_KEYS and scalar(v)} \
        if isinstance(model, dict) else {}
    info["max_batch_size"] = max_batch
    info["protocol"] = "aime"
    return info


def _poll_wait_s(request: web.Request, endpoint: Endpoint, data: dict[str, Any]) -> float:
    """How long a job request is held: the endpoint's request_timeout, and under 0.9 of the
    worker's own (its HTTP timeout), at most `[SERVER] worker_poll_max_s`."""
    wait_s = request.app[CONFIG].worker_poll_max_s
    info = shapes.info_of(endpoint, request.app[AIME].infos)
    if info.request_timeout_s:
        wait_s = min(wait_s, info.request_timeout_s)
    timeout = data.get("request_timeout")
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
        wait_s = min(wait_s, 0.9 * timeout)
    return wait_s


async def job_request(request: web.Request) -> web.Response:
    """`/worker_job_request` `{auth, job_type, auth_key, max_job_batch, ...}`: holds the
    request until jobs come (then `cmd: job` with up to max_job_batch of them, those queued
    now) or the wait ends (`cmd: no_job`)."""
    data = _object(await _body(request))
    try:
        endpoints = _endpoints_of(request, data)
    except ApiError as e:  # refused for good: AIME's worker prints this and exits
        return json_response({"cmd": "error", "msg": _refusal_text(e, data.get("job_type"))})
    worker_id = _text(data, "auth")
    max_batch = data.get("max_job_batch", 1)
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= 1024:
        raise ApiError(400, "invalid max_job_batch",
                       {"max_job_batch": "must be an integer from 1 to 1024"})
    store = request.app[STORE]
    await store.worker_seen(worker_id, request[CALLER].owner, [endpoints[0].job_type],
                            request.remote or "", _worker_info(data, max_batch))
    grants = await store.claim(endpoints, max_batch, worker_id,
                               _poll_wait_s(request, endpoints[0], data))
    if not grants:
        return json_response({"cmd": "no_job"})
    endpoint = request.app[ENDPOINTS][grants[0].endpoint]
    info = shapes.info_of(endpoint, request.app[AIME].infos)
    return json_response(shapes.job_cmd(endpoint, info, grants))


def _report(entry: Any, where: str, results: bool, errors: dict[str, str]) -> WorkerReport | None:
    """One AIME progress or result entry as a WorkerReport; adds errors instead of raising."""
    if not isinstance(entry, dict):
        errors[where or "body"] = "must be a JSON object"
        return None
    prefix = f"{where}." if where else ""
    ids = shapes.split_worker_job_id(entry.get("job_id"))
    if ids is None:
        errors[prefix + "job_id"] = "must be a job id this server handed out (ID#LEASE)"
        return None
    if results:
        error = entry.get("error")
        outputs = {k: v for k, v in entry.items() if k not in WORKER_META_KEYS}
        return WorkerReport(*ids, outputs=outputs,
                            error=error if isinstance(error, str) and error else None)
    progress = entry.get("progress")
    if progress is not None and (not isinstance(progress, int | float)
                                 or isinstance(progress, bool) or not math.isfinite(progress)):
        errors[prefix + "progress"] = "must be a number"
        return None
    data = entry.get("progress_data") or {}
    if not isinstance(data, dict):
        errors[prefix + "progress_data"] = "must be a JSON object"
        return None
    outputs = {k: v for k, v in data.items() if k not in WORKER_META_KEYS}
    # jobhive's progress is a percentage: an AIME count (tokens made, say) is kept within it
    return WorkerReport(*ids, progress=None if progress is None else min(max(progress, 0), 100),
                        outputs=outputs)


def _progress_answer(worker_job_id: str, answer: ReportAnswer) -> dict[str, Any]:
    reply: dict[str, Any] = {"success": answer.ok or answer.canceled, "job_id": worker_job_id,
                             "canceled": answer.canceled}
    if answer.error and not answer.canceled:
        reply["error"] = answer.error
    return reply


async def job_progress(request: web.Request) -> web.Response:
    """`/worker_job_progress`: one `{job_id, auth_key, progress, progress_data}` or a list of
    them (a batch) → a list of `{success, job_id, canceled}`, in their order. Renews each
    job's lease; `canceled` tells the worker to stop that job."""
    data = await _body(request)
    entries = data if isinstance(data, list) else [data]
    if not entries or not isinstance(entries[0], dict):
        raise ApiError(400, "invalid progress", {"body": "must be an object or a list of them"})
    _key_caller(request, entries)
    errors: dict[str, str] = {}
    reports = [_report(e, f"[{i}]" if isinstance(data, list) else "", False, errors)
               for i, e in enumerate(entries)]
    if errors:
        raise ApiError(400, "invalid worker progress", errors)
    answers = await record_reports(request, reports, results=False)  # type: ignore[arg-type]
    return json_response([_progress_answer(e["job_id"], a) for e, a in zip(entries, answers,
                                                                          strict=True)])


def _key_caller(request: web.Request, entries: list[Any]) -> None:
    """The request's caller from its entries' auth_key (one key for all); 401 unless it is a
    worker key."""
    keys = {e.get("auth_key") if isinstance(e.get("auth_key"), str) else None
            for e in entries if isinstance(e, dict)}
    if len(keys) != 1 or None in keys:
        raise ApiError(400, "invalid auth_key", {"auth_key": "every entry must carry the same "
                                                 "worker key"})
    request[CALLER] = request.app[KEYS].caller_of_key(keys.pop(), "auth_key")
    if not request[CALLER].role.worker_of:
        raise ApiError(401, "Worker not authorized: wrong auth_key")


async def job_result(request: web.Request) -> web.Response:
    """`/worker_job_result` `{job_id, auth, auth_key, <outputs>, [error]}`: the job's result
    → `cmd: ok`; `cmd: warning` when it cannot be taken (the worker drops it and goes on)."""
    data = _object(await _body(request))
    try:
        _key_caller(request, [data])
    except ApiError as e:
        if e.status != 401:
            raise
        return json_response({"cmd": "error", "msg": e.message})
    errors: dict[str, str] = {}
    report = _report(data, "", True, errors)
    if report is None:
        raise ApiError(400, "invalid worker result", errors)
    worker = data.get("auth") if isinstance(data.get("auth"), str) else ""
    endpoint = request.app[ENDPOINTS].get((await request.app[STORE].endpoints_of(
        [report.job_id])).get(report.job_id, ""))
    if endpoint is not None and shapes.info_of(endpoint, request.app[AIME].infos) \
            .provide_worker_meta_data:  # AIME's [CLIENTS] provide_worker_meta_data
        report = report._replace(outputs={**(report.outputs or {}), "auth": worker[:128],
                                          "worker_interface_version": data.get("version")})
    (answer,) = await record_reports(request, [report], results=True, worker=worker[:128])
    if answer.ok:
        return json_response({"cmd": "ok"})
    return json_response({"cmd": "warning", "msg": f"job {data['job_id']}: {answer.error}"})


async def check_server_status(request: web.Request) -> web.Response:
    """`/worker_check_server_status` `{auth_key, job_type, [auth]}` → `{logged_in,
    job_type_present, key_valid}` (200: the worker asks whether the server is up)."""
    data = _object(await _body(request))
    job_type = data.get("job_type")
    endpoints = request.app[ENDPOINTS].values()
    present = any(e.job_type == job_type for e in endpoints)
    key = data.get("auth_key")
    role = request.app[KEYS].caller_of_key(key, "auth_key").role if isinstance(key, str) \
        else None
    valid = role is not None and any(e.job_type == job_type and e.name in role.worker_of
                                     for e in endpoints)
    workers = (await request.app[STORE].stats())["workers"] if data.get("auth") else []
    logged_in = any(w["worker_id"] == data["auth"] for w in workers)
    return json_response({"logged_in": logged_in, "job_type_present": present,
                          "key_valid": valid})


async def worker_login(request: web.Request) -> web.Response:
    """`/worker_login` `{worker_parameters: {auth, job_type, auth_key, max_batch_size, ...},
    model_parameters: {...}}` → `{success, request_timeout, api_server_version}`; 401 or 400
    with `{success: false, error_msg}` when the key or job type is refused."""
    data = _object(await _body(request))
    params = _object(data.get("worker_parameters"))
    try:
        endpoints = _endpoints_of(request, params)
        worker_id = _text(params, "auth")
    except ApiError as e:
        body = {"success": False, "error_msg": _refusal_text(e, params.get("job_type")),
                "fields": e.fields}
        return json_response(body, e.status)
    max_batch = params.get("max_batch_size")
    max_batch = max_batch if isinstance(max_batch, int) and not isinstance(max_batch, bool) \
        else 1
    model = data.get("model_parameters")
    await request.app[STORE].worker_seen(
        worker_id, request[CALLER].owner, [endpoints[0].job_type], request.remote or "",
        _worker_info({**params, "model_parameters": model if isinstance(model, dict) else {}},
                     max_batch))
    return json_response({"success": True,
                          "request_timeout": _poll_wait_s(request, endpoints[0], {}),
                          "api_server_version": API_SERVER_VERSION})


def worker_routes(prefix: str) -> list[web.RouteDef]:
    """The worker side of AIME's protocol under prefix."""
    return [
        web.post(f"{prefix}/worker_job_request", job_request),
        web.post(f"{prefix}/worker_job_progress", job_progress),
        web.post(f"{prefix}/worker_job_result", job_result),
        web.post(f"{prefix}/worker_check_server_status", check_server_status),
        web.post(f"{prefix}/worker_login", worker_login),
    ]
