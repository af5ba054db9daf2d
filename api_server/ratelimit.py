"""Per-client submission rate limits: one token bucket per (endpoint, client)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from api_server.store.model import now_ms
from api_server.store.redis_scripts import RATE_LIMIT
from api_server.store.redis_store import unavailable


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """Token buckets, refilled at `rate_per_s` up to `burst`.

    Args:
        max_clients (int, default 100_000): buckets kept; past that, full (idle) ones are dropped.
    """

    def __init__(self, max_clients: int = 100_000) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._max_clients = max_clients

    async def take(self, endpoint: str, client: str, rate_per_s: float, burst: int) -> float:
        """Takes one token; returns 0 when allowed, else the seconds until one is free."""
        if rate_per_s <= 0:
            return 0.0
        now = time.monotonic()
        bucket = self._buckets.get((endpoint, client))
        if bucket is None:
            if len(self._buckets) >= self._max_clients:
                self._drop_idle(now, rate_per_s, burst)
            bucket = self._buckets[(endpoint, client)] = _Bucket(float(burst), now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated_s) * rate_per_s)
        bucket.updated_s = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate_per_s

    def _drop_idle(self, now: float, rate_per_s: float, burst: int) -> None:
        full_after_s = burst / rate_per_s
        for key in [k for k, b in self._buckets.items() if now - b.updated_s > full_after_s]:
            del self._buckets[key]


class RedisRateLimiter:
    """The same limits, held in Redis: exact across every server of a deployment (a GCRA, one
    key per endpoint and client, expiring once its bucket would be full again).

    Args:
        redis (redis.asyncio.Redis): the store's Redis.
        prefix (str): the store's key prefix.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._script = redis.register_script(RATE_LIMIT)
        self._prefix = prefix

    async def take(self, endpoint: str, client: str, rate_per_s: float, burst: int) -> float:
        """As RateLimiter.take; Redis away is a StoreUnavailable (503)."""
        if rate_per_s <= 0:
            return 0.0
        key = f"{self._prefix}:rl:{{{endpoint}}}:{client}"
        try:
            wait_ms = await self._script(args=[key, now_ms(), 1000 / rate_per_s, max(1, burst)])
        except redis.exceptions.RedisError as e:
            raise unavailable(e) from e
        return wait_ms / 1000


def retry_after_header(wait_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait_s)))}
