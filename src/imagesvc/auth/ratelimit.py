"""Per-key request rate limit: a token bucket per API key, in process memory.

`IMAGESVC_RATE_LIMIT_PER_MINUTE` tokens per minute, a bucket of a sixth of that (ten
seconds' worth, at least one) for bursts. Each process keeps its own buckets, so N workers
or replicas allow up to N times the rate: it protects the service from one runaway client,
it is not a billing meter (put a shared limiter in front for that).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from imagesvc.cache import TtlCache
from imagesvc.errors import ProblemError

_MAX_BUCKETS = 100_000


class TooManyRequests(ProblemError):
    status, code, title = 429, "too_many_requests", "Too many requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"this API key is over its rate limit; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 6.0)
        # A bucket left alone for as long as it takes to refill is full again: forgetting
        # it then changes nothing, which is what bounds the memory.
        self._buckets: TtlCache[str, _Bucket] = TtlCache(self.capacity / self.rate, _MAX_BUCKETS)

    def check(self, key_id: str) -> None:
        """Take one token for this key, or raise 429 with the wait until the next one."""
        now = time.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = _Bucket(self.capacity, now)
        # Kept (again) from now: the idle time that refills it starts with this request.
        self._buckets.put(key_id, bucket, since=now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise TooManyRequests(max(1, math.ceil((1.0 - bucket.tokens) / self.rate)))
        bucket.tokens -= 1.0
