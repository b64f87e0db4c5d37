"""What the S3 adapter's requests look like to a store (storage/s3.py):

- A store that ignores `Expect: 100-continue` and simply waits for the body (RFC 9110 lets
  a server do that) still gets every upload at once. botocore asks for the interim 100 on
  every body it sends; the adapter drops the expectation (`_without_expect`), because a
  client waiting for a 100 that never comes and a server waiting for the body both wait
  until the read timeout (rclone `serve s3` did so under racing PUTs and DELETEs).
- Bodies held in memory are payload-signed (the store can check their SHA-256) only where
  nothing else protects them: plain http to another host; on loopback (and over https)
  they go UNSIGNED-PAYLOAD, as streamed bodies always do (`held_client`).

The store here is a minimal HTTP/1.1 server: it reads the headers and exactly
Content-Length bytes, then answers 200 with an ETag, and never sends a 100."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from imagesvc.storage.s3 import S3ObjectStore, S3Options, transport_protects


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


def network_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one: a UDP socket
    "connected" to a documentation address picks the outgoing interface, sending nothing."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            address: str = probe.getsockname()[0]
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.fixture(params=["loopback", "network"])
async def plain_store(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[PlainStore, S3ObjectStore]]:
    host = "127.0.0.1" if request.param == "loopback" else network_address()
    if host is None:
        pytest.skip("this machine has no network address besides loopback")
    store = PlainStore()
    server = await asyncio.start_server(store.handle, host, 0)
    port = server.sockets[0].getsockname()[1]
    adapter = S3ObjectStore(
        S3Options(
            bucket="plain",
            endpoint_url=f"http://{host}:{port}",
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


async def test_held_bodies_are_payload_signed_only_where_the_transport_does_not_protect_them(
    plain_store: tuple[PlainStore, S3ObjectStore],
) -> None:
    store, adapter = plain_store
    rendition, streamed = os.urandom(50_000), os.urandom(200_000)
    await adapter.put_object("a", rendition, content_type="image/webp")
    writer = await adapter.open_write("b", content_type="image/jpeg", size=len(streamed))
    await writer.write(streamed)
    await writer.complete()
    held, piped = (r for r in store.requests if r.method == "PUT")
    protected = transport_protects(adapter.options.endpoint_url)
    assert protected == adapter.options.endpoint_url.startswith("http://127.")  # type: ignore[union-attr]
    expected = "UNSIGNED-PAYLOAD" if protected else hashlib.sha256(rendition).hexdigest()
    assert held.headers["x-amz-content-sha256"] == expected
    # A body still arriving cannot be hashed before it is sent: always unsigned.
    assert piped.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"


@pytest.mark.parametrize(
    ("endpoint", "protected"),
    [
        (None, True),  # AWS itself: https
        ("https://minio.internal:9000", True),
        ("http://127.0.0.1:9000", True),
        ("http://[::1]:9000", True),
        ("http://localhost:9000", True),
        ("http://minio:9000", False),  # the compose file's MinIO
        ("http://10.0.0.5:9000", False),
    ],
)
def test_which_endpoints_protect_bodies_by_themselves(
    endpoint: str | None, protected: bool
) -> None:
    assert transport_protects(endpoint) is protected
