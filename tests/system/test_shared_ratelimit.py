"""One rate-limit budget across processes (SPEC §12), on a 2-worker `imagesvc serve`:
with IMAGESVC_REDIS_URL the successes of a burst are the limit, not twice it, against the
machine's Redis and against a throwaway redis-server; Redis stopped (or hung) mid-test
serves every request (fail open), with no 5xx, a warning at most once a minute per
worker, and counting again once Redis is back."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import mysql_url
from tests.services import MariaDB, Process, create_key, start_imagesvc, start_redis

LIMIT = 20
MACHINE_REDIS = "redis://127.0.0.1:6379/0"


def env_for(mariadb: MariaDB | str, redis_url: str | None, per_minute: int) -> dict[str, str]:
    env = {
        "IMAGESVC_DATABASE_URL": mysql_url(mariadb),
        "IMAGESVC_STORAGE_BACKEND": "local",
        "IMAGESVC_STORAGE_LOCAL_ROOT": "/tmp/imagesvc-ratelimit-objects",
        "IMAGESVC_RATE_LIMIT_PER_MINUTE": str(per_minute),
    }
    if redis_url is not None:
        env["IMAGESVC_REDIS_URL"] = redis_url
    return env


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, str]]:
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield process, url
    process.stop()


async def burst(url: str, auth: str, count: int) -> list[httpx.Response]:
    """`count` requests at once, each on its own connection (so both workers get some)."""

    async def one() -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await client.get("/v1/images", headers={"Authorization": auth})

    return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.mark.parametrize("which", ["machine", "throwaway"])
def test_two_workers_share_one_budget(
    tmp_path: Path, mariadb: MariaDB | str, redis: tuple[Process, str], which: str
) -> None:
    redis_url = MACHINE_REDIS if which == "machine" else redis[1]
    env = env_for(mariadb, redis_url, LIMIT)
    process, url = start_imagesvc(tmp_path, env, workers=2)
    try:
        auth = f"Bearer {create_key(env, 'shared-limit')}"  # a fresh key: a fresh budget
        answers = asyncio.run(burst(url, auth, 3 * LIMIT))
    finally:
        process.stop()
    statuses = sorted(response.status_code for response in answers)
    assert statuses == [200] * LIMIT + [429] * (2 * LIMIT)
    for response in answers:
        assert response.headers["ratelimit-limit"] == str(LIMIT)
        assert 0 <= int(response.headers["ratelimit-remaining"]) < LIMIT
        assert 0 < int(response.headers["ratelimit-reset"]) <= 60
    limited = next(r for r in answers if r.status_code == 429)
    assert limited.json()["code"] == "too_many_requests"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_without_redis_each_worker_keeps_its_own_budget(
    tmp_path: Path, mariadb: MariaDB | str
) -> None:
    """Unset IMAGESVC_REDIS_URL: today's per-process token buckets (a burst of a sixth of
    the minute's budget per process), headers included."""
    env = env_for(mariadb, None, 6 * LIMIT)
    process, url = start_imagesvc(tmp_path, env, workers=2)
    try:
        auth = f"Bearer {create_key(env, 'local-limit')}"
        answers = asyncio.run(burst(url, auth, 3 * LIMIT))
    finally:
        process.stop()
    successes = sum(response.status_code == 200 for response in answers)
    # LIMIT per process (plus what refills during the burst), and the answers say so.
    assert LIMIT <= successes <= 2 * LIMIT + 4
    assert {response.headers["ratelimit-limit"] for response in answers} == {str(LIMIT)}


def test_redis_stopped_or_hung_mid_test_serves_everything(
    tmp_path: Path, mariadb: MariaDB | str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    redis_process, redis_url = start_redis(tmp_path_factory.mktemp("redis-stopped"))
    env = env_for(mariadb, redis_url, 100_000)
    process, url = start_imagesvc(tmp_path, env, workers=2)
    try:
        auth = f"Bearer {create_key(env, 'redis-down')}"
        counted = asyncio.run(burst(url, auth, 20))
        assert {r.status_code for r in counted} == {200}
        assert all("ratelimit-remaining" in r.headers for r in counted)

        redis_process.stop()  # Redis goes away mid-test
        down = asyncio.run(burst(url, auth, 40))
        assert {r.status_code for r in down} == {200}  # fail open, never a 5xx
        assert any("ratelimit-remaining" not in r.headers for r in down)

        redis_process.start()  # back: counting resumes within a second
        asyncio.run(asyncio.sleep(1.5))
        back = asyncio.run(burst(url, auth, 20))
        assert {r.status_code for r in back} == {200}
        assert any("ratelimit-remaining" in r.headers for r in back)

        # Hung rather than gone: the short socket timeout answers for it (the client
        # would time out after 30 s otherwise).
        assert redis_process.proc is not None
        os.kill(redis_process.proc.pid, signal.SIGSTOP)
        try:
            hung = asyncio.run(burst(url, auth, 20))
        finally:
            os.kill(redis_process.proc.pid, signal.SIGCONT)
        assert {r.status_code for r in hung} == {200}
    finally:
        process.stop()
        redis_process.stop()
    log = process.log_path.read_text()
    warnings = log.count("rate limit store unreachable")
    assert 1 <= warnings <= 2 * 2  # each worker: once for the outage, at most once more
