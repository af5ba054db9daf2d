"""The OpenAPI 3.1 document of the HTTP API, built from the app's router and the endpoint TOMLs.

`build_openapi(app, endpoints)` walks `app.router.routes()` (method, canonical path, the
handler's docstring as summary and description) and describes each API route with the
parameters, bodies, responses and security of `_OPERATIONS`, a table keyed by (method, path):
the routes themselves are never listed here, so a route added to the server shows up (with
the generic responses) even before the table knows it. Page routes (the index, the demo pages,
`/static/...`) are left out. The generic submit route becomes one path per endpoint,
`/api/v1/endpoints/NAME/jobs`, whose body schema is made from that endpoint's `[INPUTS]`.

`openapi_json` serves the document (`GET /api/v1/openapi.json`); it is built per request, as
it is small (a few milliseconds) and the app may not be changed once it has started.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from api_server.httputil import json_response
from api_server.state import CONFIG, ENDPOINTS
from jobhive import protocol

if TYPE_CHECKING:
    from api_server.config import Endpoint

OPENAPI_VERSION = "3.1.0"
SUBMIT_PATH = protocol.SUBMIT_ROUTE
OPENAPI_PATH = f"{protocol.API_PREFIX}/openapi.json"
# The protocol's job-id rule, in JSON Schema's dialect (ECMA regex: ^ and $, no \A and \Z).
JOB_ID_PATTERN = f"^[A-Za-z0-9_.:-]{{1,{protocol.JOB_ID_MAX_LENGTH}}}$"
_INT64 = (-(2**63), 2**63 - 1)  # integers travel through orjson: 64 bits at most
_PAGE_PATHS = ("/", "/favicon.ico", "/dashboard")
_STATUSES = tuple(status.value for status in protocol.JobStatus)

# ----- reusable pieces (components)


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error reply: what went wrong, and for a 400 one reason per bad field.",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "fields": {
            "type": "object",
            "description": "Field name (a dotted path for a nested one) to why it was refused.",
            "additionalProperties": {"type": "string"},
        },
    },
    "additionalProperties": False,
}

_JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A job as its client sees it.",
    "required": ["job_id", "endpoint", "status", "version"],
    "properties": {
        "job_id": {"type": "string", "pattern": JOB_ID_PATTERN},
        "endpoint": {"type": "string"},
        "status": {"enum": list(_STATUSES)},
        "version": {
            "type": "integer",
            "minimum": 0,
            "description": "Grows with every change; `since` and Last-Event-ID take it.",
        },
        "progress": _nullable({"type": "number", "minimum": 0, "maximum": 100}),
        "queue_position": _nullable({"type": "integer", "minimum": 0}),
        "progress_outputs": _nullable({"type": "object"}),
        protocol.PROGRESS_OFFSETS_KEY: {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 0},
            "description": "Only in later events of a stream, and in a long-poll with "
            "`progress_from`: each progress text it names is only its new part, starting at "
            "this offset (in Unicode code points) of the whole text.",
        },
        "outputs": _nullable({"type": "object"}),
        "error": _nullable({"type": "string"}),
        "attempts": {"type": "integer", "minimum": 0},
        "created_at_ms": {"type": "integer"},
        "started_at_ms": _nullable({"type": "integer"}),
        "finished_at_ms": _nullable({"type": "integer"}),
    },
}

_REPORT_PROPERTIES: dict[str, Any] = {
    "lease_id": {"type": "string", "minLength": 1, "maxLength": 128},
    "progress": _nullable({"type": "number", "minimum": 0, "maximum": 100}),
    "outputs": _nullable({"type": "object"}),
    "offsets": {
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0},
        "description": "Progress only: each string output it names is the new part of a text "
        "the server holds, starting at this offset (the answer's `offsets` give the lengths).",
    },
    "error": _nullable({"type": "string"}),
    "release": {
        "type": "boolean",
        "default": False,
        "description": "Give the job back to the queue (the worker is stopping).",
    },
}

_FILE_REF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A file of a job's outputs (where a data URL used to be): download it "
    "from `url` (with the job's key), or read the job with `?inline=1` for a data URL instead.",
    "required": ["file", "url", "media_type", "bytes", "sha256"],
    "properties": {
        "file": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
        "url": {"type": "string", "description": "`/api/v1/jobs/{job_id}/files/{file}`."},
        "media_type": {"enum": sorted(protocol.FILE_MEDIA_TYPES)},
        "bytes": {"type": "integer", "minimum": 0},
        "sha256": {"type": "string", "description": "Hex SHA-256 of the bytes; the ETag."},
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": _ERROR_SCHEMA,
    "FileRef": _FILE_REF_SCHEMA,
    "Job": _JOB_SCHEMA,
    "EndpointSchema": {
        "type": "object",
        "description": "An endpoint's settings and its inputs and outputs, as typed fields.",
        "required": ["name", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "job_type": {"type": "string"},
            "client_auth": {"type": "boolean"},
            "inputs": {"type": "object", "additionalProperties": {"type": "object"}},
            "outputs": {"type": "object", "additionalProperties": {"type": "object"}},
            "progress_outputs": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    },
    "EndpointList": {
        "type": "object",
        "required": ["endpoints"],
        "properties": {
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "route", "client_auth", "queued", "running", "workers"],
                    "properties": {
                        "name": {"type": "string"},
                        "title": {"type": "string"},
                        "description": {"type": "string"},
                        "version": {"type": "integer"},
                        "route": {"type": "string"},
                        "client_auth": {"type": "boolean"},
                        "queued": {"type": "integer", "minimum": 0},
                        "running": {"type": "integer", "minimum": 0},
                        "workers": {"type": "integer", "minimum": 0},
                        "models": {
                            "type": "array",
                            "description": "The models the workers online serve, each once.",
                            "items": _ref("schemas", "ModelServed"),
                        },
                    },
                },
            }
        },
    },
    "ModelServed": {
        "type": "object",
        "description": "A model workers online have loaded (their poll's info.loaded_models).",
        "required": ["name", "dtype", "device", "random", "workers"],
        "properties": {
            "name": {"type": "string", "description": "tiny-NAME for the demo's tiny models, "
                     "else the folder (or model name) it was loaded from."},
            "dtype": {"type": ["string", "null"], "description": "bfloat16, float32, nf4..."},
            "device": {"type": ["string", "null"], "description": "cpu, cuda:0..."},
            "random": {"type": "boolean", "description": "Random weights (the demo's tiny "
                       "models): its text is gibberish, its images noise."},
            "workers": {"type": "integer", "minimum": 1, "description": "Workers serving it."},
        },
    },
    "Status": {
        "type": "object",
        "required": ["endpoints", "workers"],
        "properties": {
            "endpoints": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "queued": {"type": "integer"},
                        "running": {"type": "integer"},
                        "workers": {"type": "integer"},
                    },
                },
            },
            "workers": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Poll": {
        "type": "object",
        "description": "A worker's request for jobs.",
        "required": ["worker_id", "job_types"],
        "properties": {
            "worker_id": {"type": "string", "minLength": 1, "maxLength": 128},
            "job_types": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "max_batch": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 1},
            "info": {"type": "object", "description": "Shown in /api/v1/status; its "
                     "`loaded_models` ([{name, dtype, device, random}]) in /api/v1/endpoints."},
            "wait_s": {
                "type": "number",
                "minimum": 0,
                "description": "How long to hold the poll open when no job is waiting; at "
                "most the server's worker_poll_max_s (its default).",
            },
        },
        "additionalProperties": False,
    },
    "Goodbye": {
        "type": "object",
        "description": "A worker stopping cleanly: it leaves the status at once.",
        "required": ["worker_id"],
        "properties": {"worker_id": {"type": "string", "minLength": 1, "maxLength": 128}},
        "additionalProperties": False,
    },
    "Grant": {
        "type": "object",
        "description": "A job leased to a worker: renew the lease with progress reports.",
        "required": ["job_id", "endpoint", "lease_id", "inputs"],
        "properties": {
            "job_id": {"type": "string"},
            "endpoint": {"type": "string"},
            "lease_id": {"type": "string"},
            "lease_s": {"type": "number"},
            "lease_expires_at_ms": {"type": "integer"},
            "attempt": {"type": "integer"},
            "inputs": {"type": "object"},
        },
    },
    "Grants": {
        "type": "object",
        "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": _ref("schemas", "Grant")}},
    },
    "Report": {
        "type": "object",
        "description": "Progress or the result of one job (its job_id is in the URL).",
        "required": ["lease_id"],
        "properties": {
            "job_id": {"type": "string", "description": "Ignored: the URL's job_id is used."},
            **_REPORT_PROPERTIES,
        },
        "additionalProperties": False,
    },
    "BatchReport": {
        "type": "object",
        "description": "Progress or the result of one job of a batch.",
        "required": ["job_id", "lease_id"],
        "properties": {
            "job_id": {"type": "string", "minLength": 1, "maxLength": 128},
            **_REPORT_PROPERTIES,
        },
        "additionalProperties": False,
    },
    "Reports": {
        "type": "object",
        "required": ["reports"],
        "properties": {
            "reports": {"type": "array", "minItems": 1, "items": _ref("schemas", "BatchReport")},
        },
        "additionalProperties": False,
    },
    "ReportsAndPoll": {
        "type": "object",
        "required": ["reports"],
        "properties": {
            "reports": {"type": "array", "minItems": 1, "items": _ref("schemas", "BatchReport")},
            "poll": _ref("schemas", "Poll"),
        },
        "additionalProperties": False,
    },
    "Answer": {
        "type": "object",
        "required": ["job_id", "ok", "canceled"],
        "properties": {
            "job_id": {"type": "string"},
            "ok": {"type": "boolean"},
            "canceled": {"type": "boolean", "description": "The client canceled the job: stop."},
            "error": {"type": "string"},
        },
    },
    "Answers": {
        "type": "object",
        "required": ["answers"],
        "properties": {
            "answers": {"type": "array", "items": _ref("schemas", "Answer")},
            "jobs": {"type": "array", "items": _ref("schemas", "Grant")},
        },
    },
}

_RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "integer", "minimum": 0},
}
_ERRORS: dict[str, tuple[str, dict[str, Any]]] = {
    "400": ("The request is malformed or a value is refused (`fields` says which, and why).", {}),
    "401": (
        "A missing or wrong key (send `Authorization: Bearer KEY`).",
        {"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    "403": ("The key is valid, but not for this job.", {}),
    "404": ("No such endpoint or job (or its result expired).", {}),
    "409": ("A conflict: the job_id names another job, or the lease is no longer held.", {}),
    "413": ("The request body (or file) is larger than the endpoint's or the server's limit.",
            {}),
    "415": ("The request body is not JSON (a file upload: not a media type it takes).", {}),
    "416": ("The Range asked for lies outside the file (Content-Range gives its length).", {}),
    "429": ("Too many submissions, or the queue is full.", {"Retry-After": _RETRY_AFTER}),
    "503": ("The store cannot take writes now; try again later.", {"Retry-After": _RETRY_AFTER}),
    "507": ("The store's disk is full.", {"Retry-After": _RETRY_AFTER}),
}
_NO_BODY = ("416",)  # (aiohttp's file response answers these without a JSON body)
_RESPONSES: dict[str, Any] = {
    f"Error{status}": {
        "description": text,
        **({"headers": headers} if headers else {}),
        **({} if status in _NO_BODY else {
            "content": {"application/json": {"schema": _ref("schemas", "Error")}}}),
    }
    for status, (text, headers) in _ERRORS.items()
}

_BEARER = "bearerAuth"
_SECURITY_SCHEMES = {
    _BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "A client key (for endpoints with [CLIENTS] auth_keys) or a worker key "
        "(for the worker routes, from the endpoint's [WORKER] auth_keys).",
    }
}
_OPEN: list[dict[str, list[str]]] = []  # no key asked for
_KEY_IF_ASKED = [{}, {_BEARER: []}]  # a client key, for the jobs of endpoints that have them
_KEY = [{_BEARER: []}]


# ----- the operations: what the router cannot say


def _json(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "description": description or "OK",
        "content": {"application/json": {"schema": schema}},
    }


def _body(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    out = {"required": True, "content": {"application/json": {"schema": schema}}}
    return {**out, "description": description} if description else out


def _wait_parameter(maximum_s: float, what: str) -> dict[str, Any]:
    return {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": f"Seconds to hold the request {what}; 0 (the default) answers at once.",
        "schema": {"type": "number", "minimum": 0, "maximum": maximum_s, "default": 0},
    }


_SINCE = {
    "name": "since",
    "in": "query",
    "required": False,
    "description": "With `wait`: wait for a version past this one (default: the version now).",
    "schema": {"type": "integer", "minimum": 0},
}
_PROGRESS_FROM = {
    "name": protocol.PROGRESS_FROM_PARAM,
    "in": "query",
    "required": False,
    "description": "With `since`: `KEY:N[,KEY:N]`, the characters of each progress text held "
    "as of that version; the reply then carries only the rest, with `progress_offsets`.",
    "schema": {"type": "string"},
}
_INLINE = {
    "name": protocol.INLINE_PARAM,
    "in": "query",
    "required": False,
    "description": "1: each file reference in the outputs comes as its data URL instead.",
    "schema": {"enum": ["0", "1"], "default": "0"},
}
_LEASE = {
    "name": protocol.LEASE_PARAM,
    "in": "query",
    "required": True,
    "description": "The job's current lease (from its grant).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}
_FILE_HEADERS = [
    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "`bytes=START-END`: part of the file (206), or 416 outside it."},
    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "The ETag (`\"SHA256\"`) held: 304 when the file is still that."},
]
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "The id (job version) of the last event received: a reconnecting stream "
    "starts with the job's state if it changed since.",
    "schema": {"type": "integer", "minimum": 0},
}


def _operations(wait_max_s: float) -> dict[tuple[str, str], dict[str, Any]]:
    job = _json(_ref("schemas", "Job"))
    job_errors = ["401", "403", "404"]
    worker_body_errors = ["400", "401", "413", "415"]
    store_errors = ["503", "507"]

    def one_job_report(summary: str) -> dict[str, Any]:
        return {
            "summary": summary,
            "security": _KEY,
            "requestBody": _body(_ref("schemas", "Report")),
            "responses": {
                "200": _json(_ref("schemas", "Answer")),
                **dict.fromkeys([*worker_body_errors, "403", "404", "409", *store_errors]),
            },
        }

    return {
        ("GET", "/health"): {
            "summary": "Liveness: the server answers.",
            "security": _OPEN,
            "responses": {
                "200": _json({
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"const": "ok"}},
                })
            },
        },
        ("GET", "/api/v1/status"): {
            "security": _KEY_IF_ASKED,  # an admin key also shows the workers' addresses
            "responses": {"200": _json(_ref("schemas", "Status"))},
        },
        ("GET", "/metrics"): {
            "security": _KEY_IF_ASKED,  # with [SERVER] metrics_admin_only: an admin key
            "responses": {
                "200": {
                    "description": "Prometheus' text format (version 0.0.4).",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": None,
                "403": None,
            },
        },
        ("GET", OPENAPI_PATH): {
            "security": _OPEN,
            "responses": {"200": _json({"type": "object"}, "This document.")},
        },
        ("GET", "/api/v1/endpoints"): {
            "summary": "The endpoints, with their queue lengths, workers online and models.",
            "security": _OPEN,
            "responses": {"200": _json(_ref("schemas", "EndpointList"))},
        },
        ("GET", "/api/v1/endpoints/{name}"): {
            "summary": "An endpoint's schema: its settings, inputs and outputs.",
            "security": _OPEN,
            "responses": {"200": _json(_ref("schemas", "EndpointSchema")), "404": None},
        },
        ("POST", SUBMIT_PATH): {
            "parameters": [_wait_parameter(wait_max_s, "until the job finishes"), _INLINE],
            "responses": {
                "200": _json(
                    _ref("schemas", "Job"),
                    "The job already there (a repeated job_id), or finished within `wait`.",
                ),
                "202": _json(_ref("schemas", "Job"), "Queued."),
                **dict.fromkeys(["400", "401", "409", "413", "415", "429", *store_errors]),
            },
        },
        ("GET", "/api/v1/jobs/{job_id}"): {
            "security": _KEY_IF_ASKED,
            "parameters": [_wait_parameter(wait_max_s, "until the job changes"), _SINCE,
                           _PROGRESS_FROM, _INLINE],
            "responses": {"200": job, **dict.fromkeys(["400", *job_errors])},
        },
        ("DELETE", "/api/v1/jobs/{job_id}"): {
            "security": _KEY_IF_ASKED,
            "responses": {
                "200": _json(_ref("schemas", "Job"), "The job, canceled (or as it finished)."),
                **dict.fromkeys([*job_errors, *store_errors]),
            },
        },
        ("GET", "/api/v1/jobs/{job_id}/events"): {
            "security": _KEY_IF_ASKED,
            "parameters": [_LAST_EVENT_ID, _INLINE],
            "responses": {
                "200": {
                    "description": "Events `queued`, `progress`, then `result` or `error`; each "
                    "one's data is the whole job (as GET shows it), its id the job's version.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **dict.fromkeys(job_errors),
            },
        },
        ("GET", protocol.JOB_FILE_ROUTE): {
            "security": _KEY_IF_ASKED,
            "parameters": _FILE_HEADERS,
            "responses": {
                "200": {
                    "description": "The file's bytes, of its media type (ETag: its SHA-256).",
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                "206": {"description": "The part of the file the Range asked for."},
                "304": {"description": "Not modified: the If-None-Match ETag is the file's."},
                **dict.fromkeys([*job_errors, "416"]),
            },
        },
        ("PUT", protocol.WORKER_JOB_FILE_ROUTE): {
            "security": _KEY,
            "parameters": [_LEASE],
            "requestBody": {
                "required": True,
                "description": "The file's raw bytes; Content-Type its media type.",
                "content": {
                    media_type: {"schema": {"type": "string", "format": "binary"}}
                    for media_type in sorted(protocol.FILE_MEDIA_TYPES)
                },
            },
            "responses": {
                "200": _json(_ref("schemas", "FileRef"), "Stored (durable): its reference."),
                **dict.fromkeys(["400", "401", "403", "404", "409", "413", "415",
                                 *store_errors]),
            },
        },
        ("POST", "/api/v1/worker/jobs"): {
            "security": _KEY,
            "requestBody": _body(_ref("schemas", "Poll")),
            "responses": {
                "200": _json(_ref("schemas", "Grants"), "Jobs leased to the worker."),
                "204": {"description": "No job came within wait_s."},
                **dict.fromkeys(worker_body_errors),
            },
        },
        ("POST", "/api/v1/worker/jobs/{job_id}/progress"): one_job_report(
            "Progress of one job; it renews the lease."
        ),
        ("POST", "/api/v1/worker/jobs/{job_id}/result"): one_job_report(
            "The result (outputs, or an error) of one job."
        ),
        ("POST", "/api/v1/worker/progress"): {
            "summary": "Progress of a batch of jobs: one answer each.",
            "security": _KEY,
            "requestBody": _body(_ref("schemas", "Reports")),
            "responses": {
                "200": _json(_ref("schemas", "Answers")),
                **dict.fromkeys([*worker_body_errors, *store_errors]),
            },
        },
        ("POST", "/api/v1/worker/goodbye"): {
            "security": _KEY,
            "requestBody": _body(_ref("schemas", "Goodbye")),
            "responses": {
                "200": _json({
                    "type": "object",
                    "required": ["ok"],
                    "properties": {
                        "ok": {
                            "type": "boolean",
                            "description": "False when no worker of that id polled with this key.",
                        }
                    },
                }),
                **dict.fromkeys(worker_body_errors),
            },
        },
        ("POST", "/api/v1/worker/results"): {
            "security": _KEY,
            "requestBody": _body(_ref("schemas", "ReportsAndPoll")),
            "responses": {
                "200": _json(_ref("schemas", "Answers")),
                **dict.fromkeys([*worker_body_errors, *store_errors]),
            },
        },
    }


# ----- endpoint inputs as JSON Schema


def field_schema(spec_json: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one typed field, from its `FieldSpec.schema()` description.

    What `auto_convert` would fix (a string too long, a number out of bounds) is accepted, so
    it is not a bound here; an optional field also takes null (its default, or nothing).
    """
    kind = spec_json.get("type")
    convert = bool(spec_json.get("auto_convert"))
    schema: dict[str, Any]
    note = ""
    if kind == "string":
        schema = {"type": "string"}
        if spec_json.get("min_length"):
            schema["minLength"] = spec_json["min_length"]
        if not convert and "max_length" in spec_json:
            schema["maxLength"] = spec_json["max_length"]
    elif kind in ("integer", "float"):
        integer = kind == "integer"
        schema = {"type": "integer" if integer and not convert else "number"}
        if not convert:
            low, high = spec_json.get("minimum"), spec_json.get("maximum")
            if integer:
                low = _INT64[0] if low is None else max(low, _INT64[0])
                high = _INT64[1] if high is None else min(high, _INT64[1])
            for key, value in (("minimum", low), ("maximum", high)):
                if value is not None:
                    schema[key] = int(value) if integer else value
            if spec_json.get("align"):
                align = spec_json["align"]
                whole = integer and float(align).is_integer()
                schema["multipleOf"] = int(align) if whole else align
    elif kind == "boolean":
        schema = {"type": "boolean"}
    elif kind == "selection":
        schema = {"enum": list(spec_json.get("supported", []))}
    elif kind == "json":
        schema = {}
        if "max_bytes" in spec_json:
            schema["x-max-bytes"] = spec_json["max_bytes"]
    elif kind == "chat_context":
        schema = {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": list(spec_json.get("roles", ["system", "user", "assistant"]))},
                    "content": {"type": "string"},
                },
                "additionalProperties": False,
            },
        }
        if "max_messages" in spec_json:
            schema["maxItems"] = spec_json["max_messages"]
        if "max_length" in spec_json:
            schema["x-max-content-length"] = spec_json["max_length"]
    elif kind in ("image", "audio"):
        schema = {"type": "string", "minLength": 1}
        note = _media_note(kind, spec_json)
    elif kind == "image_list":
        item = {"type": "string", "minLength": 1}
        schema = {"type": "array", "items": item}
        if "max_items" in spec_json:
            schema["maxItems"] = spec_json["max_items"]
        note = "Each item: " + _media_note("image", spec_json)
    else:  # a field type this module does not know yet: any JSON value
        schema = {}
    if spec_json.get("label"):
        schema["title"] = spec_json["label"]
    description = " ".join(t for t in (spec_json.get("description"), note) if t)
    if description:
        schema["description"] = description
    if spec_json.get("default") is not None:
        schema["default"] = spec_json["default"]
    schema["x-field-type"] = kind
    return schema if spec_json.get("required", True) else _nullable(schema)


def _media_note(kind: str, spec_json: Mapping[str, Any]) -> str:
    formats = ", ".join(spec_json.get("formats", []))
    limits = []
    if "max_width" in spec_json and "max_height" in spec_json:
        limits.append(f"at most {spec_json['max_width']}x{spec_json['max_height']} pixels")
    if "max_duration_s" in spec_json:
        limits.append(f"at most {spec_json['max_duration_s']:g} s")
    if "max_bytes" in spec_json:
        limits.append(f"at most {spec_json['max_bytes']} bytes decoded")
    return (
        f"A base64 {kind} as a data URL (data:<mime>;base64,...) or bare base64"
        + (f"; formats: {formats}" if formats else "")
        + (f"; {', '.join(limits)}" if limits else "")
        + (" (converted when it is not)" if spec_json.get("auto_convert") else "")
        + "."
    )


def inputs_schema(endpoint: Endpoint) -> dict[str, Any]:
    """The object schema of an endpoint's `inputs`."""
    specs = {name: spec.schema() for name, spec in endpoint.inputs.items()}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: field_schema(spec) for name, spec in specs.items()},
        "additionalProperties": False,
    }
    required = [name for name, spec in specs.items() if spec.get("required")]
    if required:
        schema["required"] = required
    require_any = list(endpoint.endpoint.require_any)
    if require_any:
        schema["description"] = f"Give at least one of: {', '.join(require_any)}."
        schema["anyOf"] = [
            {"required": [name], "properties": {name: {"not": {"enum": [None, "", []]}}}}
            for name in require_any
        ]
    return schema


def outputs_schema(specs: Mapping[str, Any]) -> dict[str, Any]:
    """The (open) object schema of a job's outputs or progress outputs: a media output is a
    file reference, or a data URL (older workers, or `?inline=1`)."""
    return {
        "type": "object",
        "properties": {name: _output_schema(spec.schema()) for name, spec in specs.items()},
    }


def _output_schema(spec_json: Mapping[str, Any]) -> dict[str, Any]:
    schema = field_schema({**spec_json, "required": False})  # {"anyOf": [it, null]}
    kind = spec_json.get("type")
    if kind in ("image", "audio"):
        schema["anyOf"][0] = {"anyOf": [_ref("schemas", "FileRef"), schema["anyOf"][0]]}
    elif kind == "image_list":
        items = schema["anyOf"][0]["items"]
        schema["anyOf"][0]["items"] = {"anyOf": [_ref("schemas", "FileRef"), items]}
    return schema


def submit_body_schema(endpoint: Endpoint) -> dict[str, Any]:
    """The body of `POST /api/v1/endpoints/NAME/jobs`: `{"inputs": {...}, "job_id": "..."}`."""
    inputs = inputs_schema(endpoint)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "inputs": inputs,
            "job_id": {
                "type": "string",
                "pattern": JOB_ID_PATTERN,
                "description": "Your own id for the job: submitting it again answers with the "
                "job already there (idempotent retries).",
            },
        },
        "additionalProperties": False,
    }
    if inputs.get("required") or inputs.get("anyOf"):
        schema["required"] = ["inputs"]
    return schema


def _submit_operation(
    template: dict[str, Any],
    endpoint: Endpoint,
    max_body_bytes: int | None,
    schemas: dict[str, Any],
) -> dict[str, Any]:
    """The submit operation of one endpoint; adds its job's schema to `schemas`."""
    name = endpoint.name
    limit = endpoint.endpoint.max_body_bytes or max_body_bytes
    title = endpoint.endpoint.title or name
    job_schema = {
        "allOf": [
            _ref("schemas", "Job"),
            {
                "properties": {
                    "endpoint": {"const": name},
                    "outputs": _nullable(outputs_schema(endpoint.outputs)),
                    "progress_outputs": _nullable(outputs_schema(endpoint.progress_outputs)),
                }
            },
        ]
    }
    schemas[f"Job.{name}"] = job_schema
    responses = dict(template["responses"])
    for status in ("200", "202"):
        responses[status] = _json(_ref("schemas", f"Job.{name}"), responses[status]["description"])
    return {
        **template,
        "operationId": f"submit_job.{name}",
        "summary": f"Submit a job to {title}.",
        "description": "\n\n".join(
            part
            for part in (
                template.get("description", ""),
                endpoint.endpoint.description,
                f"The body may be at most {limit} bytes." if limit else "",
            )
            if part
        ),
        "tags": [name],
        "security": _KEY if endpoint.clients.auth_keys else _OPEN,
        "requestBody": _body(submit_body_schema(endpoint)),
        "responses": responses,
    }


# ----- the document


def _docstring(handler: Any) -> tuple[str, str]:
    """(summary, description) of a handler: the first sentence of its docstring's first
    paragraph, and the whole docstring."""
    doc = inspect.getdoc(handler) or ""
    if not doc or doc == inspect.getdoc(type(handler)):  # a partial's or a class's own doc
        return "", ""
    paragraph = " ".join(doc.split("\n\n", 1)[0].split())
    summary = re.split(r"(?<=[.!?])\s", paragraph, maxsplit=1)[0]
    return summary, "" if summary == " ".join(doc.split()) else doc


def _is_page(method: str, path: str, pages: set[str]) -> bool:
    return method == "GET" and (path in pages or path.startswith("/static/"))


def build_openapi(app: web.Application, endpoints: Mapping[str, Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the app's API routes and the endpoints' submit bodies.

    Args:
        app (web.Application): the server; its router gives the routes.
        endpoints (Mapping[str, Endpoint]): the loaded endpoint configs, by name.

    Returns:
        dict: the document, ready for JSON.
    """
    config = app.get(CONFIG)
    operations = _operations(config.client_wait_max_s if config else 300.0)
    max_body_bytes = config.max_body_bytes if config else None
    pages = {*_PAGE_PATHS, *(e.endpoint.route for e in endpoints.values())}
    paths: dict[str, dict[str, Any]] = {}
    schemas = dict(_SCHEMAS)
    used_ids: set[str] = set()
    for route in app.router.routes():
        resource = route.resource
        method = route.method.upper()
        if resource is None or method in ("HEAD", "OPTIONS", "*"):
            continue
        path = resource.canonical
        if _is_page(method, path, pages) or path.startswith(OPENAI_PATHS):
            continue  # (OpenAI's routes are described by OpenAI's own document)
        known = operations.get((method, path), {})
        summary, description = _docstring(route.handler)
        operation_id = getattr(route.handler, "__name__", "") or f"{method.lower()} {path}"
        while operation_id in used_ids:
            operation_id += "_"
        used_ids.add(operation_id)
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "summary": summary or known.get("summary") or f"{method} {path}",
            **({"description": description} if description else {}),
        }
        if "security" in known:
            operation["security"] = known["security"]
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{([^}/:]+)", path)
        ] + list(known.get("parameters", []))
        if parameters:
            operation["parameters"] = parameters
        if "requestBody" in known:
            operation["requestBody"] = known["requestBody"]
        responses = known.get("responses") or {"200": {"description": "OK"}}
        operation["responses"] = {
            status: value if value is not None else _ref("responses", f"Error{status}")
            for status, value in responses.items()
        }
        if path == SUBMIT_PATH and method == "POST":
            # One path per endpoint, with its own body schema, instead of the template.
            operation["parameters"] = [p for p in parameters if p["in"] != "path"]
            for endpoint in endpoints.values():
                literal = SUBMIT_PATH.replace("{name}", endpoint.name)
                paths.setdefault(literal, {})["post"] = _submit_operation(
                    operation, endpoint, max_body_bytes, schemas
                )
            continue
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "jobhive",
            "version": _version(),
            "description": "A job queue for generative models: clients submit jobs to typed "
            "endpoints and follow them (polling, long-polling or Server-Sent Events); workers "
            "long-poll for jobs and report progress and results.",
        },
        "tags": [
            {"name": e.name, "description": e.endpoint.title or e.name} for e in endpoints.values()
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "responses": _RESPONSES,
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jobhive")
    except metadata.PackageNotFoundError:
        return "0"


OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)
OPENAI_PATHS = "/v1/"  # the OpenAI-compatible routes (api_server/routes/openai.py)


async def build_document(app: web.Application) -> None:
    """Builds the document once, at start-up (on_startup): routes and endpoints are fixed by
    then, and a build costs about 1.5 ms, too much to pay per request."""
    app[OPENAPI_DOCUMENT] = orjson.dumps(build_openapi(app, app[ENDPOINTS]))


async def openapi_json(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 document."""
    return json_response(orjson.Fragment(request.app[OPENAPI_DOCUMENT]))
