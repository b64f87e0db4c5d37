"""Server memory per concurrent upload (issue #14): RSS growth of a real `imagesvc serve`
while N uploads are in flight at once, against the bytes those uploads hold by design.

Each scenario gets a fresh server process (SQLite + rclone `serve s3`, which checks SigV4),
is warmed up with one upload of each kind, has its peak RSS reset (`/proc/PID/clear_refs`),
and then runs N uploads whose bodies all stop just before their last 64 KiB until every
one of them has sent that much: the moment the most bytes are in flight at once. The
growth is the kernel's exact peak (VmHWM) minus the RSS before the batch.

"In flight by design" is what the formula in the README says an upload may hold:
min(size, part size) for an upload that fits in one part, and
(IMAGESVC_S3_UPLOAD_CONCURRENCY + 1) x part size for a multipart upload.

    .venv/bin/python bench/memory.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.services import (  # noqa: E402
    BIN,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    Process,
    create_key,
    start_imagesvc,
    start_rclone,
)

MIB = 1024 * 1024
PART = 8 * MIB
TAIL = 64 * 1024  # held back by every body until all bodies got this far
BUCKET = "memory"


@dataclass(frozen=True)
class Scenario:
    name: str
    uploads: int
    size: int
    form: bool  # multipart/form-data (file size unknown) rather than a raw body

    @property
    def parts(self) -> int:
        return -(-self.size // PART)

    def in_flight(self, concurrency: int) -> int:
        """Bytes one upload may hold by design (the README's formula)."""
        if self.parts == 1:
            return min(self.size, PART)
        return (concurrency + 1) * PART


SCENARIOS = [
    Scenario("16 x 6 MiB, raw body (Content-Length)", 16, 6 * MIB, form=False),
    Scenario("16 x 6 MiB, multipart form", 16, 6 * MIB, form=True),
    Scenario("4 x 3 parts (20 MiB), raw body", 4, 20 * MIB, form=False),
    Scenario("4 x 3 parts (20 MiB), multipart form", 4, 20 * MIB, form=True),
]


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


class Barrier:
    """Every body waits here before its tail, until all of them arrived."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.released = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.released.set()
        await self.released.wait()


async def held_body(payload: bytes, barrier: Barrier) -> AsyncIterator[bytes]:
    step = 256 * 1024
    cut = len(payload) - TAIL
    for start in range(0, cut, step):
        yield payload[start : min(start + step, cut)]
    await barrier.wait()
    await asyncio.sleep(1.0)  # let the server take every held byte in
    yield payload[cut:]


def form_payload(data: bytes, boundary: str) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="bench.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


async def run_batch(url: str, auth: str, scenario: Scenario, head: bytes) -> None:
    barrier = Barrier(scenario.uploads)
    limits = httpx.Limits(max_connections=scenario.uploads + 4)
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=limits, headers={"Authorization": auth}
    ) as client:

        async def one() -> None:
            data = head + os.urandom(scenario.size - len(head))
            if scenario.form:
                boundary = "benchboundary" + os.urandom(8).hex()
                payload = form_payload(data, boundary)
                content_type = f"multipart/form-data; boundary={boundary}"
            else:
                payload, content_type = data, "image/jpeg"
            response = await client.post(
                "/v1/images",
                content=held_body(payload, barrier),
                headers={"Content-Type": content_type, "Content-Length": str(len(payload))},
            )
            assert response.status_code == 201, response.text
            assert response.json()["byte_size"] == scenario.size

        await asyncio.gather(*(one() for _ in range(scenario.uploads)))


async def warm_up(url: str, auth: str, head: bytes) -> None:
    """Small uploads of each kind, so imports and first-use allocations are done. Not large
    ones: memory they freed stays resident in the allocator's heap, and the batch would
    reuse it unseen (a growth too small). The first multipart upload's own first-use cost
    (botocore loads the operations' models) is counted in the batch: the figures err high."""
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": auth}) as c:
        data = head + os.urandom(256 * 1024)
        for _ in range(2):
            raw = await c.post("/v1/images", content=data, headers={"Content-Type": "image/jpeg"})
            assert raw.status_code == 201, raw.text
            form = await c.post("/v1/images", files={"file": ("w.jpg", data, "image/jpeg")})
            assert form.status_code == 201, form.text


def measure(work: Path, endpoint: str, scenario: Scenario, concurrency: int) -> int:
    db = work / f"db-{os.urandom(4).hex()}.sqlite"
    env = {
        "IMAGESVC_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "IMAGESVC_STORAGE_BACKEND": "s3",
        "IMAGESVC_S3_BUCKET": BUCKET,
        "IMAGESVC_S3_ENDPOINT_URL": endpoint,
        "IMAGESVC_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "IMAGESVC_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "IMAGESVC_S3_ADDRESSING_STYLE": "path",
        "IMAGESVC_S3_PART_SIZE": str(PART),
        "IMAGESVC_S3_UPLOAD_CONCURRENCY": str(concurrency),
        "IMAGESVC_MAX_UPLOAD_BYTES": str(64 * MIB),
        "IMAGESVC_LOG_FORMAT": "json",
    }
    import subprocess

    subprocess.run(
        [str(BIN / "imagesvc"), "migrate"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    server, url = start_imagesvc(work, env)
    try:
        auth = f"Bearer {create_key(env, 'bench')}"
        head = jpeg_head()
        asyncio.run(warm_up(url, auth, head))
        before, _ = rss(server.pid)
        reset_peak(server.pid)
        asyncio.run(run_batch(url, auth, scenario, head))
        _, peak = rss(server.pid)
        return peak - before
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh servers per scenario")
    parser.add_argument("--concurrency", type=int, default=1, help="IMAGESVC_S3_UPLOAD_CONCURRENCY")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagesvc-memory-") as tmp:
        work = Path(tmp)
        rclone, endpoint = start_rclone(work, work / "s3", BUCKET)
        try:
            print(f"part size {PART // MIB} MiB, upload concurrency {args.concurrency}")
            print(
                "| scenario | in flight by design | RSS growth (median of "
                f"{args.repeat}) | per upload | growth / in flight |"
            )
            print("|---|---:|---:|---:|---:|")
            for scenario in SCENARIOS:
                growths = [
                    measure(work, endpoint, scenario, args.concurrency) for _ in range(args.repeat)
                ]
                growth = statistics.median(growths)
                in_flight = scenario.uploads * scenario.in_flight(args.concurrency)
                print(
                    f"| {scenario.name} | {in_flight / MIB:.0f} MiB | {growth / MIB:.1f} MiB "
                    f"({', '.join(f'{g / MIB:.0f}' for g in growths)}) | "
                    f"{growth / scenario.uploads / MIB:.1f} MiB | {growth / in_flight:.2f}x |",
                    flush=True,
                )
        finally:
            rclone.stop()


if __name__ == "__main__":
    _ = Process  # the helpers' process type, for readers of this script
    main()
