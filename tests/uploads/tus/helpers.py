"""tus requests as a test sends them through httpx (the real clients, tuspy and
tus-js-client, are driven in tests/system/test_tus_clients.py)."""

from __future__ import annotations

import base64
import hashlib
import os

import httpx

from imagesvc.config import MIB
from tests.samples import jpeg

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = {**TUS, "Content-Type": "application/offset+octet-stream"}


def image_of(size: int, *, seed: int = 1) -> bytes:
    """A JPEG of exactly `size` bytes (random bytes after the image: the probe has what it
    needs in the first kilobyte, and the tail makes every byte count)."""
    head = jpeg(color=(seed % 256, 40, 90))
    return head + os.urandom(size - len(head))


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def create(
    client: httpx.AsyncClient, length: int | None, **headers: str
) -> tuple[str, httpx.Response]:
    sent = {**TUS, **headers}
    if length is None:
        sent["Upload-Defer-Length"] = "1"
    else:
        sent["Upload-Length"] = str(length)
    response = await client.post("/v1/uploads", headers=sent)
    assert response.status_code == 201, response.text
    return response.headers["location"], response


async def patch(
    client: httpx.AsyncClient, url: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return await client.patch(
        url, content=data, headers={**CHUNK, "Upload-Offset": str(offset), **headers}
    )


async def head(client: httpx.AsyncClient, url: str) -> httpx.Response:
    return await client.head(url, headers=TUS)


async def send_all(
    client: httpx.AsyncClient, url: str, data: bytes, chunk: int, *, start: int = 0
) -> httpx.Response:
    """PATCH `data[start:]` in chunks of `chunk` bytes; the last answer."""
    offset = start
    response = None
    while offset < len(data):
        response = await patch(client, url, offset, data[offset : offset + chunk])
        assert response.status_code == 204, response.text
        assert int(response.headers["upload-offset"]) == min(offset + chunk, len(data))
        offset = int(response.headers["upload-offset"])
    assert response is not None
    return response


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["MIB"]
