"""Breaking things on purpose (SPEC §4): the object store and the database are stopped and
started around uploads and deletes, clients vanish, servers are SIGKILLed — and afterwards
`imagesvc gc --grace 0` leaves every object with a ready row, every ready row with its
object, no multipart upload open, and every 201 intact.

This module runs its own MariaDB and rclone S3 so that it can stop them freely."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from imagesvc.app import create_app
from imagesvc.config import MIB, Settings
from imagesvc.storage.port import ObjectWriter
from tests.api import post_raw
from tests.conftest import client_for, s3_settings
from tests.consistency import assert_consistent, open_uploads, rows, settings_env
from tests.samples import jpeg
from tests.services import (
    MariaDB,
    Process,
    create_key,
    start_imagesvc,
    start_rclone,
    throwaway_mariadb,
)

LEASE = 2.0
BUCKET = "faults"


@pytest.fixture(scope="module")
def fault_db() -> Iterator[MariaDB]:
    with throwaway_mariadb() as server:
        yield server


@pytest.fixture(scope="module")
def fault_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    where = tmp_path_factory.mktemp("fault-s3")
    process, _ = start_rclone(where, where / "data", BUCKET)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def fault_settings(fault_db: MariaDB, fault_s3: Process) -> Settings:
    endpoint = fault_s3.command[fault_s3.command.index("--addr") + 1]
    return s3_settings(
        f"http://{endpoint}",
        BUCKET,
        fault_db.url,
        s3_key_prefix="faults/",
        upload_lease_seconds=LEASE,
        s3_connect_timeout=1.0,
        s3_read_timeout=5.0,
        db_connect_timeout=2.0,
        db_timeout=5.0,
        # Keys stay trusted for the whole test: these tests stop the database, and it is
        # the upload (not the key check) whose behaviour they are about.
        auth_cache_seconds=300,
    )


@pytest.fixture
async def fault_app(fault_settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(fault_settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(fault_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(fault_app, "faults") as c:
        c.timeout = httpx.Timeout(60)
        # The key is read (and trusted) now, while the database is up.
        assert (await c.get("/v1/images")).status_code == 200
        yield c


@pytest.fixture(autouse=True)
def services_running(fault_db: MariaDB, fault_s3: Process) -> Iterator[None]:
    """Whatever a test stopped is running again before the next one."""
    yield
    if (
        fault_db.process is None
        or fault_db.process.proc is None
        or fault_db.process.proc.poll() is not None
    ):
        fault_db.start()
    if fault_s3.proc is None or fault_s3.proc.poll() is not None:
        fault_s3.start()


def big_image(mib: int) -> bytes:
    return jpeg() + os.urandom(mib * MIB)


async def settle() -> None:
    """Let abandoned pending rows outlive their lease, so gc may reclaim them."""
    await asyncio.sleep(LEASE + 0.5)


# --- the object store goes away --------------------------------------------------------------


async def test_store_down_before_upload_is_503_then_recovers(
    client: httpx.AsyncClient, fault_s3: Process, fault_settings: Settings
) -> None:
    promised: dict[str, bytes] = {}
    fault_s3.stop()
    refused = await post_raw(client, jpeg())
    assert refused.status_code == 503
    assert refused.headers["retry-after"]
    assert refused.json()["code"] == "storage_unavailable"
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "ok", "storage": "down"}
    assert (await client.get("/healthz")).status_code == 200

    fault_s3.start()  # no restart of the service: it recovers by itself
    data = jpeg(color=(1, 2, 3))
    created = await post_raw(client, data)
    assert created.status_code == 201
    promised[created.json()["id"]] = data
    assert (await client.get("/readyz")).status_code == 200
    await assert_consistent(fault_settings, promised)


async def test_store_down_mid_upload_leaves_nothing(
    client: httpx.AsyncClient, fault_s3: Process, fault_settings: Settings
) -> None:
    data = big_image(14)

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), MIB):
            if start == 8 * MIB:  # one 5 MiB part is in the store by now
                assert open_uploads(fault_settings)
                fault_s3.stop()
            yield data[start : start + MIB]

    response = await client.post(
        "/v1/images", content=body(), headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 503
    fault_s3.start()
    await settle()
    await assert_consistent(fault_settings, {})


async def test_store_down_mid_streamed_put_leaves_nothing(
    client: httpx.AsyncClient, fault_s3: Process, fault_settings: Settings
) -> None:
    """A raw body whose Content-Length fits in one part streams into one PutObject: the
    store going away mid-body is a 503, and nothing of it is stored (no gc needed)."""
    data = big_image(3)  # < the 5 MiB part: one streamed PutObject
    before_rows, before_objects = (
        await rows(fault_settings),
        set(await _object_keys(fault_settings)),
    )

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 256 * 1024):
            if start == 2 * MIB:
                fault_s3.stop()
            yield data[start : start + 256 * 1024]

    response = await client.post(
        "/v1/images",
        content=body(),
        headers={"Content-Type": "image/jpeg", "Content-Length": str(len(data))},
    )
    assert response.status_code == 503
    assert response.json()["code"] == "storage_unavailable"
    fault_s3.start()
    assert await rows(fault_settings) == before_rows
    assert set(await _object_keys(fault_settings)) == before_objects
    await assert_consistent(fault_settings, {})


async def test_store_down_during_delete_is_finished_by_gc(
    client: httpx.AsyncClient, fault_s3: Process, fault_settings: Settings
) -> None:
    keep, doomed = jpeg(color=(9, 9, 9)), jpeg(color=(200, 0, 0))
    kept = (await post_raw(client, keep)).json()["id"]
    image_id = (await post_raw(client, doomed)).json()["id"]
    fault_s3.stop()
    deleted = await client.delete(f"/v1/images/{image_id}")
    assert deleted.status_code == 204  # gone for the client at once
    assert (await client.get(f"/v1/images/{image_id}")).status_code == 404
    table = await rows(fault_settings)
    assert table[image_id]["status"] == "deleting"
    fault_s3.start()
    await settle()
    report = await assert_consistent(fault_settings, {kept: keep})
    assert f"removed objects of deleted image {image_id}" in report


# --- the database goes away ------------------------------------------------------------------


async def test_database_down_before_upload_is_503_and_writes_nothing(
    client: httpx.AsyncClient, fault_db: MariaDB, fault_settings: Settings
) -> None:
    before = set(await _object_keys(fault_settings))
    fault_db.stop()
    refused = await post_raw(client, jpeg())
    assert refused.status_code == 503
    assert refused.json()["code"] == "database_unavailable"
    assert refused.headers["retry-after"]
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert "database" in ready.json()["detail"]
    assert set(await _object_keys(fault_settings)) == before

    fault_db.start()
    data = jpeg(color=(4, 5, 6))
    created = await post_raw(client, data)  # the pool recovers without a restart
    assert created.status_code == 201
    await assert_consistent(fault_settings, {created.json()["id"]: data})


class _AfterComplete:
    """Wraps the real S3 writer: runs a fault right after the object became durable."""

    def __init__(self, writer: ObjectWriter, fault: Callable[[], None]) -> None:
        self.writer, self.fault = writer, fault

    async def write(self, data: bytes) -> None:
        await self.writer.write(data)

    async def complete(self) -> None:
        await self.writer.complete()
        self.fault()

    async def abort(self) -> None:
        await self.writer.abort()


async def test_database_down_after_the_object_write(
    client: httpx.AsyncClient, fault_app: FastAPI, fault_db: MariaDB, fault_settings: Settings
) -> None:
    ingest = fault_app.state.runtime.uploads.ingest
    real_open = ingest.store.open_write

    async def open_write(key: str, *, content_type: str, size: int | None = None) -> ObjectWriter:
        writer = await real_open(key, content_type=content_type, size=size)
        return _AfterComplete(writer, fault_db.stop)

    ingest.store = _Patched(ingest.store, open_write=open_write)
    try:
        response = await post_raw(client, big_image(6))
    finally:
        ingest.store = ingest.store.inner
    assert response.status_code == 503
    fault_db.start()
    await settle()
    await assert_consistent(fault_settings, {})


class _Patched:
    def __init__(self, inner: Any, **overrides: Any) -> None:
        self.inner = inner
        self.overrides = overrides

    def __getattr__(self, name: str) -> Any:
        return self.overrides.get(name) or getattr(self.inner, name)


async def _object_keys(settings: Settings) -> list[str]:
    from tests.consistency import objects

    return list(objects(settings))


# --- real server processes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_auth(fault_settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_key(settings_env(fault_settings), 'faults')}"}


@pytest.fixture
def served(tmp_path: Path, fault_settings: Settings) -> Iterator[tuple[Process, str]]:
    process, url = start_imagesvc(tmp_path, settings_env(fault_settings), workers=2)
    yield process, url
    process.stop()


async def test_client_disconnect_mid_stream(
    served: tuple[Process, str], fault_settings: Settings, fault_auth: dict[str, str]
) -> None:
    _, url = served
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/images HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
        + f"Authorization: {fault_auth['Authorization']}\r\n".encode()
        + f"Content-Length: {64 * MIB}\r\n\r\n".encode()
        + jpeg()
        + os.urandom(12 * MIB)
    )
    await asyncio.sleep(0.5)
    sock.close()
    await settle()
    await assert_consistent(fault_settings, {})


async def test_client_disconnect_mid_streamed_put_leaves_nothing(
    served: tuple[Process, str], fault_settings: Settings, fault_auth: dict[str, str]
) -> None:
    """The client vanishes half way through a body streamed into one PutObject: the
    request to the store is cut short (S3 keeps nothing of a PutObject that did not get
    its Content-Length), the pending row goes, and nothing is left without gc."""
    _, url = served
    host, port = url.removeprefix("http://").split(":")
    before_objects = set(await _object_keys(fault_settings))
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/images HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
        + f"Authorization: {fault_auth['Authorization']}\r\n".encode()
        + f"Content-Length: {4 * MIB}\r\n\r\n".encode()
        + jpeg()
        + os.urandom(2 * MIB)
    )
    for _ in range(50):  # the pending row exists once the header was probed
        if any(r["status"] == "pending" for r in (await rows(fault_settings)).values()):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the upload never started")
    sock.close()
    for _ in range(100):
        if not any(r["status"] != "ready" for r in (await rows(fault_settings)).values()):
            break
        await asyncio.sleep(0.1)
    assert [r for r in (await rows(fault_settings)).values() if r["status"] != "ready"] == []
    assert set(await _object_keys(fault_settings)) == before_objects
    await assert_consistent(fault_settings, {})


async def test_sigkill_during_concurrent_uploads_loses_no_201(
    served: tuple[Process, str],
    fault_settings: Settings,
    fault_auth: dict[str, str],
    tmp_path: Path,
) -> None:
    process, url = served
    promised: dict[str, bytes] = {}

    async def one(index: int, client: httpx.AsyncClient) -> None:
        data = jpeg(color=(index, 7, 7)) + os.urandom((index % 4) * 3 * MIB)

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 256 * 1024):
                await asyncio.sleep(0.01 * (index % 5))
                yield data[start : start + 256 * 1024]

        try:
            response = await client.post(
                "/v1/images", content=body(), headers={"Content-Type": "image/jpeg"}
            )
        except httpx.HTTPError:
            return  # the server died under this one: no promise was made
        if response.status_code == 201:
            promised[response.json()["id"]] = data
            first_promise.set()

    first_promise = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=fault_auth) as client:
        uploads = [asyncio.create_task(one(i, client)) for i in range(16)]
        # Kill as soon as the first 201 is in (the large uploads are still streaming then),
        # not after a fixed delay: a loaded machine may need longer for that first one.
        await asyncio.wait_for(first_promise.wait(), 30)
        process.stop(signal.SIGKILL)
        await asyncio.gather(*uploads)
    assert promised, "some uploads should have finished before the kill"

    restarted, url = start_imagesvc(tmp_path, settings_env(fault_settings), workers=2)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=fault_auth) as client:
            for image_id, data in promised.items():
                got = await client.get(f"/v1/images/{image_id}/content", follow_redirects=True)
                assert got.content == data
        await settle()
        await assert_consistent(fault_settings, promised)
    finally:
        restarted.stop()


async def test_100_concurrent_uploads_across_two_workers_and_gc_alongside(
    served: tuple[Process, str], fault_settings: Settings, fault_auth: dict[str, str]
) -> None:
    _, url = served
    promised: dict[str, bytes] = {}
    gc_reports: list[str] = []

    async def one(index: int, client: httpx.AsyncClient) -> None:
        # Every tenth upload is multipart (11 MiB, 5 MiB parts) and stays open for seconds;
        # all outlive the lease, so only their heartbeats keep gc away from them.
        size = 11 * MIB if index % 10 == 0 else 64 * 1024 * (index % 8)
        data = jpeg(color=(index % 256, index // 256, 3)) + os.urandom(size)
        # The multipart ones stream for ~12 s, open in the store for the last ~7: several
        # gc runs (each a fresh `imagesvc gc` process, seconds apart) must meet them open,
        # however slow the machine is.
        step = max(len(data) // (60 if index % 10 == 0 else 24), 1)

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(data), step):
                await asyncio.sleep(0.2)
                yield data[start : start + step]

        response = await client.post(
            "/v1/images", content=body(), headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code == 201, response.text
        assert response.json()["byte_size"] == len(data)
        promised[response.json()["id"]] = data

    async def gc_alongside(done: asyncio.Event) -> None:
        from tests.consistency import run_gc

        while not done.is_set():
            gc_reports.append(await asyncio.to_thread(run_gc, fault_settings, "--grace", "0"))

    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=limits, headers=fault_auth
    ) as client:
        done = asyncio.Event()
        gc_task = asyncio.create_task(gc_alongside(done))
        await asyncio.gather(*(one(i, client) for i in range(100)))
        done.set()
        await gc_task
    assert len(promised) == 100
    skipped = [int(m) for r in gc_reports for m in re.findall(r"(\d+) in flight left alone", r)]
    assert sum(skipped) > 0, "gc should have met uploads in flight (and left them alone)"
    await assert_consistent(fault_settings, promised)
