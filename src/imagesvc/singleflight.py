"""Single flight: concurrent callers that need the same thing share one load.

Used by the per-process caches (image rows, API keys): when a busy entry expires, the
requests that find it expired wait for one query instead of each taking a pooled database
connection (before, a p99 spike at every expiry under load).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Task[V]] = {}

    async def do(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """`load()`'s result, shared with every caller asking for `key` meanwhile. A caller
        that is cancelled stops waiting; the load goes on for the others."""
        task = self._inflight.get(key)
        if task is None:
            # A clean context: the load serves several requests, so its log lines must not
            # carry the first caller's request id.
            task = asyncio.get_running_loop().create_task(
                _awaited(load), context=contextvars.Context()
            )
            self._inflight[key] = task
            task.add_done_callback(partial(self._done, key))
        return await asyncio.shield(task)

    def forget(self, key: K) -> None:
        """Later callers start a new load (this one's result may already be stale)."""
        self._inflight.pop(key, None)

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._inflight.get(key) is task:  # not a newer load started after forget()
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved, even when every waiter has gone


async def _awaited(load: Callable[[], Awaitable[V]]) -> V:
    return await load()
