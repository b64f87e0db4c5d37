"""A store that ignores `Expect: 100-continue` and simply waits for the body (RFC 9110 lets a
server do that) still gets every upload at once. botocore asks for the interim 100 on every
body it sends; the S3 adapter drops the expectation (storage/s3.py `_without_expect`),
because a client waiting for a 100 that never comes and a server waiting for the body both
wait until the read timeout (rclone `serve s3` did so under racing PUTs and DELETEs).

The store here is a minimal HTTP/1.1 server on loopback: it reads the headers and exactly
Content-Length bytes, then answers 200 with an ETag, and never sends a 100."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from imagesvc.storage.s3 import S3ObjectStore, S3Options


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class PlainStore:
    """Answers every request once its whole body is in; records what it got."""

    requests: list[Received] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")
                method, path, _ = line.split(" ", 2)
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (f.partition(":") for f in fields if f)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Received(method, path, headers, body))
                writer.write(
                    b'HTTP/1.1 200 OK\r\nETag: "0123456789abcdef"\r\nContent-Length: 0\r\n\r\n'
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def plain_store() -> AsyncIterator[tuple[PlainStore, S3ObjectStore]]:
    store = PlainStore()
    server = await asyncio.start_server(store.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = S3ObjectStore(
        S3Options(
            bucket="plain",
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id="plain",
            secret_access_key="plain-secret",
            addressing_style="path",
            part_size=5 * 1024 * 1024,
        )
    )
    await adapter.start()
    try:
        yield store, adapter
    finally:
        await adapter.close()
        server.close()
        await server.wait_closed()


async def test_a_store_that_never_sends_100_continue_gets_puts_at_once(
    plain_store: tuple[PlainStore, S3ObjectStore],
) -> None:
    store, adapter = plain_store
    rendition = os.urandom(70_000)
    # A rendition (bytes), and an upload of declared length streamed as it arrives.
    await asyncio.wait_for(adapter.put_object("a", rendition, content_type="image/webp"), 10)
    streamed = os.urandom(300_000)
    writer = await adapter.open_write("b", content_type="image/jpeg", size=len(streamed))
    for start in range(0, len(streamed), 64_000):
        await writer.write(streamed[start : start + 64_000])
    assert await asyncio.wait_for(writer.complete(), 10) == len(streamed)
    puts = [r for r in store.requests if r.method == "PUT"]
    assert [r.body for r in puts] == [rendition, streamed]
    assert all("expect" not in r.headers for r in puts)
    assert all(r.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" for r in puts)
