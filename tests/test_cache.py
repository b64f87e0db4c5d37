"""The caches: TtlCache (bounded, expiring, with generations) and SingleFlight (shared
loads), with plain asyncio: no services."""

from __future__ import annotations

import asyncio
import time

import pytest

from imagesvc.cache import SingleFlight, TtlCache


async def test_concurrent_callers_share_one_load() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    waiters = [asyncio.create_task(flights.do("k", load)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [42] * 10
    assert calls == 1
    assert await flights.do("k", load) == 42
    assert calls == 2  # finished loads are not cached here: the caches do that


async def test_a_load_started_after_forget_is_not_dropped_by_the_older_one() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    first_release, second_release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def load(name: str, release: asyncio.Event) -> str:
        calls.append(name)
        await release.wait()
        return name

    first = asyncio.create_task(flights.do("k", lambda: load("first", first_release)))
    await asyncio.sleep(0)
    flights.forget("k")  # e.g. a PATCH in this process: the first load may be stale
    second = asyncio.create_task(flights.do("k", lambda: load("second", second_release)))
    await asyncio.sleep(0)
    first_release.set()
    assert await first == "first"
    # The first load's completion must not have removed the second from the table.
    third = asyncio.create_task(flights.do("k", lambda: load("third", second_release)))
    second_release.set()
    assert await second == "second"
    assert await third == "second"
    assert calls == ["first", "second"]


async def test_failures_reach_every_waiter_and_a_cancelled_waiter_leaves_the_rest() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()

    async def load() -> int:
        await release.wait()
        raise ConnectionError("database away")

    quitter = asyncio.create_task(flights.do("k", load))
    stayers = [asyncio.create_task(flights.do("k", load)) for _ in range(3)]
    await asyncio.sleep(0)
    quitter.cancel()
    release.set()
    for stayer in stayers:
        with pytest.raises(ConnectionError):
            await stayer
    with pytest.raises(asyncio.CancelledError):
        await quitter


async def test_entries_expire_with_their_ttl_or_their_own_bound() -> None:
    cache: TtlCache[str, int] = TtlCache(0.2, 10)
    assert cache.put("a", 1)
    now = time.monotonic()
    assert cache.put("b", 2, expires=now + 0.05)  # its own, shorter bound wins
    assert cache.get("a") == 1
    assert cache.get("b") == 2
    await asyncio.sleep(0.08)
    assert cache.get("b") is None
    assert cache.get("a") == 1
    await asyncio.sleep(0.15)
    assert cache.get("a") is None
    # Read long ago: already stale, so not kept at all.
    assert not cache.put("c", 3, since=time.monotonic() - 1)
    assert cache.get("c") is None


def test_the_oldest_entries_go_first_and_memory_stays_bounded() -> None:
    cache: TtlCache[int, int] = TtlCache(60, 3)
    for key in range(3):
        cache.put(key, key)
    cache.put(0, 0)  # kept again: now the newest
    cache.put(3, 3)
    assert list(cache) == [2, 0, 3]
    for key in range(4, 1000):
        cache.put(key, key)
    assert len(cache) == 3


def test_a_load_that_began_before_a_change_is_not_kept() -> None:
    cache: TtlCache[str, str] = TtlCache(60, 10)
    generation = cache.generation
    cache.pop("row")  # this process changed the row while a load was in flight
    assert not cache.put("row", "old value", generation=generation)
    assert cache.get("row") is None
    assert cache.put("row", "new value", generation=cache.generation)
    before = cache.generation
    cache.discard("other")  # a stale entry dropped: nothing changed
    assert cache.generation == before
    cache.clear()
    assert cache.generation != before
    assert cache.get("row") is None


def test_nothing_is_kept_when_the_ttl_is_zero() -> None:
    cache: TtlCache[str, int] = TtlCache(0, 10)
    assert not cache.put("a", 1)
    assert cache.get("a") is None
