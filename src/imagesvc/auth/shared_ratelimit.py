"""One rate-limit budget per API key for every process and replica (SPEC §12), kept in
Redis through the `limits` package's async API (its moving-window strategy, redis-py's
asyncio client): at most IMAGESVC_RATE_LIMIT_PER_MINUTE requests in any 60 seconds, per
key. Never blocks the event loop.

Redis unreachable: requests are served (fail open), uncounted and without RateLimit
headers, and a warning is logged at most once a minute per process. Latency stays bounded:
every Redis call has a short socket timeout and no retries, and after a failure this
process does not try Redis again for RETRY_AFTER_FAILURE seconds, so a down or hung Redis
costs one short wait per process per second, not one per request.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from imagesvc.auth.ratelimit import Quota

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 0.25  # seconds, connect and each call
RETRY_AFTER_FAILURE = 1.0  # seconds this process serves uncounted before trying again
WARN_EVERY = 60.0
KEY_PREFIX = "imagesvc-ratelimit"


class SharedRateLimiter:
    def __init__(self, redis_url: str, per_minute: int) -> None:
        options: dict[str, Any] = {
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": 256,
        }
        self._pool = ConnectionPool.from_url(redis_url, **options)
        # Our own pool (limits passes it to redis-py): its timeouts and no-retry policy
        # apply, and close() can release it.
        client_options: dict[str, Any] = {"connection_pool": self._pool}
        storage = RedisStorage(
            "async+" + redis_url,
            implementation="redispy",
            wrap_exceptions=True,
            key_prefix=KEY_PREFIX,
            **client_options,
        )
        self._strategy = MovingWindowRateLimiter(storage)
        self._item = RateLimitItemPerMinute(per_minute)
        self._down_until = 0.0
        self._warned_at = -math.inf

    async def take(self, key_id: str) -> Quota | None:
        now = time.monotonic()
        if now < self._down_until:
            return None
        try:
            allowed = await self._strategy.hit(self._item, key_id)
            stats = await self._strategy.get_window_stats(self._item, key_id)
        except (StorageError, RedisError, OSError, TimeoutError) as exc:
            self._down_until = now + RETRY_AFTER_FAILURE
            if now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "rate limit store unreachable (%s); serving requests uncounted",
                    type(getattr(exc, "storage_error", exc)).__name__,
                )
            return None
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return Quota(allowed, self._item.amount, stats.remaining, reset)

    async def close(self) -> None:
        await self._pool.aclose()
