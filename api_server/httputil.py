"""HTTP edges shared by the route modules: JSON replies, errors, request bodies, keys."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web


class ApiError(Exception):
    """An error reply: the middleware renders it as `{"error": message, "fields": {...}}`.

    Args:
        status (int): the HTTP status.
        message (str): what went wrong, for people.
        fields (Mapping[str, str] | None): one reason per bad field, for a 400.
        headers (Mapping[str, str] | None): extra headers (Retry-After, WWW-Authenticate).
    """

    def __init__(
        self,
        status: int,
        message: str,
        fields: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = dict(fields or {})
        self.headers = dict(headers or {})


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(error: ApiError) -> web.Response:
    body: dict[str, Any] = {"error": error.message}
    if error.fields:
        body["fields"] = error.fields
    return json_response(body, error.status, error.headers)


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON body; 413 past max_bytes, 400 when it is not JSON."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(
            413, f"request body is {request.content_length} bytes; the limit is {max_bytes}"
        )
    body = await request.read()
    if len(body) > max_bytes:
        raise ApiError(413, f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body:
        raise ApiError(400, "request body is empty", {"body": "must be a JSON object"})
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, "request body is not valid JSON", {"body": str(e)}) from e


def read_object(data: Any, known: Iterable[str], where: str = "") -> dict[str, Any]:
    """Checks that a body (or the value of its key `where`) is a JSON object with no keys
    beyond `known`; the 400 names `where.key` fields when `where` is given."""
    if not isinstance(data, dict):
        reason = f"must be a JSON object (got {type(data).__name__})"
        raise ApiError(400, "request body is not a JSON object", {where or "body": reason})
    unknown = data.keys() - set(known)
    if unknown:
        allowed = ", ".join(sorted(known))
        prefix = f"{where}." if where else ""
        raise ApiError(
            400,
            "unknown keys in request body",
            {prefix + k: f"unknown key; allowed: {allowed}" for k in sorted(unknown)},
        )
    return data


def query_seconds(request: web.Request, name: str, maximum_s: float) -> float:
    """A `?name=S` seconds parameter, 0 when absent; 400 unless 0 <= S <= maximum_s."""
    raw = request.query.get(name)
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= maximum_s:
        raise ApiError(
            400,
            f"invalid query parameter {name!r}",
            {name: f"must be a number of seconds from 0 to {maximum_s:g} (got {raw!r})"},
        )
    return value


def bearer_key(request: web.Request) -> str | None:
    """The key of an `Authorization: Bearer KEY` header, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def key_in(key: str | None, keys: Iterable[str]) -> bool:
    """Constant-time membership test of a key in a list of accepted keys."""
    if key is None:
        return False
    encoded = key.encode()
    return any(hmac.compare_digest(encoded, k.encode()) for k in keys)


def owner_of(key: str) -> str:
    """What a job stores of its client's key: a hash, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def unauthorized(what: str) -> ApiError:
    return ApiError(
        401,
        f"missing or wrong {what} key (send Authorization: Bearer KEY)",
        headers={"WWW-Authenticate": 'Bearer realm="jobhive"'},
    )
