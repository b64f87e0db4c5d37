"""What CORS costs a request: the in-process ASGI call of a replayed content redirect (the
hottest answer the service has), with `IMAGESVC_CORS_ORIGINS` unset, set but the request
has no `Origin` (server-to-server calls, same-origin `<img>`), and set with an allowed
`Origin` (a page's fetch). Same process, same image, rounds interleaved; medians.

    .venv/bin/python bench/cors_overhead.py [--requests 2000] [--rounds 25]

Starts rclone `serve s3` (redirect mode needs an S3 to sign for) and a SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alembic import command  # noqa: E402
from imagesvc.app import create_app  # noqa: E402
from imagesvc.cli import alembic_config  # noqa: E402
from imagesvc.config import Settings  # noqa: E402
from tests.samples import jpeg  # noqa: E402
from tests.services import S3_ACCESS_KEY, S3_SECRET_KEY, start_rclone  # noqa: E402

ORIGIN = "https://app.example.com"


async def main(requests: int, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="imagesvc-cors-bench-"))
    rclone, endpoint = start_rclone(work, work / "s3", "bench")
    database = f"sqlite+aiosqlite:///{work / 'bench.db'}"
    await asyncio.to_thread(command.upgrade, alembic_config(database), "head")
    base = {
        "database_url": database,
        "storage_backend": "s3",
        "s3_bucket": "bench",
        "s3_endpoint_url": endpoint,
        "s3_access_key_id": S3_ACCESS_KEY,
        "s3_secret_access_key": S3_SECRET_KEY,
        "s3_addressing_style": "path",
        # Long enough that no kept answer expires inside a timed round.
        "read_cache_seconds": 60,
        "auth_cache_seconds": 300,
    }
    try:
        async with AsyncExitStack() as stack:
            apps = {}
            for name, extra in (("off", {}), ("on", {"cors_origins": ORIGIN})):
                app = create_app(Settings(**base, **extra))  # type: ignore[arg-type]
                await stack.enter_async_context(app.router.lifespan_context(app))
                apps[name] = app
            key = (await apps["off"].state.runtime.keys.create("bench")).key
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=apps["off"]), base_url="http://bench"
            ) as client:
                created = await client.post(
                    "/v1/images",
                    content=jpeg((64, 48)),
                    headers={"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"},
                )
            image_id = created.json()["id"]
            cases: dict[str, tuple[Any, list[tuple[bytes, bytes]]]] = {}
            common = [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())]
            cases["CORS off"] = (apps["off"], common)
            cases["CORS on, no Origin"] = (apps["on"], common)
            cases["CORS on, allowed Origin"] = (apps["on"], [*common, (b"origin", ORIGIN.encode())])
            runners = {
                name: call(app, f"/v1/images/{image_id}/content", headers)
                for name, (app, headers) in cases.items()
            }
            results: dict[str, list[float]] = {name: [] for name in runners}
            with quiet_stderr():  # one request line per request: not what we measure
                for runner in runners.values():  # computed once, then replayed
                    for _ in range(3):
                        status = await runner()
                        assert status == 302, status
                for _ in range(rounds):
                    for name, runner in runners.items():
                        started = time.perf_counter()
                        for _ in range(requests):
                            await runner()
                        results[name].append((time.perf_counter() - started) / requests * 1e6)
    finally:
        rclone.stop()
    baseline = statistics.median(results["CORS off"])
    fastest = min(results["CORS off"])
    print(
        f"In-process ASGI call of a replayed content redirect, {requests} requests x {rounds} rounds"
    )
    print()
    print(
        "| case | µs per request (median) | range over rounds | median vs off "
        "| fastest round vs off |"
    )
    print("|---|---:|---|---:|---:|")
    for name, values in results.items():
        median = statistics.median(values)
        low, high = min(values), max(values)
        print(
            f"| {name} | {median:.2f} | {low:.1f} to {high:.1f} | {median / baseline:.3f}x "
            f"| {low / fastest:.3f}x |"
        )


def call(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> Callable[[], Any]:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def run() -> int:
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": list(headers),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        return status

    return run


class quiet_stderr:
    """The request lines (stdout or stderr, by log format) go to /dev/null meanwhile."""

    def __enter__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *_: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2_000, help="per case and round")
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
