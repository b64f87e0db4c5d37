"""End to end against real `imagesvc serve` processes over TCP: the lifecycle, a client
vanishing mid-upload, and memory staying flat during a 300 MiB streamed upload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from imagesvc.config import MIB
from tests.conftest import boto_client, mysql_url
from tests.samples import jpeg
from tests.services import (
    MariaDB,
    Process,
    create_key,
    s3_env,
    start_imagesvc,
)

BUCKET = "imagesvc-rclone"
PREFIX = "e2e/"


@pytest.fixture(scope="module")
def server(
    workdir: Path, mariadb: MariaDB | str, rclone: tuple[Process, str]
) -> Iterator[tuple[Process, str, dict[str, str]]]:
    _, endpoint = rclone
    env = {
        **s3_env(mysql_url(mariadb), endpoint, BUCKET),
        "IMAGESVC_S3_KEY_PREFIX": PREFIX,
        "IMAGESVC_S3_PART_SIZE": str(8 * MIB),
        "IMAGESVC_MAX_UPLOAD_BYTES": str(512 * MIB),
        "IMAGESVC_MAX_PIXELS": "50000000",
    }
    process, url = start_imagesvc(workdir, env)
    env["AUTH"] = f"Bearer {create_key(env, 'e2e')}"
    yield process, url, env
    process.stop()


def open_uploads(endpoint: str) -> list[str]:
    s3 = boto_client(endpoint)
    try:
        response = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=PREFIX)
    except s3.exceptions.NoSuchUpload:
        return []
    return [upload["Key"] for upload in response.get("Uploads", [])]


async def pending_rows(database_url: str) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT COUNT(*) FROM images WHERE status <> 'ready'"))
            return int(result.scalar_one())
    finally:
        await engine.dispose()


async def test_lifecycle_through_a_real_server(server: tuple[Process, str, Any]) -> None:
    _, url, env = server
    data = jpeg((320, 240))
    auth = {"Authorization": env["AUTH"]}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as client:
        assert (await client.get("/readyz")).json()["checks"] == {
            "database": "ok",
            "storage": "ok",
        }
        created = await client.post("/v1/images", files={"file": ("e2e.jpg", data, "image/jpeg")})
        assert created.status_code == 201, created.text
        image = created.json()
        assert (await client.get(image["links"]["self"])).json() == image
        listed = (await client.get("/v1/images", params={"limit": 100})).json()
        assert image["id"] in [i["id"] for i in listed["items"]]
        content = await client.get(image["links"]["content"], follow_redirects=True)
        assert content.status_code == 200
        assert content.content == data
        assert (await client.delete(image["links"]["self"])).status_code == 204
        assert (await client.get(image["links"]["self"])).status_code == 404


async def test_client_disconnect_mid_upload_leaves_nothing(
    server: tuple[Process, str, dict[str, str]], rclone: tuple[Process, str]
) -> None:
    _, url, env = server
    host, port = url.removeprefix("http://").split(":")
    before = await pending_rows(env["IMAGESVC_DATABASE_URL"])
    # Announce 100 MiB, send 20 MiB (two parts uploaded to S3), then vanish.
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/images HTTP/1.1\r\nHost: e2e\r\nContent-Type: image/jpeg\r\n"
        + f"Authorization: {env['AUTH']}\r\nContent-Length: {100 * MIB}\r\n\r\n".encode()
    )
    sock.sendall(jpeg())
    block = os.urandom(MIB)
    for _ in range(20):
        sock.sendall(block)
    await asyncio.sleep(0.5)
    assert open_uploads(rclone[1]), "the upload should be in flight before the disconnect"
    sock.close()

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if (
            not open_uploads(rclone[1])
            and await pending_rows(env["IMAGESVC_DATABASE_URL"]) == before
        ):
            break
        await asyncio.sleep(0.2)
    assert open_uploads(rclone[1]) == []
    assert await pending_rows(env["IMAGESVC_DATABASE_URL"]) == before


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)


async def test_300_mib_upload_keeps_server_memory_flat(
    server: tuple[Process, str, Any],
) -> None:
    process, url, env = server
    total_blocks = 300
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    head = jpeg((640, 480))

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(total_blocks):
            yield block

    digest.update(head)
    for _ in range(total_blocks):
        digest.update(block)

    auth = {"Authorization": env["AUTH"]}
    async with httpx.AsyncClient(base_url=url, timeout=300, headers=auth) as client:
        # Warm up (first request imports and allocates), then measure from the baseline.
        warm = await client.post(
            "/v1/images", content=jpeg(), headers={"Content-Type": "image/jpeg"}
        )
        await client.delete(warm.json()["links"]["self"])
        sampler = RssSampler(process.pid)
        baseline = sampler.peak
        sampler.start()
        try:
            created = await client.post(
                "/v1/images", content=body(), headers={"Content-Type": "image/jpeg"}
            )
        finally:
            sampler.stop.set()
            sampler.join()
        assert created.status_code == 201, created.text
        image = created.json()
        assert image["byte_size"] == len(head) + total_blocks * MIB
        assert image["sha256"] == digest.hexdigest()
        growth = sampler.peak - baseline
        print(f"server RSS: baseline {baseline / MIB:.1f} MiB, peak growth {growth / MIB:.1f} MiB")
        assert growth < 64 * MIB
        assert (await client.delete(image["links"]["self"])).status_code == 204


async def test_server_log_never_contains_keys_or_secrets(
    server: tuple[Process, str, dict[str, str]],
) -> None:
    process, url, env = server
    key = env["AUTH"].removeprefix("Bearer ")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await client.get("/v1/images", headers={"Authorization": env["AUTH"]})
        await client.get("/v1/images", headers={"Authorization": env["AUTH"] + "x"})
        await client.get("/v1/images/nope/content", headers={"Authorization": "Bearer isk_junk"})
    log = process.log_path.read_text()
    for secret in (key, key[len("isk_") + 17 :], env["IMAGESVC_S3_SECRET_ACCESS_KEY"]):
        assert secret not in log
