"""The typed keys of the application's shared objects (set once, in `create_app`)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from api_server.config import Endpoint, ServerConfig
from api_server.media_pool import MediaPool
from api_server.ratelimit import RateLimiter
from api_server.store import JobStore

CONFIG = web.AppKey("config", ServerConfig)
ENDPOINTS = web.AppKey("endpoints", Mapping[str, Endpoint])
STORE = web.AppKey("store", JobStore)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
MEDIA_POOL = web.AppKey("media_pool", MediaPool)  # Pillow/ffmpeg checks run here
