"""`create_app`: the one place the server is wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from api_server import routes_clients, routes_jobs, routes_pages, routes_status, routes_workers
from api_server.config import ConfigError, Endpoint, ServerConfig, sqlite_path
from api_server.httputil import ApiError, error_response
from api_server.media_pool import MediaPool
from api_server.ratelimit import RateLimiter
from api_server.sqlite_journal import SqliteJournal
from api_server.state import CONFIG, ENDPOINTS, MEDIA_POOL, RATE_LIMITER, STORE
from api_server.store import JobStore

log = logging.getLogger("jobhive.server")

CHECKPOINT_INTERVAL_S = 5.0  # how often the journal's WAL is checkpointed (and fsynced)


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error leaves as JSON with a real status; an unexpected one is logged as a bug."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(
            ApiError(
                e.status,
                e.reason,
                headers={k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")},
            )
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal error; the server log has the details"))


def journal_for(store_url: str) -> SqliteJournal:
    """The journal a `--store` URL names (`sqlite:PATH`)."""
    path = sqlite_path(store_url)
    if path is not None:
        return SqliteJournal(path)
    raise ConfigError([f"store: {store_url!r} is not a store URL (use sqlite:PATH)"])


def create_app(config: ServerConfig, endpoints: Mapping[str, Endpoint]) -> web.Application:
    """Builds the server for these endpoints; the store opens when the app starts.

    Args:
        config (ServerConfig): server settings (limits, store URL).
        endpoints (Mapping[str, Endpoint]): the loaded endpoint configs, by name.

    Returns:
        web.Application: ready for `web.run_app` or a test runner.
    """
    largest_body = max(
        [config.max_body_bytes, *(e.endpoint.max_body_bytes or 0 for e in endpoints.values())]
    )
    app = web.Application(client_max_size=largest_body, middlewares=[json_errors])
    app[CONFIG] = config
    app[ENDPOINTS] = dict(endpoints)
    app[STORE] = JobStore(app[ENDPOINTS], journal_for(config.store))
    app[RATE_LIMITER] = RateLimiter()
    app[MEDIA_POOL] = MediaPool(processes=min(4, os.cpu_count() or 1))
    app.cleanup_ctx.extend([_media_pool, _store])
    app.on_shutdown.append(_stop_waiting)
    for module in (routes_clients, routes_jobs, routes_workers, routes_status):
        app.add_routes(module.routes)
    app.add_routes(routes_pages.page_routes(app[ENDPOINTS]))
    return app


async def _media_pool(app: web.Application) -> AsyncIterator[None]:
    yield
    app[MEDIA_POOL].close()


async def _stop_waiting(app: web.Application) -> None:
    """On shut-down, before aiohttp waits for open requests: long-polls answer now."""
    app[STORE].stop_waiting()


async def _store(app: web.Application) -> AsyncIterator[None]:
    """Opens the store, sweeps leases and results while the server runs, then closes it."""
    store, config = app[STORE], app[CONFIG]
    await store.open()

    async def sweep_forever() -> None:
        sweeps = 0
        while True:
            await asyncio.sleep(config.sweep_interval_s)
            sweeps += 1
            try:
                await store.sweep()
                store.forget_workers(config.worker_seen_ttl_s)
                if sweeps * config.sweep_interval_s >= CHECKPOINT_INTERVAL_S:
                    sweeps = 0
                    await store.checkpoint()
            except Exception:  # the sweeper must outlive one bad sweep
                log.exception("sweep failed")

    sweeper = asyncio.create_task(sweep_forever(), name="jobhive-sweeper")
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await store.close()
