"""Client routes: endpoint schemas and job submission."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from api_server.config import Endpoint
from api_server.fields import has_media, validate_inputs
from api_server.httputil import ApiError, json_response, query_seconds, read_json, read_object
from api_server.media_pool import MediaCrash
from api_server.metrics import SUBMITTING
from api_server.ratelimit import retry_after_header
from api_server.routes.jobs import shown, wants_inline
from api_server.state import CALLER, CONFIG, ENDPOINTS, MEDIA_POOL, RATE_LIMITER, STORE
from api_server.store import JobView
from api_server.store.workers import models_served
from jobhive import protocol

routes = web.RouteTableDef()


def endpoint_of(request: web.Request) -> Endpoint:
    name = request.match_info["name"]
    endpoint = request.app[ENDPOINTS].get(name)
    if endpoint is None:
        known = ", ".join(request.app[ENDPOINTS]) or "none"
        raise ApiError(404, f"no endpoint named {name!r} (endpoints: {known})")
    return endpoint


@routes.get(protocol.ENDPOINTS_PATH)
async def list_endpoints(request: web.Request) -> web.Response:
    """Every endpoint with its title, page route, whether it needs a key, its queue, workers
    online and the models they serve."""
    stats = await request.app[STORE].stats()
    queues, workers = stats["endpoints"], stats["workers"]
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
                    **queues[e.name],
                    "models": models_served(workers, e.job_type),
                }
                for e in request.app[ENDPOINTS].values()
            ]
        }
    )


@routes.get(protocol.ENDPOINT_ROUTE)
async def get_endpoint(request: web.Request) -> web.Response:
    """The endpoint's schema: settings, inputs, outputs, progress outputs."""
    return json_response(endpoint_of(request).schema())


@routes.post(protocol.SUBMIT_ROUTE)
async def submit_job(request: web.Request) -> web.Response:
    """Validates and queues a job: 202 with its id and place in the queue; with `?wait=S`, the
    finished job (200) when it ends within S seconds (`&inline=1`: data URLs in place of file
    references). A repeat of a client's job_id answers 200 with the job already there."""
    app = request.app
    endpoint = endpoint_of(request)
    owner = request[CALLER].client_owner(endpoint)
    wait_s = query_seconds(request, "wait", app[CONFIG].client_wait_max_s)
    inline = wants_inline(request)
    await take_rate_token(request, endpoint, owner)
    config = app[CONFIG]
    max_bytes = endpoint.endpoint.max_body_bytes or config.max_body_bytes
    data = await read_json(request, max_bytes, config.max_json_depth)
    body = read_object(data, ("inputs", "job_id"))
    job_id = body.get("job_id")
    if job_id is not None and not protocol.valid_job_id(job_id):
        got = repr(job_id)[:40] if isinstance(job_id, str) else f"a {type(job_id).__name__}"
        raise ApiError(400, "invalid job_id",
                       {"job_id": f"must be {protocol.JOB_ID_RULE} (got {got})"})
    job, created = await queue_job(request, endpoint, owner, job_id, body.get("inputs", {}),
                                   wait_s)
    status = 202 if created and not job.status.finished else 200
    return json_response(await shown(request, job, inline), status)


async def take_rate_token(request: web.Request, endpoint: Endpoint, owner: str) -> None:
    """429 with Retry-After when the caller (its key, or its address on an open endpoint) is
    over the endpoint's submission rate. Every submit route calls it first: from here on a
    refusal of the request counts as a refused submit of the endpoint (api_server.metrics)."""
    request[SUBMITTING] = endpoint.name
    clients = endpoint.clients
    wait_for_token_s = await request.app[RATE_LIMITER].take(
        endpoint.name, owner or request.remote or "", clients.rate_limit_per_s, clients.rate_burst
    )
    if wait_for_token_s:
        raise ApiError(
            429,
            f"too many submissions; the limit is {clients.rate_limit_per_s:g}/s",
            headers=retry_after_header(wait_for_token_s),
        )


async def queue_job(
    request: web.Request,
    endpoint: Endpoint,
    owner: str,
    job_id: str | None,
    inputs: Any,
    wait_s: float,
) -> tuple[JobView, bool]:
    """Checks a job's inputs against the endpoint's fields (media ones in the media pool, off
    the event loop) and queues it: the one way into the queue, for this route and the OpenAI
    adapter's (api_server/routes/openai.py).

    Args:
        request (web.Request): the submitting request.
        endpoint (Endpoint): where the job goes.
        owner (str): the caller's key hash ("" on an open endpoint): `Caller.client_owner`.
        job_id (str | None): a valid client-chosen id (a repeat returns the job there), or None.
        inputs (Any): the inputs as sent.
        wait_s (float): how long to wait for the job to finish (0: not at all).

    Returns:
        tuple[JobView, bool]: the job, and whether this call created it.

    Raises:
        ApiError: 400 with one reason per input field. The store's refusals (StoreError: 409,
            429, 503, 507) are answered by the app's edge.
    """
    app = request.app
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
    return await app[STORE].submit(endpoint, job_id, orjson.dumps(checked.values), owner, wait_s)
