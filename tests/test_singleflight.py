"""SingleFlight (the per-process caches' shared loads), with plain asyncio: no services."""

from __future__ import annotations

import asyncio

import pytest

from imagesvc.singleflight import SingleFlight


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
