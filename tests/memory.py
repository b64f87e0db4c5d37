"""Measuring a server process's memory while uploads are in flight (issue #14), shared by
tests/system/test_upload_memory.py and bench/memory.py.

N uploads run at once, and every body stops just before its last 64 KiB until all of them
got that far: the moment the most bytes are in flight together. The growth is the kernel's
exact peak RSS of the process (VmHWM, reset through /proc/PID/clear_refs) minus its RSS
before the batch."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

MIB = 1024 * 1024
TAIL = 64 * 1024  # held back by every body until all bodies got this far


@dataclass(frozen=True)
class Batch:
    name: str
    uploads: int
    size: int
    form: bool  # multipart/form-data (file size unknown) rather than a raw body

    def in_flight(self, part_size: int, concurrency: int) -> int:
        """Bytes the whole batch may hold by design (the README's formula)."""
        if self.size <= part_size:
            return self.uploads * self.size
        return self.uploads * (concurrency + 1) * part_size


def jpeg_head() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 120, 150)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(value.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # "reset the peak RSS" (Linux >= 4.0)


class _Barrier:
    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.released = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.released.set()
        await self.released.wait()


async def _held_body(payload: bytes, barrier: _Barrier) -> AsyncIterator[bytes]:
    step = 256 * 1024
    cut = len(payload) - TAIL
    for start in range(0, cut, step):
        yield payload[start : min(start + step, cut)]
    await barrier.wait()
    await asyncio.sleep(1.0)  # let the server take every held byte in
    yield payload[cut:]


def _form(data: bytes, boundary: str) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="load.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


async def warm_up(url: str, auth: str) -> None:
    """Small uploads of each kind, so imports and first-use allocations are done. Not large
    ones: memory they freed stays resident in the allocator's heap, and the batch would
    reuse it unseen. (The first multipart upload's own first-use cost is counted in the
    batch: the figures err high.)"""
    data = jpeg_head() + os.urandom(256 * 1024)
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": auth}) as c:
        for _ in range(2):
            raw = await c.post("/v1/images", content=data, headers={"Content-Type": "image/jpeg"})
            assert raw.status_code == 201, raw.text
            form = await c.post("/v1/images", files={"file": ("w.jpg", data, "image/jpeg")})
            assert form.status_code == 201, form.text


async def _run(url: str, auth: str, batch: Batch) -> None:
    barrier = _Barrier(batch.uploads)
    head = jpeg_head()
    limits = httpx.Limits(max_connections=batch.uploads + 4)
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=limits, headers={"Authorization": auth}
    ) as client:

        async def one() -> None:
            data = head + os.urandom(batch.size - len(head))
            if batch.form:
                boundary = "loadboundary" + os.urandom(8).hex()
                payload = _form(data, boundary)
                content_type = f"multipart/form-data; boundary={boundary}"
            else:
                payload, content_type = data, "image/jpeg"
            response = await client.post(
                "/v1/images",
                content=_held_body(payload, barrier),
                headers={"Content-Type": content_type, "Content-Length": str(len(payload))},
            )
            assert response.status_code == 201, response.text
            assert response.json()["byte_size"] == batch.size

        await asyncio.gather(*(one() for _ in range(batch.uploads)))


async def growth_during(pid: int, url: str, auth: str, batch: Batch) -> int:
    """Peak RSS growth of process `pid` while `batch` runs against `url`."""
    before, _ = rss(pid)
    reset_peak(pid)
    await _run(url, auth, batch)
    _, peak = rss(pid)
    return peak - before
