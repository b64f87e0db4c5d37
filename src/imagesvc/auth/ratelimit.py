"""Per-key request rate limits: what a request took from its key's budget (`Quota`), the
429 beyond it, and the per-process limiter (a token bucket per API key, in memory).

`IMAGESVC_RATE_LIMIT_PER_MINUTE` tokens per minute, a bucket of a sixth of that (ten
seconds' worth, at least one) for bursts. Each process keeps its own buckets, so N workers
or replicas allow up to N times the rate: it protects the service from one runaway client.
With `IMAGESVC_REDIS_URL` the budget is one for every process instead
(auth/shared_ratelimit.py).

Every answer to a request that was counted carries `RateLimit-Limit`, `RateLimit-Remaining`
and `RateLimit-Reset` (web/context.py adds them from the request's `Quota`); a 429 also
carries `Retry-After`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from imagesvc.cache import TtlCache
from imagesvc.errors import ProblemError

_MAX_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class Quota:
    """One request's standing against its key's budget."""

    allowed: bool
    limit: int  # requests the budget holds when full
    remaining: int  # requests left right now
    reset: int  # seconds until the budget has room again (allowed) / is full again

    @property
    def retry_after(self) -> int:
        return max(1, self.reset)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset).encode()),
        ]


class TooManyRequests(ProblemError):
    status, code, title = 429, "too_many_requests", "Too many requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"this API key is over its rate limit; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


class Limiter(Protocol):
    async def take(self, key_id: str) -> Quota | None:
        """Take one request from this key's budget. None: not counted (the shared store
        is unreachable, and requests are served meanwhile)."""

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """The per-process token bucket."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 6.0)
        # A bucket left alone for as long as it takes to refill is full again: forgetting
        # it then changes nothing, which is what bounds the memory.
        self._buckets: TtlCache[str, _Bucket] = TtlCache(self.capacity / self.rate, _MAX_BUCKETS)

    async def take(self, key_id: str) -> Quota:
        return self.check(key_id)

    def check(self, key_id: str) -> Quota:
        """Take one token for this key if there is one."""
        now = time.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = _Bucket(self.capacity, now)
        # Kept (again) from now: the idle time that refills it starts with this request.
        self._buckets.put(key_id, bucket, since=now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
            reset = math.ceil((self.capacity - bucket.tokens) / self.rate)
        else:
            reset = math.ceil((1.0 - bucket.tokens) / self.rate)
        return Quota(allowed, int(self.capacity), int(bucket.tokens), reset)

    async def close(self) -> None:
        pass
