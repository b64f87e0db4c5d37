"""Server memory per concurrent upload (issue #14): RSS growth of a real `imagesvc serve`
while N uploads are in flight at once, against the bytes those uploads hold by design.

Each scenario gets a fresh server process (SQLite + rclone `serve s3`, which checks SigV4),
is warmed up with small uploads of each kind, has its peak RSS reset (`/proc/PID/clear_refs`),
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
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.memory import MIB, Batch, growth_during, warm_up  # noqa: E402
from tests.services import (  # noqa: E402
    BIN,
    create_key,
    s3_env,
    start_imagesvc,
    start_rclone,
)

PART = 8 * MIB
BUCKET = "memory"

SCENARIOS = [
    Batch("16 x 6 MiB, raw body (Content-Length)", 16, 6 * MIB, form=False),
    Batch("16 x 6 MiB, multipart form", 16, 6 * MIB, form=True),
    Batch("4 x 3 parts (20 MiB), raw body", 4, 20 * MIB, form=False),
    Batch("4 x 3 parts (20 MiB), multipart form", 4, 20 * MIB, form=True),
]


def measure(work: Path, endpoint: str, scenario: Batch, concurrency: int) -> int:
    db = work / f"db-{os.urandom(4).hex()}.sqlite"
    env = {
        **s3_env(f"sqlite+aiosqlite:///{db}", endpoint, BUCKET),
        "IMAGESVC_S3_PART_SIZE": str(PART),
        "IMAGESVC_S3_UPLOAD_CONCURRENCY": str(concurrency),
        "IMAGESVC_MAX_UPLOAD_BYTES": str(64 * MIB),
        "IMAGESVC_LOG_FORMAT": "json",
    }
    subprocess.run(
        [str(BIN / "imagesvc"), "migrate"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    server, url = start_imagesvc(work, env)
    try:
        auth = f"Bearer {create_key(env, 'bench')}"
        asyncio.run(warm_up(url, auth))
        return asyncio.run(growth_during(server.pid, url, auth, scenario))
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
                in_flight = scenario.in_flight(PART, args.concurrency)
                print(
                    f"| {scenario.name} | {in_flight / MIB:.0f} MiB | {growth / MIB:.1f} MiB "
                    f"({', '.join(f'{g / MIB:.0f}' for g in growths)}) | "
                    f"{growth / scenario.uploads / MIB:.1f} MiB | {growth / in_flight:.2f}x |",
                    flush=True,
                )
        finally:
            rclone.stop()


if __name__ == "__main__":
    main()
