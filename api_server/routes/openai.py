"""OpenAI-compatible routes under /v1: chat completions (streamed or not), image generations
and edits, embeddings, and the model list, for the official SDKs and any OpenAI client.

An adapter over the same jobs: each request becomes one job of the endpoint whose `[OPENAI]`
table names its model, submitted through the native route's path (`queue_job`: rate limit,
validation, queue limits, idempotent job_id), run by the same workers, visible in the status,
the queue and the logs. A client that hangs up cancels its job. Translation lives in
api_server/openai_wire.py; errors are rendered in OpenAI's shape by the app's edge.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from api_server import openai_wire as wire
from api_server.config import Endpoint
from api_server.httputil import ApiError, json_response, read_json
from api_server.openai_wire import OpenAIModel
from api_server.routes.clients import queue_job, take_rate_token
from api_server.state import CALLER, CONFIG, FILES, OPENAI_MODELS, STORE
from api_server.store import JobView
from jobhive import protocol

log = logging.getLogger("jobhive.server")
routes = web.RouteTableDef()

PREFIX = "/v1/"  # every path under it answers errors in OpenAI's shape
JOB_ID_HEADER = "X-Job-Id"  # the job a request became (GET /api/v1/jobs/{id} follows it)
IDEMPOTENCY_HEADER = "Idempotency-Key"  # a client's job_id: a repeat returns the same job
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}


def models_of(endpoints: Mapping[str, Endpoint]) -> dict[str, OpenAIModel]:
    """Every model name the endpoints' [OPENAI] tables declare (read once, at start-up)."""
    models = {}
    for endpoint in endpoints.values():
        if endpoint.openai is None:
            continue
        toml = Path(endpoint.folder) / "endpoint.toml"
        created_s = int(toml.stat().st_mtime) if toml.is_file() else 0
        for name, inputs in endpoint.openai.models.items():
            models[name] = OpenAIModel(name, endpoint, inputs, created_s)
    return models


class ModelNotFound(ApiError):
    code = "model_not_found"


def error_response(error: ApiError) -> web.Response:
    """An error as OpenAI clients read it: `{"error": {message, type, param, code}}`. A 409
    (an Idempotency-Key used with other inputs) says `x-should-retry: false`: the SDKs retry
    a 409 otherwise."""
    headers = {"x-should-retry": "false", **error.headers} if error.status == 409 else (
        error.headers)
    return json_response(wire.error_body(error, getattr(error, "code", None)), error.status,
                         headers)


# ----- models


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    """The models this caller may use (open endpoints', and those its key is a client of)."""
    models = request.app[OPENAI_MODELS]
    usable = [m for m in models.values() if _may_use(request, m)]
    if models and not usable:
        request[CALLER].client_owner(next(iter(models.values())).endpoint)  # 401/403
    return json_response({"object": "list", "data": [_model_json(m) for m in usable]})


@routes.get("/v1/models/{model}")
async def get_model(request: web.Request) -> web.Response:
    model = _model_named(request, request.match_info["model"], None)
    request[CALLER].client_owner(model.endpoint)
    return json_response(_model_json(model))


def _may_use(request: web.Request, model: OpenAIModel) -> bool:
    endpoint = model.endpoint
    return not endpoint.clients.auth_keys or endpoint.name in request[CALLER].role.client_of


def _model_json(model: OpenAIModel) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": model.created_s,
            "owned_by": "jobhive"}


def _model_named(request: web.Request, name: Any, kind: str | None) -> OpenAIModel:
    """The model a request names: 400 without one, 404 (model_not_found) for an unknown one,
    400 for a model of another kind than the route's."""
    if name is None:
        raise wire.invalid({"model": "is required"})
    if not isinstance(name, str):
        raise wire.invalid({"model": f"must be a string (got {type(name).__name__})"})
    model = request.app[OPENAI_MODELS].get(name)
    if model is None:
        known = ", ".join(m.name for m in request.app[OPENAI_MODELS].values()
                          if kind is None or m.endpoint.openai.kind == kind) or "none"
        raise ModelNotFound(404, f"the model {name[:100]!r} does not exist",
                            {"model": f"known models: {known}"})
    if kind is not None and model.endpoint.openai.kind != kind:
        raise wire.invalid({"model": f"{name!r} is a model of kind "
                                     f"{model.endpoint.openai.kind}, not {kind}"})
    return model


# ----- submitting


async def _read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object of a request (415, 413 past the server's max_body_bytes, 400)."""
    config = request.app[CONFIG]
    data = await read_json(request, config.max_body_bytes, config.max_json_depth)
    if not isinstance(data, dict):
        raise wire.invalid({"body": f"must be a JSON object (got {type(data).__name__})"})
    return data


async def _submit(request: web.Request, model: OpenAIModel, translate: Any) -> JobView:
    """Queues the job `translate(endpoint, model_inputs)` makes, as the native submit route
    does (caller's key, body size, rate limit, validation, queue limits, idempotency); its
    validation errors are named as the OpenAI parameters they came from. Returns at once:
    `_finished` waits for the job, and cancels it when the client hangs up meanwhile."""
    endpoint = model.endpoint
    owner = request[CALLER].client_owner(endpoint)
    max_bytes = endpoint.endpoint.max_body_bytes
    if max_bytes and (request.content_length or 0) > max_bytes:
        raise ApiError(413, f"request body is {request.content_length} bytes; the limit of "
                            f"model {model.name!r} is {max_bytes}")
    job_id = request.headers.get(IDEMPOTENCY_HEADER)
    if job_id is not None and not protocol.valid_job_id(job_id):
        raise wire.invalid({IDEMPOTENCY_HEADER: f"must be {protocol.JOB_ID_RULE}"})
    await take_rate_token(request, endpoint, owner)
    translated = translate(endpoint, model.inputs)
    try:
        job, _ = await queue_job(request, endpoint, owner, job_id, translated.inputs, 0.0)
    except ApiError as e:
        raise wire.renamed(e, translated.params) if e.status == 400 else e from None
    return job


async def _finished(request: web.Request, job: JobView) -> JobView:
    """The job once it has finished; a client hanging up meanwhile cancels it."""
    store = request.app[STORE]
    keepalive_s = request.app[CONFIG].sse_keepalive_s
    try:
        while not job.status.finished:
            if store.closing:
                raise ApiError(503, "the server is shutting down; the job was canceled",
                               headers={"Retry-After": "1"})
            changed = await store.wait_for_change(job.id, job.version, keepalive_s)
            if changed is None:
                raise ApiError(503, f"job {job.id} was forgotten before it finished")
            job = changed
    except (asyncio.CancelledError, ApiError):
        await _cancel(request, job.id)
        raise
    return job


async def _cancel(request: web.Request, job_id: str) -> None:
    """Cancels a job whose client has gone (shielded: the handler is being cancelled)."""
    with contextlib.suppress(Exception):
        await asyncio.shield(request.app[STORE].cancel(job_id))


def _outputs(job: JobView) -> dict[str, Any]:
    """A finished job's outputs; a failed or canceled job as an error (not retried: the
    job has run)."""
    if job.status is protocol.JobStatus.DONE:
        return orjson.loads(job.outputs_json) if job.outputs_json else {}
    no_retry = {"x-should-retry": "false", JOB_ID_HEADER: job.id}
    if job.status is protocol.JobStatus.CANCELED:
        raise ApiError(409, f"job {job.id} was canceled", headers=no_retry)
    raise ApiError(500, f"job {job.id} failed: {job.error}", headers=no_retry)


# ----- chat


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """A chat job; streamed as `chat.completion.chunk` events with `stream: true`."""
    body = await _read_body(request)
    model = _model_named(request, body.get("model"), "chat")
    options: list[wire.ChatOptions] = []

    def translate(endpoint: Endpoint, inputs: Mapping[str, Any]) -> wire.Translated:
        assert endpoint.openai is not None
        translated, chat = wire.chat_request(body, endpoint, inputs, endpoint.openai.max_stop)
        options.append(chat)
        return translated

    job = await _submit(request, model, translate)
    completion_id = f"chatcmpl-{job.id}"
    created_s = job.created_at_ms // 1000
    if body.get("stream") is not True:
        job = await _finished(request, job)
        reply = wire.chat_completion(completion_id, created_s, model.name, _outputs(job))
        return json_response(reply, headers={JOB_ID_HEADER: job.id})
    response = web.StreamResponse(headers={**_SSE_HEADERS, JOB_ID_HEADER: job.id})
    try:
        await response.prepare(request)
        chunks = _ChatStream(response, completion_id, created_s, model.name, options[0])
        await chunks.follow(request, job)
    except (asyncio.CancelledError, ConnectionResetError):
        await _cancel(request, job.id)
        raise
    return response


class _ChatStream:
    """Writes one chat job's progress as `chat.completion.chunk` events: the growing
    `progress_outputs.text` as deltas, then the finish reason, the usage, `[DONE]`."""

    def __init__(self, response: web.StreamResponse, completion_id: str, created_s: int,
                 model: str, options: wire.ChatOptions) -> None:
        self.response = response
        self.head = (completion_id, created_s, model)
        self.options = options
        self.sent = ""

    async def follow(self, request: web.Request, job: JobView) -> None:
        store = request.app[STORE]
        keepalive_s = request.app[CONFIG].sse_keepalive_s
        await self.delta({"role": "assistant", "content": ""})
        while not job.status.finished:
            if store.closing:
                await _cancel(request, job.id)
                return await self.error(ApiError(503, "the server is shutting down"))
            changed = await store.wait_for_change(job.id, job.version, keepalive_s)
            if changed is None:
                return await self.error(ApiError(503, f"job {job.id} was forgotten"))
            if changed.version == job.version:
                await self.response.write(b": keepalive\n\n")
            job = changed
            await self.text((job.progress_outputs or {}).get("text"))
        try:
            outputs = _outputs(job)
        except ApiError as e:
            return await self.error(e)
        await self.text(outputs.get("text"))
        await self.delta({}, wire.finish_reason(outputs))
        if self.options.include_usage:
            await self.write(wire.usage_chunk(*self.head, outputs))
        await self.response.write(b"data: [DONE]\n\n")

    async def text(self, text: Any) -> None:
        """A delta of what `text` adds to the text sent so far (a reply only grows)."""
        if isinstance(text, str) and len(text) > len(self.sent) and text.startswith(self.sent):
            await self.delta({"content": text[len(self.sent):]})
            self.sent = text

    async def delta(self, delta: dict[str, Any], finish: str | None = None) -> None:
        await self.write(wire.chat_chunk(*self.head, delta, finish, self.options.include_usage))

    async def error(self, error: ApiError) -> None:
        await self.write(wire.error_body(error))

    async def write(self, data: dict[str, Any]) -> None:
        await self.response.write(b"data: %s\n\n" % orjson.dumps(data))


# ----- images


@routes.post("/v1/images/generations")
async def image_generations(request: web.Request) -> web.Response:
    """An image job from a prompt: its images as URLs or base64."""
    body = await _read_body(request)
    return await _images(request, body, None)


@routes.post("/v1/images/edits")
async def image_edits(request: web.Request) -> web.Response:
    """Image-to-image (multipart/form-data, as the SDKs send it): the image, a prompt, and the
    generation parameters as form fields."""
    if request.content_type != "multipart/form-data":
        raise ApiError(415, f"request body must be multipart/form-data (got "
                            f"{request.content_type!r})")
    form = await request.post()  # bounded by the app's client_max_size (413); files in a thread
    body: dict[str, Any] = {}
    image: str | None = None
    for key, value in form.items():
        if isinstance(value, web.FileField):
            if key not in ("image", "image[]") or image is not None:
                raise wire.invalid({key: "one image is supported (no mask, no second image)"})
            image = await asyncio.to_thread(_data_url, value)
        else:
            body[key] = value
    if image is None:
        raise wire.invalid({"image": "is required (a file part)"})
    return await _images(request, body, image)


async def _images(request: web.Request, body: dict[str, Any], image: str | None) -> web.Response:
    model = _model_named(request, body.get("model"), "images")
    if image is not None:
        body = _form_values(body, model.endpoint)
    formats: list[str] = []

    def translate(endpoint: Endpoint, inputs: Mapping[str, Any]) -> wire.Translated:
        translated, response_format = wire.images_request(body, endpoint, inputs, image)
        formats.append(response_format)
        return translated

    job = await _submit(request, model, translate)
    job = await _finished(request, job)
    images = _outputs(job).get("images") or []
    if formats[0] == "b64_json":
        inlined = await request.app[FILES].inline(job.id, {"images": images},
                                                  request.app[CONFIG].max_body_bytes)
        data = [{"b64_json": url.partition(",")[2]} for url in inlined["images"]]
    else:
        origin = str(request.url.origin())
        data = [{"url": origin + item["url"] if protocol.is_file_ref(item) else item}
                for item in images]
    reply = {"created": job.created_at_ms // 1000, "data": data}
    return json_response(reply, headers={JOB_ID_HEADER: job.id})


def _data_url(field: web.FileField) -> str:
    """An uploaded file as a data URL (read and encoded in a thread: it may be megabytes)."""
    media_type = field.content_type or "application/octet-stream"
    return f"data:{media_type};base64,{base64.b64encode(field.file.read()).decode()}"


_FORM_TYPES = {"integer": int, "float": float}


def _form_values(form: dict[str, Any], endpoint: Endpoint) -> dict[str, Any]:
    """Form fields (strings) as the JSON values they stand for: `n` and the endpoint's
    number and boolean inputs converted (a value that does not convert is left for the
    validation to name)."""
    out = dict(form)
    for key, value in form.items():
        spec = endpoint.inputs.get(key)
        kind = "integer" if key == "n" else spec.type_name if spec else ""
        with contextlib.suppress(ValueError):
            if kind in _FORM_TYPES:
                out[key] = _FORM_TYPES[kind](value)
            elif kind == "boolean" and value in ("true", "false"):
                out[key] = value == "true"
    return out


# ----- embeddings


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    """Text embeddings: one job for the request's texts."""
    body = await _read_body(request)
    model = _model_named(request, body.get("model"), "embeddings")
    formats: list[str] = []

    def translate(endpoint: Endpoint, inputs: Mapping[str, Any]) -> wire.Translated:
        assert endpoint.openai is not None
        translated, encoding = wire.embeddings_request(body, endpoint, inputs,
                                                       endpoint.openai.max_inputs)
        formats.append(encoding)
        return translated

    job = await _submit(request, model, translate)
    job = await _finished(request, job)
    outputs = _outputs(job)
    # Off the event loop: 256 rows of floats take milliseconds to decode and write out.
    reply = await asyncio.to_thread(
        lambda: orjson.dumps(wire.embeddings_response(model.name, outputs, formats[0])))
    return json_response(orjson.Fragment(reply), headers={JOB_ID_HEADER: job.id})
