"""Health and status routes."""

from __future__ import annotations

from aiohttp import web

from api_server.httputil import json_response
from api_server.jobs import now_ms
from api_server.state import STORE

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/api/v1/status")
async def status(request: web.Request) -> web.Response:
    """Queue lengths per endpoint and the workers seen lately (with how long ago)."""
    stats = request.app[STORE].stats()
    now = now_ms()
    for worker in stats["workers"]:
        worker["last_seen_s_ago"] = round((now - worker["last_seen_ms"]) / 1000, 3)
    return json_response(stats)
