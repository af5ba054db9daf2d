"""The typed keys of the application's shared objects (set once, in `create_app`), and of what
the middlewares put on each request."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from api_server.aime.cfg import AimeState
from api_server.auth import Caller, KeyBook
from api_server.config import Endpoint, ServerConfig
from api_server.connections import ConnectionGuard
from api_server.media_pool import MediaPool
from api_server.metrics import Metrics
from api_server.openai_wire import OpenAIModel
from api_server.outputs import OutputFilter
from api_server.ratelimit import Limiter
from api_server.store.base import Store
from api_server.store.files import FileStore

CONFIG = web.AppKey("config", ServerConfig)
ENDPOINTS = web.AppKey("endpoints", Mapping[str, Endpoint])
STORE = web.AppKey("store", Store)  # JobStore (SQLite) or RedisStore
FILES = web.AppKey("files", FileStore)  # the jobs' output files (uploaded by workers)
KEYS = web.AppKey("keys", KeyBook)
CONNECTIONS = web.AppKey("connections", ConnectionGuard)  # cap and timeouts of the sockets
RATE_LIMITER = web.AppKey("rate_limiter", Limiter)  # per process, or shared in Redis
MEDIA_POOL = web.AppKey("media_pool", MediaPool)  # Pillow/ffmpeg checks run here
OUTPUT_FILTER = web.AppKey("output_filter", OutputFilter)  # what workers may put in a job
AIME = web.AppKey("aime", AimeState)  # AIME's protocol, where it is enabled (api_server.aime)
OPENAI_MODELS = web.AppKey("openai_models", Mapping[str, OpenAIModel])  # /v1 model names
METRICS = web.AppKey("metrics", Metrics)  # this server's Prometheus metrics

CALLER = web.RequestKey("caller", Caller)  # who sent the request (api_server.auth)
