"""Job routes: status (with long-poll), Server-Sent Events, cancel."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from api_server.httputil import (
    ApiError,
    bearer_key,
    json_response,
    key_in,
    owner_of,
    query_seconds,
    unauthorized,
)
from api_server.jobs import Job, JobStatus
from api_server.state import CONFIG, ENDPOINTS, STORE

routes = web.RouteTableDef()

# The SSE event a job's state is sent as; its data is always the whole job (as GET shows it).
_EVENT_NAMES = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "progress",
    JobStatus.DONE: "result",
    JobStatus.FAILED: "error",
    JobStatus.CANCELED: "error",
}
_QUEUE_POSITION_REFRESH_S = 1.0  # a queued job's stream re-sends its position this often


def job_of(request: web.Request) -> Job:
    """The job named in the URL, if the request's client key may see it (404/401/403)."""
    job_id = request.match_info["job_id"]
    job = request.app[STORE].get(job_id)
    if job is None:
        raise ApiError(404, f"no job with id {job_id!r} (unknown, or its result expired)")
    endpoint = request.app[ENDPOINTS].get(job.endpoint)
    if endpoint is not None and endpoint.clients.auth_keys:
        key = bearer_key(request)
        if not key_in(key, endpoint.clients.auth_keys):
            raise unauthorized("client")
        if owner_of(key) != job.owner:  # type: ignore[arg-type]
            raise ApiError(403, "this job was submitted with another client key")
    return job


@routes.get("/api/v1/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    """The job's state. `?wait=S` holds the request until the job changes (past the version
    given by `?since=V`, or past its version now) or S seconds pass."""
    job = job_of(request)
    store = request.app[STORE]
    wait_s = query_seconds(request, "wait", request.app[CONFIG].client_wait_max_s)
    if wait_s and not job.status.finished:
        since = request.query.get("since", "")
        if since and not since.isdigit():
            raise ApiError(
                400,
                "invalid query parameter 'since'",
                {"since": f"must be a job version, a whole number (got {since!r})"},
            )
        await store.wait_for_change(job, int(since) if since else job.version, wait_s)
    return json_response(job.to_json(store.queue_position(job)))


@routes.delete("/api/v1/jobs/{job_id}")
async def cancel_job(request: web.Request) -> web.Response:
    """Cancels a queued or running job; a finished job is answered as it is."""
    job = job_of(request)
    store = request.app[STORE]
    await store.cancel(job)
    return json_response(job.to_json(store.queue_position(job)))


@routes.get("/api/v1/jobs/{job_id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events of one job until it finishes: `queued`, `progress`, then `result` or
    `error`. Each event's id is the job's version; a client reconnecting with Last-Event-ID gets
    the current state at once if it changed since, so it misses nothing that still matters."""
    job = job_of(request)
    store = request.app[STORE]
    keepalive_s = request.app[CONFIG].sse_keepalive_s
    last_id = request.headers.get("Last-Event-ID", "")
    sent_version = int(last_id) if last_id.isdigit() else 0
    if sent_version > job.version:  # an id this job never reached: send its state afresh
        sent_version = 0
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    sent_position: int | None = None
    quiet_since = loop.time()
    with contextlib.suppress(ConnectionResetError):
        while True:
            position = store.queue_position(job)
            if job.version > sent_version or position != sent_position:
                event = _EVENT_NAMES[job.status]
                data = orjson.dumps(job.to_json(position))
                await response.write(
                    b"event: %s\nid: %d\ndata: %s\n\n" % (event.encode(), job.version, data)
                )
                sent_version, sent_position, quiet_since = job.version, position, loop.time()
                if job.status.finished:
                    break
            elif job.status.finished:  # the client has the final event: nothing will follow
                break
            elif loop.time() - quiet_since >= keepalive_s:
                await response.write(b": keepalive\n\n")
                quiet_since = loop.time()
            if store.closing:  # server shutting down: the client reconnects to the next one
                break
            timeout_s = _QUEUE_POSITION_REFRESH_S if position else keepalive_s
            await store.wait_for_change(job, sent_version, timeout_s)
    return response
