"""Per-client submission rate limits: one token bucket per (endpoint, client)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol


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


class Limiter(Protocol):
    """What the submit route needs of a rate limiter: RateLimiter (one process), or
    RedisRateLimiter (api_server/store/redis_store.py: every server of a deployment)."""

    async def take(self, endpoint: str, client: str, rate_per_s: float, burst: int) -> float:
        ...


def retry_after_header(wait_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait_s)))}
