"""Memory per concurrent upload (issue #14), measured on a real `imagesvc serve` against
rclone's S3 (which checks SigV4): the server's RSS growth while N uploads are in flight
at once stays within a generous bound of the bytes those uploads hold by design (the
README's formula). Before the uploads stopped copying their bytes, 16 x 6 MiB grew the
server by ~3x the bytes in flight; bench/memory.py prints the exact figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import mysql_url
from tests.memory import MIB, Batch, growth_during, warm_up
from tests.services import (
    MariaDB,
    Process,
    create_key,
    s3_env,
    start_imagesvc,
)

PART = 8 * MIB
BOUND = 1.5  # x the bytes in flight by design; measured ~1.05x (16 small), ~0.9x (3 parts)


@pytest.fixture
def fresh_server(
    tmp_path: Path, mariadb: MariaDB | str, rclone: tuple[Process, str]
) -> Iterator[tuple[Process, str, str]]:
    """A server of its own per test: memory a previous batch freed stays resident in the
    allocator's heap and would hide this batch's growth."""
    _, endpoint = rclone
    env = {
        **s3_env(mysql_url(mariadb), endpoint, "imagesvc-rclone"),
        "IMAGESVC_S3_KEY_PREFIX": "memory/",
        "IMAGESVC_S3_PART_SIZE": str(PART),
        "IMAGESVC_MAX_UPLOAD_BYTES": str(64 * MIB),
    }
    process, url = start_imagesvc(tmp_path, env)
    try:
        yield process, url, f"Bearer {create_key(env, 'memory')}"
    finally:
        process.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    "batch",
    [
        Batch("16 raw uploads below the part size", 16, 6 * MIB, form=False),
        Batch("16 form uploads below the part size", 16, 6 * MIB, form=True),
        Batch("4 raw uploads of 3 parts", 4, 20 * MIB, form=False),
    ],
    ids=lambda batch: batch.name.replace(" ", "-"),
)
async def test_server_memory_per_concurrent_upload(
    fresh_server: tuple[Process, str, str], batch: Batch
) -> None:
    process, url, auth = fresh_server
    await warm_up(url, auth)
    growth = await growth_during(process.pid, url, auth, batch)
    in_flight = batch.in_flight(PART, concurrency=1)
    print(f"{batch.name}: RSS growth {growth / MIB:.1f} MiB for {in_flight / MIB:.0f} MiB")
    assert growth <= BOUND * in_flight
