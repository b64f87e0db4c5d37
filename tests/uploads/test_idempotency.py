"""Idempotency-Key on uploads (SPEC §4): same request -> same response and nothing new;
a different request with the same key -> 409; concurrent duplicates -> exactly one image."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from imagesvc.images.models import IdempotencyRecord
from tests.api import post_raw
from tests.conftest import Inspector, client_for
from tests.samples import jpeg


async def post(
    client: httpx.AsyncClient, data: bytes | AsyncIterator[bytes], key: str, name: str = "a.jpg"
) -> httpx.Response:
    return await post_raw(client, data, name, headers={"Idempotency-Key": key})


async def test_same_request_same_response_nothing_new(
    client: httpx.AsyncClient, inspector: Inspector, owner: str
) -> None:
    data = jpeg(color=(10, 20, 30))
    first = await post(client, data, "key-1")
    assert first.status_code == 201
    keys = inspector.keys()
    again = await post(client, data, "key-1")
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await inspector.rows(owner) == 1
    assert inspector.keys() == keys

    # The replay is the first response even after the image changed or went away.
    await client.delete(first.json()["links"]["self"])
    after_delete = await post(client, data, "key-1")
    assert after_delete.status_code == 201
    assert after_delete.json() == first.json()


@pytest.mark.parametrize("change", ["bytes", "filename"])
async def test_different_request_same_key_is_409(
    client: httpx.AsyncClient, inspector: Inspector, owner: str, change: str
) -> None:
    data = jpeg(color=(1, 1, 1))
    assert (await post(client, data, "key-2")).status_code == 201
    keys = inspector.keys()
    other = jpeg(color=(2, 2, 2)) if change == "bytes" else data
    refused = await post(client, other, "key-2", "b.jpg" if change == "filename" else "a.jpg")
    assert refused.status_code == 409
    assert refused.json()["code"] == "idempotency_key_reused"
    assert refused.headers["content-type"] == "application/problem+json"
    assert await inspector.rows(owner) == 1
    assert inspector.keys() == keys


async def test_concurrent_duplicates_create_exactly_one_image(
    client: httpx.AsyncClient, inspector: Inspector, owner: str
) -> None:
    data = jpeg((400, 300))

    async def slow() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 512):
            await asyncio.sleep(0.005)
            yield data[start : start + 512]

    responses = await asyncio.gather(*(post(client, slow(), "key-3") for _ in range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == "idempotency_key_in_progress"
            assert response.headers["retry-after"]
    ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1
    assert await inspector.rows(owner) == 1
    # Once the first finished, a retry is a replay.
    retry = await post(client, data, "key-3")
    assert retry.status_code == 201
    assert retry.json()["id"] in ids


async def test_keys_are_scoped_to_the_owner(app: FastAPI, client: httpx.AsyncClient) -> None:
    data = jpeg()
    mine = (await post(client, data, "shared-key")).json()
    async with client_for(app, "another-owner-" + mine["id"]) as other:
        theirs = await post(other, data, "shared-key")
    assert theirs.status_code == 201
    assert theirs.json()["id"] != mine["id"]
    assert "idempotent-replayed" not in theirs.headers


async def test_a_failed_upload_releases_its_key(client: httpx.AsyncClient, owner: str) -> None:
    refused = await post(client, b"<html>not an image</html>", "key-4")
    assert refused.status_code == 415
    accepted = await post(client, jpeg(), "key-4")
    assert accepted.status_code == 201


@pytest.mark.parametrize("key", ["", "x" * 256, "spaces are not allowed", "clé"])
async def test_malformed_keys_are_422(client: httpx.AsyncClient, key: str) -> None:
    response = await client.post(
        "/v1/images",
        content=jpeg(),
        headers={"Content-Type": "image/jpeg", "Idempotency-Key": key.encode().decode("latin-1")}
        if key.isascii()
        else [(b"Idempotency-Key", key.encode())],
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_parameter"


async def test_keys_expire_after_24_hours(
    app: FastAPI, client: httpx.AsyncClient, owner: str
) -> None:
    first = (await post(client, jpeg(), "key-5")).json()
    async with app.state.runtime.db.engine.begin() as conn:
        await conn.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == "key-5")
            .values(created_at=datetime.now(UTC) - timedelta(hours=25))
        )
    again = await post(client, jpeg(), "key-5")
    assert again.status_code == 201
    assert again.json()["id"] != first["id"]
