"""The invariant of SPEC §4, checked from outside after `imagesvc gc --grace 0`: every object
has a ready row, every ready row has its object with the recorded sha256, no multipart upload
is open, nothing else is left in the database, and every image a client got a 201 for is
still there with its bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from imagesvc.config import Settings
from tests.conftest import boto_client

BIN = Path(sys.executable).parent


def settings_env(settings: Settings) -> dict[str, str]:
    env = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"IMAGESVC_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return env


def run_gc(settings: Settings, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "imagesvc"), "gc", *args],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def rows(settings: Settings) -> dict[str, dict[str, Any]]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text("SELECT id, status, storage_key, sha256, byte_size FROM images")
            )
            return {row.id: dict(row._mapping) for row in result}
    finally:
        await engine.dispose()


def objects(settings: Settings) -> dict[str, bytes]:
    s3 = boto_client(settings.s3_endpoint_url or "")
    found: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.s3_bucket, Prefix=settings.s3_key_prefix
    ):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=settings.s3_bucket, Key=item["Key"])["Body"].read()
            found[item["Key"]] = body
    return found


def open_uploads(settings: Settings) -> list[str]:
    s3 = boto_client(settings.s3_endpoint_url or "")
    try:
        response = s3.list_multipart_uploads(
            Bucket=settings.s3_bucket, Prefix=settings.s3_key_prefix
        )
    except s3.exceptions.NoSuchUpload:
        return []
    return [upload["Key"] for upload in response.get("Uploads", [])]


async def assert_consistent(settings: Settings, promised: Mapping[str, bytes]) -> str:
    """Run gc, then check the invariant. `promised`: image id -> bytes of every 201."""
    report = run_gc(settings, "--grace", "0")
    table = await rows(settings)
    stored = objects(settings)
    not_ready = {i: r["status"] for i, r in table.items() if r["status"] != "ready"}
    assert not_ready == {}, f"rows left behind: {not_ready}\n{report}"
    keys_of_rows = {r["storage_key"]: i for i, r in table.items()}
    assert set(stored) == set(keys_of_rows), (
        f"objects without rows: {set(stored) - set(keys_of_rows)}; "
        f"rows without objects: {set(keys_of_rows) - set(stored)}\n{report}"
    )
    for key, image_id in keys_of_rows.items():
        data = stored[key]
        assert hashlib.sha256(data).hexdigest() == table[image_id]["sha256"], image_id
        assert len(data) == table[image_id]["byte_size"], image_id
    assert open_uploads(settings) == [], report
    for image_id, data in promised.items():
        assert image_id in table, f"a 201 was lost: {image_id}"
        assert stored[table[image_id]["storage_key"]] == data
    return report
