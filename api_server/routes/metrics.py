"""`GET /metrics`: this server's metrics in Prometheus' text format (api_server.metrics), with
the shared queue's gauges read from the store at scrape time."""

from __future__ import annotations

from aiohttp import web

from api_server.auth import unauthorized
from api_server.httputil import ApiError
from api_server.metrics import CONTENT_TYPE
from api_server.state import CALLER, CONFIG, METRICS, STORE

METRICS_PATH = "/metrics"

routes = web.RouteTableDef()


@routes.get(METRICS_PATH)
async def metrics(request: web.Request) -> web.Response:
    """This server's counters and histograms and the queue's gauges, for Prometheus (with
    `[SERVER] metrics_admin_only`, for an admin key only)."""
    if request.app[CONFIG].metrics_admin_only and not request[CALLER].role.admin:
        if request[CALLER].known:
            raise ApiError(403, "this key is not an admin key ([SERVER] admin_keys)")
        raise unauthorized("admin")
    stats = await request.app[STORE].stats()
    # (on the event loop, where the counts change: a few milliseconds for a few hundred series)
    text = request.app[METRICS].exposition(stats)
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE,
                                            "Cache-Control": "no-store",
                                            "X-Content-Type-Options": "nosniff"})
