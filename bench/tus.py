"""Resumable uploads (tus) against a direct upload of the same bytes, on this machine.

Starts its own MariaDB and rclone `serve s3` on loopback (bench/run.py's helpers), then:
1. 100 MiB through `PATCH /v1/uploads/{id}` in 8 MiB and in 1 MiB chunks (one PATCH after
   the other, as tus clients send them; the last one completes the image), against the
   same bytes uploaded with aioboto3's `upload_fileobj` to the same S3 (run.py's baseline,
   measured in the same run, interleaved; target for 8 MiB chunks ≥ 0.85x, issue #19);
2. the server's RSS growth during a 400 MiB tus upload in 8 MiB chunks (≤ 64 MiB).
Writes its section of BENCHMARKS.md (between the `tus` markers; the rest is left alone).
bench/run.py calls `measure` too, inside its own services, and writes the same section.

    .venv/bin/python bench/tus.py [--quick] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from run import (
    MIB,
    PART,
    imagesvc_env,
    jpeg,
    machine,
    rounds_text,
    services,
    upload_direct,
)
from variants import PeakRss

from tests.services import create_key, start_imagesvc

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- tus:begin -->", "<!-- tus:end -->"
TUS = {"Tus-Resumable": "1.0.0"}


async def upload_tus(url: str, auth: str, payload: bytes, chunk: int) -> float:
    headers = {**TUS, "Authorization": auth}
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers) as client:
        started = time.perf_counter()
        created = await client.post("/v1/uploads", headers={"Upload-Length": str(len(payload))})
        created.raise_for_status()
        location = created.headers["location"]
        offset = 0
        while offset < len(payload):
            answer = await client.patch(
                location,
                content=payload[offset : offset + chunk],
                headers={
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            answer.raise_for_status()
            offset = int(answer.headers["upload-offset"])
        elapsed = time.perf_counter() - started
        image_id = answer.headers["image-id"]
        await client.delete(f"/v1/images/{image_id}")
    return elapsed


@dataclass
class TusResult:
    section: str  # without the markers
    ratio: float  # tus in 8 MiB chunks vs direct: median of the rounds' ratios
    ratios: list[float]  # the same, per round
    rss_growth_mb: float  # during a 400 MiB tus upload in 8 MiB chunks


def measure(rounds: int, env: dict[str, str], endpoint: str, work: Path) -> TusResult:
    """The tus measurements against an imagesvc started here, on the caller's MariaDB and
    S3 (`env` from run.imagesvc_env, `endpoint` that S3)."""
    payload = jpeg((640, 480)) + os.urandom(100 * MIB)
    big = payload[: 12 * MIB] + os.urandom(400 * MIB - 12 * MIB)
    server, url = start_imagesvc(work, env)
    auth = f"Bearer {create_key(env, 'bench-tus')}"
    try:
        times: dict[str, list[float]] = {"direct": [], "sequential": [], "8": [], "1": []}
        for _ in range(rounds):  # interleaved: each round measures all four
            times["direct"].append(asyncio.run(upload_direct(endpoint, payload)))
            times["sequential"].append(asyncio.run(upload_direct(endpoint, payload, concurrency=1)))
            times["8"].append(asyncio.run(upload_tus(url, auth, payload, 8 * MIB)))
            times["1"].append(asyncio.run(upload_tus(url, auth, payload, MIB)))
        sampler = PeakRss(server.pid)
        sampler.start()
        asyncio.run(upload_tus(url, auth, big, 8 * MIB))
        sampler.stop.set()
        sampler.join()
        growth = (sampler.peak - sampler.baseline) / MIB
    finally:
        server.stop()
    rate = {k: len(payload) / MIB / statistics.median(v) for k, v in times.items()}

    def vs(path: str, baseline: str = "direct") -> list[float]:
        # Same bytes in both: a round's throughput ratio is the inverse ratio of its times.
        return [b / t for t, b in zip(times[path], times[baseline], strict=True)]

    eight_all, one_all, sequential_all = vs("8"), vs("1"), vs("sequential")
    eight_seq_all = vs("8", "sequential")
    eight, one = statistics.median(eight_all), statistics.median(one_all)
    sequential, eight_seq = statistics.median(sequential_all), statistics.median(eight_seq_all)
    section = (
        "## 7. Resumable uploads (tus; bench/tus.py)\n\n"
        f"Machine: {machine()}. rclone `serve s3`, {PART // MIB} MiB parts, 100 MiB image; "
        "tus chunks are PATCHed one after the other and the last one completes the image "
        "(the store's list of parts, assembly, pending -> ready; one process served every PATCH, "
        "so size, sha256 and frames were measured on the way in). Each round measures all "
        "four paths; a ratio is the median of the rounds' ratios.\n\n"
        f"| path | MiB/s (median of {rounds}) | vs direct |\n|---|---:|---:|\n"
        f"| direct aioboto3 `upload_fileobj` (concurrency 2) | {rate['direct']:.1f} | 1.00x |\n"
        f"| direct aioboto3, concurrency 1 (parts one after the other) | "
        f"{rate['sequential']:.1f} | {sequential:.2f}x |\n"
        f"| tus, 8 MiB chunks | {rate['8']:.1f} | "
        f"**{eight:.2f}x**{rounds_text(eight_all, '.2f')} (target ≥ 0.85x) |\n"
        f"| tus, 1 MiB chunks (each parked in the store until a part is full) | "
        f"{rate['1']:.1f} | {one:.2f}x |\n\n"
        f"tus in 8 MiB chunks vs the sequential direct upload: **{eight_seq:.2f}x**"
        f"{rounds_text(eight_seq_all, '.2f')}. Each "
        "part whose size is known in advance (a PATCH with Content-Length) is streamed to "
        "the store while its bytes arrive: one UploadPart with an unsigned payload, fed the "
        "parked tail and then the body, so receiving and storing overlap inside a PATCH. "
        "What is left per PATCH is serial: the lease claim before the body, the store's "
        "answer to the last byte, and the commit before the 204 (a tus client sends the "
        "next chunk only after it). 1 MiB chunks are parked as tail fragments (one "
        "object per PATCH holding only its own bytes) until 5 MiB make a part, then read "
        "back once, into it; what is left of them is the per-PATCH claim, body and commit.\n\n"
        f"Server RSS during a 400 MiB tus upload in 8 MiB chunks: before "
        f"{sampler.baseline / MIB:.0f} MiB, peak {sampler.peak / MIB:.0f} MiB, "
        f"**growth {growth:.1f} MiB** (target ≤ 64 MiB).\n"
    )
    return TusResult(section, eight, eight_all, growth)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagesvc-bench-tus-"))
    with services(work) as (database, endpoint):
        env = imagesvc_env(database, endpoint)
        result = measure(1 if args.quick else 3, env, endpoint, work)
    section = f"{BEGIN}\n{result.section}{END}\n"
    print(section)
    write_section(Path(args.out), section)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        marker = "## What was profiled"
        if marker in text:
            before, rest = text.split(marker, 1)
            text = before + section + "\n" + marker + rest
        else:
            text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
