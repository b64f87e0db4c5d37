"""`ObjectStore.open_part`, a multipart upload's part streamed while its bytes arrive, on
every backend (moto and rclone over HTTP, with UNSIGNED-PAYLOAD; the local directory): the
same part, ETag and replacement rules as `upload_part`, and nothing stored by a part given
up half way."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
from fastapi import FastAPI

from imagesvc.config import MIB
from imagesvc.storage.port import ObjectMissing, ObjectStore, PartsMismatch
from imagesvc.storage.s3 import S3ObjectStore
from imagesvc.storage.s3_writer import part_sizes
from tests.conftest import Inspector


def store_of(app: FastAPI) -> ObjectStore:
    store: ObjectStore = app.state.runtime.store
    return store


def key_of(app: FastAPI) -> str:
    return app.state.runtime.resumable.layout.original(f"img_parts{uuid.uuid4().hex[:12]}")  # type: ignore[no-any-return]


async def stream_part(
    store: ObjectStore, key: str, upload_id: str, number: int, data: bytes, piece: int
) -> str:
    part = await store.open_part(key, upload_id, number, len(data))
    try:
        for start in range(0, len(data), piece):
            await part.write(data[start : start + piece])
        return await part.finish()
    except BaseException:
        await part.abort()
        raise


async def test_streamed_parts_assemble_byte_identical_with_md5_etags(
    app: FastAPI, inspector: Inspector
) -> None:
    store, key = store_of(app), key_of(app)
    first, last = os.urandom(5 * MIB), os.urandom(MIB + 17)
    upload_id = await store.create_multipart(key, content_type="image/jpeg")
    try:
        etags = [
            await stream_part(store, key, upload_id, 1, first, 64 * 1024 + 3),
            await stream_part(store, key, upload_id, 2, last, 1_000_000),
        ]
        # The ETag a buffered upload_part of the same bytes gets (MD5, as S3 has it).
        assert etags == [f'"{hashlib.md5(b).hexdigest()}"' for b in (first, last)]
        # The size the store says it assembled: what the caller checks instead of a HEAD.
        assert await store.complete_multipart(key, upload_id, etags) == len(first + last)
    except BaseException:
        await store.abort_multipart(key, upload_id)
        raise
    assert inspector.read(key) == first + last
    assert [u for u in inspector.open_uploads() if key in u or upload_id in u] == []
    await store.delete_keys([key])


async def test_an_aborted_part_stores_nothing(app: FastAPI, inspector: Inspector) -> None:
    store, key = store_of(app), key_of(app)
    new, last = os.urandom(5 * MIB), os.urandom(1000)
    upload_id = await store.create_multipart(key, content_type="image/jpeg")
    try:
        # Given up half way (a body cut short): nothing of it is stored under its number.
        half = await store.open_part(key, upload_id, 1, len(new))
        await half.write(new[: 2 * MIB])
        await half.abort()
        await half.abort()  # idempotent
        etags = [
            await stream_part(store, key, upload_id, 1, new, MIB),
            await stream_part(store, key, upload_id, 2, last, 4096),
        ]
        await store.complete_multipart(key, upload_id, etags)
    except BaseException:
        await store.abort_multipart(key, upload_id)
        raise
    assert inspector.read(key) == new + last
    await store.delete_keys([key])


async def test_a_streamed_part_replaces_an_earlier_one(
    app: FastAPI, inspector: Inspector, request: pytest.FixtureRequest
) -> None:
    if "rclone" in request.node.name:
        # rclone `serve s3` answers NotImplemented to any part (buffered or streamed) that
        # replaces a stored part with other bytes; identical bytes are accepted.
        pytest.skip("rclone serve s3 does not replace a part with different bytes")
    store, key = store_of(app), key_of(app)
    old, new, last = os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(1000)
    upload_id = await store.create_multipart(key, content_type="image/jpeg")
    try:
        old_etag = await store.upload_part(key, upload_id, 1, old)
        last_etag = await stream_part(store, key, upload_id, 2, last, 4096)
        new_etag = await stream_part(store, key, upload_id, 1, new, MIB)
        # The old ETag no longer names what part 1 holds.
        with pytest.raises(PartsMismatch):
            await store.complete_multipart(key, upload_id, [old_etag, last_etag])
        assert await store.complete_multipart(key, upload_id, [new_etag, last_etag]) == len(
            new + last
        )
    except BaseException:
        await store.abort_multipart(key, upload_id)
        raise
    assert inspector.read(key) == new + last
    await store.delete_keys([key])


async def test_a_part_must_be_exactly_its_declared_size(app: FastAPI) -> None:
    store, key = store_of(app), key_of(app)
    upload_id = await store.create_multipart(key, content_type="image/jpeg")
    try:
        part = await store.open_part(key, upload_id, 1, 100)
        await part.write(b"x" * 60)
        with pytest.raises(ValueError, match="more bytes"):
            await part.write(b"x" * 41)
        with pytest.raises(ValueError, match="fewer bytes"):
            await part.finish()
        await part.abort()
    finally:
        await store.abort_multipart(key, upload_id)


async def test_a_part_of_an_aborted_upload_is_object_missing(app: FastAPI) -> None:
    store, key = store_of(app), key_of(app)
    upload_id = await store.create_multipart(key, content_type="image/jpeg")
    await store.abort_multipart(key, upload_id)
    # The local store knows at once; S3 answers NoSuchUpload to the request.
    with pytest.raises(ObjectMissing):
        await stream_part(store, key, upload_id, 1, os.urandom(1000), 100)


async def test_completing_with_a_part_the_store_does_not_hold_assembles_nothing(
    app: FastAPI, inspector: Inspector
) -> None:
    """The store judges which parts it holds: a part named but never stored is
    PartsMismatch, and nothing is assembled. (What is left of the upload then differs:
    moto keeps it, rclone drops it; tus treats the upload as gone either way.)"""
    store, key = store_of(app), key_of(app)
    first, last = os.urandom(5 * MIB), os.urandom(2000)
    upload_id = await store.create_multipart(key, content_type="image/jpeg")
    try:
        etags = [
            await stream_part(store, key, upload_id, 1, first, MIB),
            await stream_part(store, key, upload_id, 2, last, 1000),
        ]
        missing = f'"{hashlib.md5(b"never sent").hexdigest()}"'
        with pytest.raises(PartsMismatch):
            await store.complete_multipart(key, upload_id, [*etags, missing])
        stored = inspector.keys()  # every key in the store
        assert key not in stored
    finally:
        await store.abort_multipart(key, upload_id)


async def test_the_store_s_list_of_parts_is_read_past_its_first_page(app: FastAPI) -> None:
    """ListParts answers at most 1000 parts a page; the sizes a completion reports come from
    every page (storage/s3_writer.py `part_sizes`)."""
    store = store_of(app)
    if not isinstance(store, S3ObjectStore):
        pytest.skip("the local store reads its parts directory, not pages")
    key = key_of(app)
    upload_id = await store.create_multipart(key, content_type="image/jpeg")
    try:
        # Parts below the 5 MiB minimum are accepted until the completion.
        for number in range(1, 1003):
            await store.upload_part(key, upload_id, number, b"x" * (number % 3 + 1))
        sizes = await part_sizes(store.client, store.bucket, key, upload_id, 1002)
        assert sizes == {number: number % 3 + 1 for number in range(1, 1003)}
    finally:
        await store.abort_multipart(key, upload_id)
