"""HTTP edges shared by the route modules: JSON replies, errors, request bodies, queries."""

from __future__ import annotations

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


_JSON_HEADERS: Mapping[str, str] = {"X-Content-Type-Options": "nosniff"}


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={**_JSON_HEADERS, **headers} if headers else _JSON_HEADERS,
    )


def error_response(error: ApiError) -> web.Response:
    body: dict[str, Any] = {"error": error.message}
    if error.fields:
        body["fields"] = error.fields
    return json_response(body, error.status, error.headers)


async def read_json(request: web.Request, max_bytes: int, max_depth: int) -> Any:
    """The request's JSON body: 415 unless its Content-Type is JSON, 413 past max_bytes, 400
    when it is not JSON or nests deeper than max_depth (naming the field)."""
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise ApiError(
            415,
            f"request body must be JSON (Content-Type: application/json; got "
            f"{request.content_type!r})",
        )
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
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, "request body is not valid JSON", {"body": str(e)}) from e
    # Only a body with more opening brackets than max_depth can nest that deep: most need no walk.
    if body.count(b"[") + body.count(b"{") > max_depth and (
        where := too_deep(data, max_depth)
    ) is not None:
        raise ApiError(400, "request body nests too deep",
                       {where: f"nests deeper than {max_depth} levels of lists and objects"})
    return data


def too_deep(value: Any, max_depth: int) -> str | None:
    """Where `value` first nests deeper than max_depth lists and objects (a path such as
    `reports[0].outputs.step`, cut after four steps), or None. Iterative: no recursion limit."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if depth > max_depth:
            return path.lstrip(".") or "body"
        if isinstance(item, dict):
            children = ((f".{str(key)[:40]}", child) for key, child in item.items())
        elif isinstance(item, list):
            children = ((f"[{i}]", child) for i, child in enumerate(item))
        else:
            continue
        for step, child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1, path + step if depth < 4 else path))
    return None


def query_int(raw: str, name: str) -> int:
    """A whole number from a query parameter or header (a job version); 400 otherwise."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise ApiError(400, f"invalid {name}",
                       {name: f"must be a job version, a whole number (got {raw[:40]!r})"})
    return int(raw)


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
            {name: f"must be a number of seconds from 0 to {maximum_s:g} (got {raw[:40]!r})"},
        )
    return value
