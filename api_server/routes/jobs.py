"""Job routes: status (with long-poll), Server-Sent Events, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiohttp import web

from api_server.auth import Caller
from api_server.httputil import ApiError, json_response, query_int, query_seconds
from api_server.state import CALLER, CONFIG, ENDPOINTS, FILES, STORE
from api_server.store import JobView
from jobhive import protocol

log = logging.getLogger("jobhive.server")
routes = web.RouteTableDef()

_QUEUE_POSITION_REFRESH_S = 1.0  # a queued job's stream re-sends its position this often


def check_access(request: web.Request, job: JobView) -> None:
    """401/403 unless the request's caller may see this job. The job's stored owner decides,
    whether or not its endpoint is still configured; where the endpoint still takes client
    keys, the caller's key must also still be one of them (a key removed from the config
    loses its jobs)."""
    caller: Caller = request[CALLER]
    endpoint = request.app[ENDPOINTS].get(job.endpoint)
    if endpoint is not None and endpoint.clients.auth_keys and job.owner:
        caller.client_owner(endpoint)
    caller.check_owner(job.owner)


async def job_of(request: web.Request) -> JobView:
    """The job named in the URL, if the request's caller may see it (404/401/403)."""
    job_id = request.match_info["job_id"]
    job = await request.app[STORE].get(job_id)
    if job is None:
        raise ApiError(404, f"no job with id {job_id[:200]!r} (unknown, or its result expired)")
    check_access(request, job)
    return job


def wants_inline(request: web.Request) -> bool:
    """`?inline=1` (or true/yes); 400 for a value that is not a yes or a no."""
    raw = request.query.get(protocol.INLINE_PARAM)
    if raw is None or raw.lower() in ("0", "false", "no", ""):
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    raise ApiError(400, f"invalid query parameter {protocol.INLINE_PARAM!r}",
                   {protocol.INLINE_PARAM: f"must be 1 or 0 (got {raw[:40]!r})"})


async def shown(request: web.Request, job: JobView, inline: bool) -> dict[str, Any]:
    """The job as the client sees it; with `inline`, each file reference of its outputs and
    progress outputs replaced by the file's data URL."""
    data = job.to_json()
    if not inline:
        return data
    files, max_bytes = request.app[FILES], request.app[CONFIG].max_body_bytes
    if job.outputs_json:
        data["outputs"] = await files.inline(job.id, orjson.loads(job.outputs_json), max_bytes)
    if job.progress_outputs:
        data["progress_outputs"] = await files.inline(job.id, job.progress_outputs, max_bytes)
    return data


@routes.get(protocol.JOB_ROUTE)
async def get_job(request: web.Request) -> web.Response:
    """The job's state. `?wait=S` holds the request until the job changes (past the version
    given by `?since=V`, or past its version now) or S seconds pass. `?inline=1`: data URLs
    in place of file references. `?progress_from=text:N` (with `since`): the client holds N
    characters of that progress text, as of version `since`; the reply then carries only the
    rest, with `progress_offsets`, unless the text was replaced since (then it comes whole)."""
    wait_s = query_seconds(request, "wait", request.app[CONFIG].client_wait_max_s)
    since = request.query.get("since")
    since_version = None if since is None else query_int(since, "since")
    held = _progress_held(request)
    inline = wants_inline(request)
    job = await job_of(request)
    if wait_s and not job.status.finished:
        until = job.version if since_version is None else since_version
        job = await request.app[STORE].wait_for_change(job.id, until, wait_s) or job
    data = await shown(request, job, inline)
    if held and since_version is not None and job.status is protocol.JobStatus.RUNNING \
            and job.texts_since <= since_version <= job.version:
        # The client's texts (of version `since`) start the job's texts: their new parts do.
        outputs = data["progress_outputs"] or {}
        offsets = {key: held[key] for key, text in outputs.items()
                   if isinstance(text, str) and key in held and held[key] <= len(text)}
        _as_parts(data, {key: text[offsets[key]:] if key in offsets else text
                         for key, text in outputs.items()}, offsets)
    return json_response(data)


def _progress_held(request: web.Request) -> dict[str, int]:
    """`?progress_from=KEY:OFFSET,...`: how much of each progress text the client holds."""
    raw = request.query.get(protocol.PROGRESS_FROM_PARAM)
    if not raw:
        return {}
    try:
        return protocol.parse_progress_from(raw)
    except ValueError as e:
        raise ApiError(400, f"invalid query parameter {protocol.PROGRESS_FROM_PARAM!r}",
                       {protocol.PROGRESS_FROM_PARAM: str(e)}) from None


def _as_parts(data: dict[str, Any], parts: dict[str, Any], offsets: dict[str, int]) -> None:
    """Puts the parts of the progress texts in a job's JSON, with their offsets (if any)."""
    if offsets:
        data["progress_outputs"] = parts
        data[protocol.PROGRESS_OFFSETS_KEY] = offsets


@routes.delete(protocol.JOB_ROUTE)
async def cancel_job(request: web.Request) -> web.Response:
    """Cancels a queued or running job; a finished job is answered as it is."""
    job = await job_of(request)
    return json_response((await request.app[STORE].cancel(job.id) or job).to_json())


@routes.get(protocol.EVENTS_ROUTE)
async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events of one job until it finishes: `queued`, `progress`, then `result` or
    `error`. Each event's id is the job's version; a client reconnecting with Last-Event-ID gets
    the current state at once if it changed since, so it misses nothing that still matters.
    The first event carries the job whole; later `progress` events carry only the new part of
    each progress text that grew, with `progress_offsets` (protocol.progress_delta).
    `?inline=1`: data URLs in place of file references (in every event)."""
    last_id = request.headers.get("Last-Event-ID", "")
    sent_version = query_int(last_id, "Last-Event-ID") if last_id else 0
    inline = wants_inline(request)
    job = await job_of(request)
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
    try:
        await _stream(request, response, job, sent_version, inline)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:  # the stream is under way: no error reply can follow, only an end
        log.exception("event stream of job %s ended by an error", job.id)
    return response


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    job: JobView,
    sent_version: int,
    inline: bool = False,
) -> None:
    store = request.app[STORE]
    keepalive_s = request.app[CONFIG].sse_keepalive_s
    loop = asyncio.get_running_loop()
    sent_position: int | None = None
    sent_outputs = None  # the progress outputs (whole) the client has: later events send parts
    quiet_since = loop.time()
    with contextlib.suppress(ConnectionResetError):
        while True:
            if job.version > sent_version or job.queue_position != sent_position:
                event = protocol.EVENT_OF_STATUS[job.status]
                data = await shown(request, job, inline)
                outputs = data["progress_outputs"]
                if job.status is protocol.JobStatus.RUNNING and outputs and sent_outputs:
                    _as_parts(data, *protocol.progress_delta(sent_outputs, outputs))
                sent_outputs = outputs
                await response.write(b"event: %s\nid: %d\ndata: %s\n\n" % (
                    event.encode(), job.version, orjson.dumps(data)))
                sent_version, sent_position = job.version, job.queue_position
                quiet_since = loop.time()
                if job.status.finished:
                    return
            elif job.status.finished:  # the client has the final event: nothing will follow
                return
            elif loop.time() - quiet_since >= keepalive_s:
                await response.write(b": keepalive\n\n")
                quiet_since = loop.time()
            if store.closing:  # server shutting down: the client reconnects to the next one
                return
            timeout_s = _QUEUE_POSITION_REFRESH_S if job.queue_position else keepalive_s
            changed = await store.wait_for_change(job.id, sent_version, timeout_s)
            if changed is None:  # forgotten (its result expired while we waited)
                return
            job = changed
