"""Health and status routes."""

from __future__ import annotations

from aiohttp import web

from api_server.httputil import json_response
from api_server.state import CALLER, STORE
from jobhive import protocol

routes = web.RouteTableDef()


@routes.get(protocol.HEALTH_PATH)
async def health(request: web.Request) -> web.Response:
    """200 while the server serves."""
    return json_response({"status": "ok"})


@routes.get(protocol.STATUS_PATH)
async def status(request: web.Request) -> web.Response:
    """Queue lengths per endpoint and the workers seen lately (with how long ago); worker
    addresses only for an admin key (`[SERVER] admin_keys`)."""
    stats = await request.app[STORE].stats(with_addresses=request[CALLER].role.admin)
    return json_response(stats)
