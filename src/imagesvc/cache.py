"""The per-process caches, in one shape: `TtlCache`, a bounded map whose entries expire,
evicted oldest first, with a generation counter; and `SingleFlight`, which lets concurrent
callers that need the same thing share one load.

Every cache of the service is a `TtlCache` (image rows, API keys, signed URLs, replayed
answers, rate-limit buckets, metric children), so each bounds its memory and its staleness
the same way. The generation changes whenever an entry is dropped on purpose (`pop`,
`clear`): a load that began before a change compares the generation it started with before
it keeps its result (`put(..., generation=...)`), and anything derived from several caches
(a replayed answer) records their generations and is valid only while they hold.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    since: float  # when the value was read (time.monotonic())
    expires: float


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int) -> None:
        """`ttl` seconds per entry from when its value was read (`math.inf`: until evicted;
        0 or less: nothing is kept). At most `max_entries`, the oldest evicted first."""
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, _Entry[V]] = {}
        self._generation = 0

    @property
    def generation(self) -> int:
        """Changes whenever an entry is dropped on purpose (pop, clear)."""
        return self._generation

    def get(self, key: K) -> V | None:
        """The value, while it is fresh; None when missing or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._entries[key]
            return None
        return entry.value

    def since(self, key: K) -> float | None:
        """When the fresh value of `key` was read (time.monotonic()), if one is kept."""
        entry = self._entries.get(key)
        if entry is None or entry.expires <= time.monotonic():
            return None
        return entry.since

    def expires_at(self, key: K) -> float | None:
        """When the fresh value of `key` expires (time.monotonic()), if one is kept."""
        entry = self._entries.get(key)
        if entry is None or entry.expires <= time.monotonic():
            return None
        return entry.expires

    def put(
        self,
        key: K,
        value: V,
        *,
        since: float | None = None,
        expires: float | None = None,
        generation: int | None = None,
    ) -> bool:
        """Keep `value`, read at `since` (default now), until `since + ttl` or `expires`,
        whichever is first. With `generation`, only if nothing was dropped since the caller
        read that generation (its value may predate the change). True if kept."""
        if generation is not None and generation != self._generation:
            return False
        since = time.monotonic() if since is None else since
        until = since + self.ttl if self.ttl > 0 else since
        if expires is not None:
            until = min(until, expires)
        if until <= time.monotonic():
            return False
        self._entries.pop(key, None)  # re-inserted last: it is the newest now
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = _Entry(value, since, until)
        return True

    def discard(self, key: K) -> None:
        """Drop a stale entry (nothing changed: the generation stays)."""
        self._entries.pop(key, None)

    def pop(self, key: K) -> None:
        """Drop what is kept of `key`; loads in flight must not keep their (older) result."""
        self._entries.pop(key, None)
        self._generation += 1

    def clear(self) -> None:
        self._entries.clear()
        self._generation += 1

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._entries))


FOREVER = math.inf


class SingleFlight(Generic[K, V]):
    """Concurrent callers that need the same thing share one load: when a busy entry of a
    cache expires, the requests that find it expired wait for one query instead of each
    taking a pooled database connection (before, a p99 spike at every expiry under load)."""

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
