"""`create_app`: the one place the server is wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from aiohttp import web

from api_server.aime import routes as aime_routes
from api_server.aime.cfg import AimeInfo
from api_server.auth import KeyBook
from api_server.config import ConfigError, Endpoint, ServerConfig, is_redis_url, sqlite_path
from api_server.connections import ConnectionGuard
from api_server.httputil import ApiError, error_response
from api_server.media_pool import MediaPool
from api_server.metrics import Metrics
from api_server.openapi import OPENAPI_PATH, build_document, openapi_json
from api_server.outputs import OutputFilter
from api_server.ratelimit import Limiter, RateLimiter, retry_after_header
from api_server.routes import clients, files, jobs, metrics, openai, pages, status, workers
from api_server.state import (
    CALLER,
    CONFIG,
    CONNECTIONS,
    ENDPOINTS,
    FILES,
    KEYS,
    MEDIA_POOL,
    METRICS,
    OPENAI_MODELS,
    OUTPUT_FILTER,
    RATE_LIMITER,
    STORE,
)
from api_server.store import JobStore, Journal, SqliteJournal, StoreError, StoreUnavailable
from api_server.store.base import Store
from api_server.store.files import FileStore

log = logging.getLogger("jobhive.server")

CHECKPOINT_INTERVAL_S = 5.0  # how often the journal's WAL is checkpointed (and fsynced)
DEFAULT_FILES_DIR = "jobhive-files"  # output files with a Redis store and no files_dir


@web.middleware
async def api_edge(request: web.Request, handler):
    """The edge of every request: marks its time in the application for the connection guard,
    puts its caller (its key's roles) on it, once, turns every error into JSON with a real
    status (an unexpected one is logged as a bug), and counts the response for /metrics. One
    middleware, not four: each level is paid again at every resumption of a long-poll."""
    guarded = ConnectionGuard.enter(request)
    try:
        request[CALLER] = request.app[KEYS].caller(request)
        response = await handler(request)
    except ApiError as e:
        response = _error_reply(request, e)
    except StoreError as e:  # refused (409, 429), or its journal cannot write (507, 503)
        retry = retry_after_header(e.retry_after_s) if e.retry_after_s else None
        response = _error_reply(request, ApiError(e.status, str(e), headers=retry))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = _error_reply(
            request,
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
        response = _error_reply(request, ApiError(500, "internal error; the server log has the "
                                                       "details"))
    finally:
        ConnectionGuard.leave(guarded)
    request.app[METRICS].responded(request, response)
    return response


def _error_reply(request: web.Request, error: ApiError) -> web.Response:
    """An error in the shape its clients read: OpenAI's under /v1/, jobhive's elsewhere."""
    if request.path.startswith(openai.PREFIX):
        return openai.error_response(error)
    return error_response(error)


@web.middleware
async def known_host(request: web.Request, handler):
    """With `[SERVER] allowed_hosts`, a request for any other Host gets 400 (a web page on
    another site that reaches this server by DNS rebinding sends its own host name)."""
    allowed = request.app[CONFIG].allowed_hosts
    if allowed and request.host not in allowed and request.host.rsplit(":", 1)[0] not in allowed:
        raise ApiError(400, "this server does not serve that Host",
                       {"Host": f"must be one of {', '.join(allowed)}"})
    return await handler(request)


def store_for(
    config: ServerConfig, endpoints: Mapping[str, Endpoint], journal: Journal | None
) -> tuple[Store, Limiter]:
    """The job store `config.store` names (or one on the given journal), and the rate limiter
    that goes with it: one per process with SQLite, one shared through Redis."""
    if journal is None and is_redis_url(config.store):
        # (imported here: a SQLite server never loads the Redis client)
        from api_server.store.redis_store import RedisRateLimiter, RedisStore, connect

        redis = connect(config.store, config.redis_timeout_s)
        store = RedisStore(endpoints, redis, config.redis_prefix, config.durability,
                           worker_seen_ttl_s=config.worker_seen_ttl_s,
                           sweep_interval_s=config.sweep_interval_s,
                           replication_wait_ms=config.replication_wait_ms,
                           max_progress_chars=config.max_body_bytes)
        return store, RedisRateLimiter(redis, config.redis_prefix)
    if journal is None:
        path = sqlite_path(config.store)
        if path is None:
            raise ConfigError([f"store: {config.store!r} is not a store URL (use sqlite:PATH "
                               "or redis://HOST:PORT/DB)"])
        journal = SqliteJournal(path)
    store = JobStore(endpoints, journal, worker_seen_ttl_s=config.worker_seen_ttl_s,
                     max_progress_chars=config.max_body_bytes)
    return store, RateLimiter()


def files_for(config: ServerConfig, own_journal: bool) -> FileStore:
    """The output files' store: `[SERVER] files_dir`, else beside the SQLite file of
    `config.store` (`PATH.files`); a temporary folder when the app was given a journal of
    its own (a test's) and no files_dir. With Redis and no files_dir: DEFAULT_FILES_DIR."""
    limits = (config.max_file_bytes, config.max_job_files_bytes)
    shared = is_redis_url(config.store) and not own_journal  # other servers write there too
    if config.files_dir:
        return FileStore(Path(config.files_dir), *limits, shared=shared)
    if shared:
        return FileStore(Path(DEFAULT_FILES_DIR), *limits, shared=True)
    path = sqlite_path(config.store)
    if own_journal or path is None:
        return FileStore.temporary(*limits)
    return FileStore(path.with_name(path.name + ".files"), *limits)


def create_app(
    config: ServerConfig,
    endpoints: Mapping[str, Endpoint],
    journal: Journal | None = None,
    aime_infos: Mapping[str, AimeInfo] | None = None,
) -> web.Application:
    """Builds the server for these endpoints; the store opens when the app starts.

    Args:
        config (ServerConfig): server settings (limits, store URL).
        endpoints (Mapping[str, Endpoint]): the loaded endpoint configs, by name.
        journal (Journal | None): the store's journal; None: the one `config.store` names
            (tests pass a MemoryJournal; its files are then kept in a temporary folder unless
            `config.files_dir` names one).
        aime_infos (Mapping[str, AimeInfo] | None): the AIME facts of endpoints read from
            AIME configs (`aime.cfg.load_with_aime`); AIME's protocol is served when any are
            given or `config.aime_enabled`.

    Returns:
        web.Application: ready for `web.run_app` or a test runner.
    """
    largest_body = max(
        [config.max_body_bytes, *(e.endpoint.max_body_bytes or 0 for e in endpoints.values())]
    )
    guard = ConnectionGuard(config)  # its site is made by the runner (cli.serve)
    middlewares = [api_edge, *([known_host] if config.allowed_hosts else [])]
    app = web.Application(client_max_size=largest_body, middlewares=middlewares)
    app[CONNECTIONS] = guard
    app[CONFIG] = config
    app[ENDPOINTS] = dict(endpoints)
    app[STORE], app[RATE_LIMITER] = store_for(config, app[ENDPOINTS], journal)
    app[FILES] = files_for(config, own_journal=journal is not None)
    app[STORE].on_forget(app[FILES].delete_jobs)
    app[METRICS] = Metrics(server_name(config), app[ENDPOINTS])
    app[STORE].observe(app[METRICS])
    app[KEYS] = KeyBook(app[ENDPOINTS], config)
    app[OUTPUT_FILTER] = OutputFilter()
    app[OPENAI_MODELS] = openai.models_of(app[ENDPOINTS])
    app[MEDIA_POOL] = MediaPool(processes=min(4, os.cpu_count() or 1))
    app.cleanup_ctx.extend([_media_pool, _store, _files])
    app.on_startup.append(build_document)
    app.on_shutdown.append(_stop_waiting)
    for module in (clients, jobs, files, workers, status, metrics, openai):
        app.add_routes(module.routes)
    app.router.add_get(OPENAPI_PATH, openapi_json)
    app.add_routes(pages.page_routes(app[ENDPOINTS]))
    if config.aime_enabled or aime_infos:
        aime_routes.mount(app, aime_infos or {})
    return app


def server_name(config: ServerConfig) -> str:
    """This server's `server` label in /metrics: `[SERVER] server_name`, else HOST:PORT (or
    HOST-PID on a port picked at start, 0, which another server may get next time)."""
    if config.server_name:
        return config.server_name
    host = socket.gethostname()
    return f"{host}:{config.port}" if config.port else f"{host}-{os.getpid()}"


async def _media_pool(app: web.Application) -> AsyncIterator[None]:
    yield
    app[MEDIA_POOL].close()


async def _files(app: web.Application) -> AsyncIterator[None]:
    """Reads the output files' records back once the store is open (removing the folders of
    jobs it no longer knows); a temporary folder is removed at the end."""
    await app[FILES].open(app[STORE].endpoints_of)
    yield
    await app[FILES].close()


async def _stop_waiting(app: web.Application) -> None:
    """On shut-down, before aiohttp waits for open requests: long-polls answer now."""
    app[STORE].stop_waiting()


async def _store(app: web.Application) -> AsyncIterator[None]:
    """Opens the store, sweeps leases and results while the server runs, then closes it."""
    store, config = app[STORE], app[CONFIG]
    await store.open()

    async def sweep_forever() -> None:
        sweeps, warned_at = 0, -math.inf
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(config.sweep_interval_s)
            sweeps += 1
            try:
                await store.sweep()
                if sweeps * config.sweep_interval_s >= CHECKPOINT_INTERVAL_S:
                    sweeps = 0
                    await store.checkpoint()
            except StoreUnavailable as e:  # tried again at the next sweep; said once a minute
                if loop.time() - warned_at >= 60:
                    warned_at = loop.time()
                    log.warning("sweep could not write (tried again every %g s): %s",
                                config.sweep_interval_s, e)
            except Exception:  # the sweeper must outlive one bad sweep
                log.exception("sweep failed")

    sweeper = asyncio.create_task(sweep_forever(), name="jobhive-sweeper")
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await store.close()
