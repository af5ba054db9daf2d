"""AIME's client routes, under `[SERVER] aime_prefix`: submit (`/{endpoint}`, waiting for the
result unless `wait_for_result` is false), `/{endpoint}/progress`, `/{endpoint}/login`,
`/api/endpoints`, `/api/endpoints/{endpoint}` and `/api/validate_key`.

Arguments come as AIME's clients send them: a JSON body for POST, query parameters for GET
(converted to the field's type), with the key as `key` or the login's
`client_session_auth_key` (an `Authorization: Bearer` header works too). Every refusal has a
real status and AIME's body, `{"success": false, "error": ..., "ep_version": ...}`, plus
`fields` with one reason per bad field.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from api_server.aime import shapes
from api_server.auth import Caller
from api_server.config import Endpoint
from api_server.fields import (
    BooleanField,
    ChatContextField,
    FloatField,
    IntegerField,
    JsonField,
    SelectionField,
)
from api_server.httputil import ApiError, json_response, read_json
from api_server.ratelimit import retry_after_header
from api_server.routes.clients import queue_job, take_rate_token
from api_server.routes.jobs import check_access
from api_server.state import AIME, CALLER, CONFIG, ENDPOINTS, KEYS, STORE
from api_server.store import StoreError

# AIME's words for a missing or unknown session key: its client libraries look for them
# (the Python one then says to log in first; the demo pages log in again).
NOT_LOGGED_IN = ("API Key missing and client session authentication key not registered in "
                 "API Server")
_UNSET = (None, "", "null", "undefined", "None")  # what AIME's clients send for "no key"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def aime_errors(handler: Handler) -> Handler:
    """Renders a refusal (ApiError, a store's StoreError) in AIME's shape, keeping its status
    and headers."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return _error(request, e.status, e.message, e.fields, e.headers)
        except StoreError as e:
            headers = retry_after_header(e.retry_after_s) if e.retry_after_s else None
            return _error(request, e.status, str(e), {}, headers)

    return wrapped


def _error(request: web.Request, status: int, message: str, fields: dict[str, str],
           headers: Any) -> web.Response:
    endpoint = request.app[ENDPOINTS].get(request.match_info.get("name", ""))
    body: dict[str, Any] = {
        "success": False,
        "error": [f"{k}: {v}" for k, v in fields.items()] if status == 400 and fields
        else message,
        "ep_version": endpoint.endpoint.version if endpoint else None,
    }
    if fields:
        body["fields"] = fields
    return json_response(body, status, headers)


def _endpoint(request: web.Request) -> Endpoint:
    name = request.match_info["name"]
    endpoint = request.app[ENDPOINTS].get(name)
    if endpoint is None:
        raise ApiError(404, f"no endpoint named {name[:80]!r}")
    allowed = shapes.info_of(endpoint, request.app[AIME].infos).methods
    if request.method not in allowed:
        raise ApiError(405, f"endpoint {name!r} takes {' and '.join(allowed)}",
                       headers={"Allow": ", ".join(allowed)})
    return endpoint


async def _args(request: web.Request, max_bytes: int | None = None) -> dict[str, Any]:
    """The request's arguments: its query, and for a POST with a body, its JSON object."""
    args: dict[str, Any] = dict(request.query)
    if request.method == "POST" and (request.content_length or request.body_exists):
        config = request.app[CONFIG]
        data = await read_json(request, max_bytes or config.max_body_bytes,
                               config.max_json_depth)
        if not isinstance(data, dict):
            raise ApiError(400, "request body is not a JSON object",
                           {"body": f"must be a JSON object (got {type(data).__name__})"})
        args.update(data)
    return args


def _caller(request: web.Request, endpoint: Endpoint, args: dict[str, Any]) -> Caller:
    """Who is calling: `key`, else `client_session_auth_key` (issued for this endpoint), else
    the Authorization header (else nobody). 401 for a key or session key that is not ours."""
    app = request.app
    key = args.pop("key", None)
    session_key = args.pop("client_session_auth_key", None)
    if key not in _UNSET:
        caller = app[KEYS].caller_of_key(key)
        if not caller.known:
            raise ApiError(401, "Key not valid")
        return caller
    if session_key not in _UNSET and endpoint.clients.auth_keys:
        owner = (app[AIME].sessions.owner(endpoint.name, session_key)
                 if isinstance(session_key, str) else None)
        if owner is None:
            raise ApiError(401, NOT_LOGGED_IN + " (or it expired: log in again)")
        return app[KEYS].caller_of_owner(owner)
    return request[CALLER]


def _wait_for_result(args: dict[str, Any]) -> bool:
    value = args.pop("wait_for_result", True)
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0", ""):
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise ApiError(400, "invalid wait_for_result",
                       {"wait_for_result": f"must be true or false (got {str(value)[:40]!r})"})
    return value


def _typed_inputs(endpoint: Endpoint, args: dict[str, Any], from_query: bool) -> dict[str, Any]:
    """Inputs as jobhive's fields take them: JSON text of a json or chat_context field parsed
    (AIME's clients send those as strings); a query's text turned into the field's type."""
    inputs, errors = dict(args), {}
    for name, value in args.items():
        spec = endpoint.inputs.get(name)
        if not isinstance(value, str) or spec is None:
            continue
        try:
            if isinstance(spec, JsonField | ChatContextField):
                inputs[name] = orjson.loads(value) if value else None
            elif from_query:
                inputs[name] = _from_text(spec, value)
        except (ValueError, orjson.JSONDecodeError) as e:
            errors[name] = f"must be JSON text ({e})" if not from_query else str(e)
    if errors:
        raise ApiError(400, f"invalid inputs for endpoint {endpoint.name!r}", errors)
    return inputs


def _from_text(spec: Any, value: str) -> Any:
    if isinstance(spec, BooleanField):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"must be true or false (got {value[:40]!r})")
        return value.lower() in ("true", "1")
    if isinstance(spec, IntegerField | FloatField) or (
            isinstance(spec, SelectionField) and value not in spec.supported):
        try:
            number = float(value)
        except ValueError:
            if isinstance(spec, SelectionField):
                return value
            raise ValueError(f"must be a number (got {value[:40]!r})") from None
        return int(number) if number.is_integer() and "." not in value else number
    return value


def _check_contexts(endpoint: Endpoint, request: web.Request, inputs: dict[str, Any]) -> None:
    """AIME's rule: a job gives a chat_context or a text_context, not both."""
    info = shapes.info_of(endpoint, request.app[AIME].infos)
    chats = [n for n in info.chat_contexts if inputs.get(n)]
    texts = [n for n in info.text_contexts if inputs.get(n)]
    if chats and texts:
        raise ApiError(400, f"invalid inputs for endpoint {endpoint.name!r}", dict.fromkeys(
            texts, f"give a text_context or a chat_context ({', '.join(chats)}), not both"))


@aime_errors
async def submit(request: web.Request) -> web.Response:
    """`/{endpoint}`: queues a job; with wait_for_result (the default) answers with its
    result once it finishes (202 with its job_id when it takes longer than
    `[SERVER] client_wait_max_s`), else at once with its job_id."""
    app = request.app
    endpoint = _endpoint(request)
    args = await _args(request, endpoint.endpoint.max_body_bytes)
    caller = _caller(request, endpoint, args)
    if endpoint.clients.auth_keys and not caller.known:
        raise ApiError(401, NOT_LOGGED_IN)
    owner = caller.client_owner(endpoint)  # 403 for a key of other endpoints
    wait = _wait_for_result(args)
    await take_rate_token(request, endpoint, owner)
    inputs = _typed_inputs(endpoint, args, from_query=request.method == "GET")
    _check_contexts(endpoint, request, inputs)
    wait_s = app[CONFIG].client_wait_max_s if wait else 0.0
    job, _ = await queue_job(request, endpoint, owner, None, inputs, wait_s)
    version = endpoint.endpoint.version
    if not wait:
        return json_response({"success": True, "job_id": job.id, "ep_version": version})
    if job.status.finished:
        return json_response(await shapes.job_result(request, endpoint, job))
    return json_response({
        "success": False, "job_id": job.id, "ep_version": version,
        "job_state": shapes.JOB_STATES.get(job.status, "done"),
        "error": f"the job did not finish within {wait_s:g} s; it goes on: follow it at "
                 f"/{endpoint.name}/progress?job_id={job.id}",
    }, 202)


@aime_errors
async def progress(request: web.Request) -> web.Response:
    """`/{endpoint}/progress?job_id=`: the job's state and progress, or its result (every
    time it is asked, until the endpoint's result TTL), for the key that submitted it."""
    endpoint = _endpoint(request)
    args = await _args(request)
    request[CALLER] = _caller(request, endpoint, args)
    job_id = args.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise ApiError(400, "job_id missing", {"job_id": "must be the id the submit returned"})
    job = await request.app[STORE].get(job_id[:200])
    if job is None or job.endpoint != endpoint.name:
        raise ApiError(404, f"no job with id {job_id[:200]!r} at endpoint {endpoint.name!r} "
                            "(unknown, or its result expired)")
    check_access(request, job)
    online = 0
    if not job.status.finished:
        stats = await request.app[STORE].stats()
        online = stats["endpoints"].get(endpoint.name, {}).get("workers", 0)
    return json_response(await shapes.progress_reply(request, endpoint, job, online))


@aime_errors
async def login(request: web.Request) -> web.Response:
    """`/{endpoint}/login?key=`: a client_session_auth_key for a client key of the endpoint
    (any caller on an open endpoint)."""
    app = request.app
    endpoint = _endpoint(request)
    args = await _args(request)
    key = args.get("key")
    caller = app[KEYS].caller_of_key(key) if key not in _UNSET else request[CALLER]
    if endpoint.clients.auth_keys and not caller.known:
        raise ApiError(401, "Key not valid")
    owner = caller.client_owner(endpoint)  # 403 for a key of other endpoints
    session_key = (app[AIME].sessions.issue(endpoint.name, owner) if owner
                   else f"open.{secrets.token_hex(16)}")  # (an open endpoint reads none)
    return json_response({"success": True, "ep_version": endpoint.endpoint.version,
                          "client_session_auth_key": session_key,
                          "key": key if key not in _UNSET else None})


@aime_errors
async def list_endpoints(request: web.Request) -> web.Response:
    """`/api/endpoints[?key=]`: the endpoints' names; with a key, those it may use."""
    args = await _args(request)
    endpoints = request.app[ENDPOINTS].values()
    if args.get("key") in _UNSET:
        return json_response({"endpoints": [e.name for e in endpoints]})
    caller = request.app[KEYS].caller_of_key(args["key"])
    if not caller.role.client_of:
        raise ApiError(401, "Key not valid")
    return json_response({"endpoints": [e.name for e in endpoints
                                        if not e.clients.auth_keys
                                        or e.name in caller.role.client_of]})


@aime_errors
async def endpoint_details(request: web.Request) -> web.Response:
    """`/api/endpoints/{endpoint}`: its settings, queue, workers and field descriptions."""
    endpoint = request.app[ENDPOINTS].get(request.match_info["name"])
    if endpoint is None:
        raise ApiError(404, f"no endpoint named {request.match_info['name'][:80]!r}")
    info = shapes.info_of(endpoint, request.app[AIME].infos)
    return json_response(shapes.details(endpoint, info, await request.app[STORE].stats()))


@aime_errors
async def validate_key(request: web.Request) -> web.Response:
    """`/api/validate_key?key=`: whether the key is a client key of some endpoint (200 either
    way, as AIME answers: `{success, error}`)."""
    key = (await _args(request)).get("key")
    valid = key not in _UNSET and bool(request.app[KEYS].caller_of_key(key).role.client_of)
    return json_response({"success": valid, "error": None if valid else "Key not valid"})


def client_routes(prefix: str) -> list[web.RouteDef]:
    """The client side of AIME's protocol under prefix (fixed paths before `/{name}`)."""
    handlers = [("/api/endpoints", list_endpoints), ("/api/endpoints/{name}", endpoint_details),
                ("/api/validate_key", validate_key), ("/{name}", submit),
                ("/{name}/progress", progress), ("/{name}/login", login)]
    return [web.route(method, prefix + path, handler)
            for path, handler in handlers for method in ("GET", "POST")]
