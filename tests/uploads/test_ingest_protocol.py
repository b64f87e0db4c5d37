"""The ingest protocol (uploads/ingest.py) step by step, against an in-memory store that
fails where a test tells it to, and a real SQLite database: what each failure leaves in
the store and the database. The same guarantees are tested end to end against real S3
servers and MariaDB in test_upload_errors.py and tests/system/test_faults.py."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import select

from imagesvc.config import MIB
from imagesvc.db import Database, Tx
from imagesvc.errors import ServiceUnavailable, UnsupportedMediaType
from imagesvc.images.models import Image, ImageStatus
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import ObjectInfo, ObjectStream, StorageUnavailable
from imagesvc.uploads.ingest import Ingest, UploadHooks, UploadLimits, UploadRequest
from tests.samples import jpeg


class FakeWriter:
    def __init__(self, store: FakeStore, key: str) -> None:
        self.store, self.key = store, key
        self.data = bytearray()
        self.aborted = False

    async def write(self, data: bytes) -> None:
        if (
            self.store.fail_write_after is not None
            and len(self.data) >= self.store.fail_write_after
        ):
            raise StorageUnavailable()
        self.data += data

    async def complete(self) -> int | None:
        kept = bytes(self.data[: self.store.truncate_to])
        self.store.objects[self.key] = kept
        return None  # as a multipart upload: only a HEAD can tell

    async def abort(self) -> None:
        self.aborted = True


class FakeStore:
    """Just enough of the ObjectStore port for the ingest protocol."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.writers: list[FakeWriter] = []
        self.fail_write_after: int | None = None
        self.truncate_to: int | None = None

    async def open_write(
        self, key: str, *, content_type: str, size: int | None = None
    ) -> FakeWriter:
        writer = FakeWriter(self, key)
        self.writers.append(writer)
        return writer

    async def head(self, key: str) -> ObjectInfo | None:
        data = self.objects.get(key)
        if data is None:
            return None
        from imagesvc.db import utcnow

        return ObjectInfo(key=key, size=len(data), last_modified=utcnow())

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [key for key in self.objects if key.startswith(prefix)]
        for key in doomed:
            del self.objects[key]
        return len(doomed)

    async def delete_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)

    async def open_read(self, key: str, byte_range: Any = None) -> ObjectStream:
        raise NotImplementedError


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def ingest_for(db: Database, store: FakeStore) -> Ingest:
    limits = UploadLimits(max_upload_bytes=8 * MIB, max_pixels=10_000_000, header_budget=MIB)
    return Ingest(db, store, limits, KeyLayout())  # type: ignore[arg-type]


def request(*chunks: bytes) -> UploadRequest:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return UploadRequest(owner="unit", chunks=body(), filename="a.jpg", fields={})


async def rows(db: Database) -> list[Image]:
    async def everything(tx: Tx) -> list[Image]:
        return list((await tx.execute(select(Image))).scalars().all())

    return await db.read(everything)


async def test_a_stored_upload_is_one_object_and_one_ready_row(
    unit_db: Database, store: FakeStore
) -> None:
    data = jpeg((64, 48))
    image = await ingest_for(unit_db, store).create(request(data[:100], data[100:]))
    assert store.objects == {image.storage_key: data}
    [row] = await rows(unit_db)
    assert row.status == ImageStatus.READY
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert row.byte_size == len(data)


async def test_bytes_that_are_not_an_image_write_nothing(
    unit_db: Database, store: FakeStore
) -> None:
    with pytest.raises(UnsupportedMediaType):
        await ingest_for(unit_db, store).create(request(b"<html>" * 100))
    assert store.writers == []  # refused before any object was opened
    assert await rows(unit_db) == []


async def test_a_store_failure_mid_stream_aborts_the_write_and_removes_the_row(
    unit_db: Database, store: FakeStore
) -> None:
    store.fail_write_after = 1000
    data = jpeg((64, 48)) + b"\0" * 5000
    with pytest.raises(StorageUnavailable):
        await ingest_for(unit_db, store).create(
            request(*(data[i : i + 500] for i in range(0, 6000, 500)))
        )
    assert [w.aborted for w in store.writers] == [True]
    assert store.objects == {}
    assert await rows(unit_db) == []


async def test_a_store_that_kept_fewer_bytes_is_never_promised(
    unit_db: Database, store: FakeStore
) -> None:
    store.truncate_to = 10
    with pytest.raises(StorageUnavailable):
        await ingest_for(unit_db, store).create(request(jpeg((64, 48))))
    assert store.objects == {}  # the short object was removed with its row
    assert await rows(unit_db) == []


async def test_a_row_reclaimed_meanwhile_keeps_the_object_for_gc(
    unit_db: Database, store: FakeStore
) -> None:
    """If gc claimed the row (pending -> deleting) while the upload ran, the upload must
    not make it ready, and must not delete what gc is now responsible for."""
    from sqlalchemy import update

    async def reclaimed(tx: Tx, image: Image) -> None:
        await tx.execute(
            update(Image).where(Image.id == image.id).values(status=ImageStatus.DELETING)
        )

    ingest = ingest_for(unit_db, store)
    # gc's claim commits first; then the upload's own mark-ready finds no pending row.
    real_mark = ingest._mark_ready

    async def after_claim(image: Image, upload: Any, hooks: UploadHooks) -> None:
        await unit_db.run(lambda tx: reclaimed(tx, image))
        await real_mark(image, upload, hooks)

    ingest._mark_ready = after_claim  # type: ignore[method-assign]
    with pytest.raises(ServiceUnavailable):
        await ingest.create(request(jpeg((64, 48))))
    [row] = await rows(unit_db)
    assert row.status == ImageStatus.DELETING  # gc's to finish
    assert list(store.objects) == [row.storage_key]
