"""Client routes: endpoint schemas and job submission."""

from __future__ import annotations

import asyncio
import re

import orjson
from aiohttp import web

from api_server.config import Endpoint
from api_server.fields import has_media, validate_inputs
from api_server.httputil import (
    ApiError,
    bearer_key,
    json_response,
    key_in,
    owner_of,
    query_seconds,
    read_json,
    read_object,
    unauthorized,
)
from api_server.jobs import Job, StoreError
from api_server.media_pool import MediaCrash
from api_server.ratelimit import retry_after_header
from api_server.state import CONFIG, ENDPOINTS, MEDIA_POOL, RATE_LIMITER, STORE

routes = web.RouteTableDef()

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def endpoint_of(request: web.Request) -> Endpoint:
    name = request.match_info["name"]
    endpoint = request.app[ENDPOINTS].get(name)
    if endpoint is None:
        known = ", ".join(request.app[ENDPOINTS]) or "none"
        raise ApiError(404, f"no endpoint named {name!r} (endpoints: {known})")
    return endpoint


def client_owner(request: web.Request, endpoint: Endpoint) -> str:
    """The owner hash of the request's client key; "" on an open endpoint; 401 if wrong."""
    if not endpoint.clients.auth_keys:
        return ""
    key = bearer_key(request)
    if not key_in(key, endpoint.clients.auth_keys):
        raise unauthorized("client")
    return owner_of(key)  # type: ignore[arg-type]  # key_in is False for None


async def wait_until_finished(request: web.Request, job: Job, wait_s: float) -> None:
    """Holds the request until the job finishes or wait_s passes."""
    store = request.app[STORE]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (
        not job.status.finished and not store.closing and (remaining := deadline - loop.time()) > 0
    ):
        await store.wait_for_change(job, job.version, remaining)


@routes.get("/api/v1/endpoints")
async def list_endpoints(request: web.Request) -> web.Response:
    stats = request.app[STORE].stats()["endpoints"]
    return json_response(
        {
            "endpoints": [
                {
                    "name": e.name,
                    "title": e.endpoint.title,
                    "description": e.endpoint.description,
                    "version": e.endpoint.version,
                    "route": e.endpoint.route,
                    "client_auth": bool(e.clients.auth_keys),
                    **stats[e.name],
                }
                for e in request.app[ENDPOINTS].values()
            ]
        }
    )


@routes.get("/api/v1/endpoints/{name}")
async def get_endpoint(request: web.Request) -> web.Response:
    return json_response(endpoint_of(request).schema())


@routes.post("/api/v1/endpoints/{name}/jobs")
async def submit_job(request: web.Request) -> web.Response:
    """Validates and queues a job: 202 with its id and place in the queue; with `?wait=S`, the
    finished job (200) when it ends within S seconds. A repeat of a client's job_id answers 200
    with the job already there."""
    app = request.app
    endpoint = endpoint_of(request)
    owner = client_owner(request, endpoint)
    wait_s = query_seconds(request, "wait", app[CONFIG].client_wait_max_s)
    clients = endpoint.clients
    wait_for_token_s = app[RATE_LIMITER].take(
        endpoint.name, owner or request.remote or "", clients.rate_limit_per_s, clients.rate_burst
    )
    if wait_for_token_s:
        raise ApiError(
            429,
            f"too many submissions; the limit is {clients.rate_limit_per_s:g}/s",
            headers=retry_after_header(wait_for_token_s),
        )
    max_bytes = endpoint.endpoint.max_body_bytes or app[CONFIG].max_body_bytes
    body = read_object(await read_json(request, max_bytes), ("inputs", "job_id"))
    job_id = body.get("job_id")
    if job_id is not None and not (isinstance(job_id, str) and JOB_ID_PATTERN.match(job_id)):
        raise ApiError(
            400,
            "invalid job_id",
            {
                "job_id": "must be 1 to 128 letters, digits or '_', '.', ':', '-' (got "
                f"{str(job_id)[:40]!r})"
            },
        )
    inputs = body.get("inputs", {})
    require_any = endpoint.endpoint.require_any
    if isinstance(inputs, dict) and has_media(endpoint.inputs, inputs):
        try:
            checked = await app[MEDIA_POOL].run(
                validate_inputs, endpoint.inputs, inputs, require_any
            )
        except MediaCrash as e:
            media = [n for n, spec in endpoint.inputs.items() if spec.binary and inputs.get(n)]
            raise ApiError(400, f"invalid inputs for endpoint {endpoint.name!r}",
                           dict.fromkeys(media, "crashed the decoder: not a usable file")) from e
    else:
        checked = validate_inputs(endpoint.inputs, inputs, require_any)
    if checked.errors:
        raise ApiError(400, f"invalid inputs for endpoint {endpoint.name!r}", checked.errors)
    store = app[STORE]
    try:
        job, created = await store.submit(endpoint, job_id, orjson.dumps(checked.values), owner)
    except StoreError as e:
        headers = retry_after_header(e.retry_after_s) if e.retry_after_s else None
        raise ApiError(e.status, str(e), headers=headers) from e
    if wait_s:
        await wait_until_finished(request, job, wait_s)
    status = 202 if created and not job.status.finished else 200
    return json_response(job.to_json(store.queue_position(job)), status)
