"""The parked tail as fragments (uploads/tus/receiver.py), on every backend: a PATCH whose
bytes do not complete a part stores only its own bytes and reads nothing parked back; the
fragments go into a part once, in order; a record written before migration 0008 (one tail
object) resumes; gc keeps every fragment a record names and removes the rest.

Below 5 MiB (the store's minimum part) everything is parked, whatever the part size, so the
numbers here hold on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from imagesvc.db import utcnow
from imagesvc.images.models import ResumableUpload
from imagesvc.uploads.tus import receiver as receiver_module
from imagesvc.uploads.tus.repository import Fragment, fragments_of
from tests.conftest import Inspector
from tests.maintenance.test_gc_resumable import age
from tests.uploads.tus.helpers import MIB, create, head, image_of, patch, send_all, sha256
from tests.uploads.tus.test_protocol import (
    assert_nothing_left,
    expiring,
    id_of,
    record,
    stored,
)
from tests.uploads.tus.test_streamed_parts import checksum

KIB = 1024


@contextmanager
def tail_reads(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> Iterator[list[str]]:
    """The keys of tail fragments the service's store is asked to read, in order."""
    store = app.state.runtime.resumable.store
    read: list[str] = []
    original = store.open_read

    async def counted(key: str, *args: Any, **kwargs: Any) -> Any:
        if "/tus/" in key:
            read.append(key)
        return await original(key, *args, **kwargs)

    monkeypatch.setattr(store, "open_read", counted)
    yield read


async def fragments(app: FastAPI, upload_id: str) -> list[Fragment]:
    kept = await record(app, upload_id)
    assert kept is not None
    return fragments_of(kept)


def tail_objects(inspector: Inspector, upload_id: str) -> set[str]:
    return {k for k in stored(inspector) if upload_id in k and "/tus/" in k}


def keys_of(tail: list[Fragment]) -> set[str]:
    return {fragment.key for fragment in tail}


async def assert_image(client: httpx.AsyncClient, url: str, data: bytes) -> None:
    image = (await client.get(f"/v1/images/{id_of(url)}")).json()
    assert (image["byte_size"], image["sha256"]) == (len(data), sha256(data))


@pytest.mark.parametrize("chunk", [MIB, 300 * KIB], ids=["1MiB", "300KiB"])
async def test_small_chunks_are_byte_identical_and_leave_no_fragment(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector, chunk: int
) -> None:
    data = image_of(11 * MIB + 12345)
    url, _ = await create(client, len(data))
    last = await send_all(client, url, data, chunk)
    assert last.headers["image-id"] == id_of(url)
    await assert_image(client, url, data)
    key = app.state.runtime.resumable.layout.original(id_of(url))
    assert inspector.read(key) == data
    assert tail_objects(inspector, id_of(url)) == set()


async def test_a_patch_below_a_part_reads_nothing_parked_back(
    client: httpx.AsyncClient,
    app: FastAPI,
    inspector: Inspector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = image_of(7 * MIB + 5)
    url, _ = await create(client, len(data))
    with tail_reads(monkeypatch, app) as read:
        await send_all(client, url, data[: 4 * MIB], MIB)
        # Four PATCHes, four fragments of exactly their own bytes; none was read.
        parked = await fragments(app, id_of(url))
        assert [f.size for f in parked] == [MIB] * 4
        assert len(keys_of(parked)) == 4
        assert keys_of(parked) <= tail_objects(inspector, id_of(url))
        assert read == []
        # The fifth makes 5 MiB: a part, which reads each fragment once, in order.
        assert (await patch(client, url, 4 * MIB, data[4 * MIB : 5 * MIB])).status_code == 204
        assert read == [f.key for f in parked]
        assert await fragments(app, id_of(url)) == []
        assert tail_objects(inspector, id_of(url)) == set()  # deleted once not named
        await send_all(client, url, data, MIB, start=5 * MIB)
        assert len(read) == 4 + 2  # the two parked after the part, read by the last PATCH
    await assert_image(client, url, data)


async def test_a_header_split_over_small_patches_is_probed_from_the_fragments(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    data = image_of(6 * MIB + 77)
    url, _ = await create(client, len(data))
    # 10 bytes and then 90 cannot tell the image; the third PATCH reads both fragments
    # for the probe before its own bytes.
    assert (await patch(client, url, 0, data[:10])).status_code == 204
    assert (await patch(client, url, 10, data[10:100])).status_code == 204
    assert [f.size for f in await fragments(app, id_of(url))] == [10, 90]
    await send_all(client, url, data, MIB, start=100)
    await assert_image(client, url, data)
    image = (await client.get(f"/v1/images/{id_of(url)}")).json()
    assert (image["width"], image["content_type"]) == (64, "image/jpeg")
    assert tail_objects(inspector, id_of(url)) == set()


async def test_a_checksum_mismatch_below_a_part_parks_nothing(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    data = image_of(3 * MIB)
    url, _ = await create(client, len(data))
    await send_all(client, url, data[: 2 * MIB], MIB)
    before = await fragments(app, id_of(url))
    objects = tail_objects(inspector, id_of(url))
    chunk = data[2 * MIB :]
    wrong = await patch(client, url, 2 * MIB, chunk, **checksum(chunk[:-1] + b"?"))
    assert wrong.status_code == 460
    assert await fragments(app, id_of(url)) == before
    assert tail_objects(inspector, id_of(url)) == objects
    right = await patch(client, url, 2 * MIB, chunk, **checksum(chunk))
    assert right.status_code == 204, right.text
    await assert_image(client, url, data)


async def test_a_record_in_the_old_one_tail_format_resumes(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    """What the code before migration 0008 left: one tail object (here the first 3 MiB),
    named by `tail_key`/`tail_size`, `tail_fragments` null. gc keeps it; a resume reads it
    into the first part and the image is byte-identical."""
    data = image_of(9 * MIB + 3)
    url, _ = await create(client, len(data))
    image_id = id_of(url)
    assert (await patch(client, url, 0, data[: 3 * MIB])).status_code == 204
    (tail,) = await fragments(app, image_id)
    async with app.state.runtime.db.engine.begin() as conn:
        await conn.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == image_id)
            .values(tail_fragments=None, tail_key=tail.key, tail_size=3 * MIB)
        )
    assert await fragments(app, image_id) == [tail]  # read as the old format
    await age(app, image_id)
    report = await app.state.runtime.reconciler.run(grace=0)
    assert tail.key not in report.orphan_objects
    assert tail.key in stored(inspector)
    # A fragment after the old tail, then the part that takes both.
    assert (await patch(client, url, 3 * MIB, data[3 * MIB : 4 * MIB])).status_code == 204
    assert [f.size for f in await fragments(app, image_id)] == [3 * MIB, MIB]
    await send_all(client, url, data, MIB, start=4 * MIB)
    await assert_image(client, url, data)
    assert tail_objects(inspector, image_id) == set()


async def test_gc_removes_an_uncommitted_fragment_and_keeps_the_named_ones(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    """A PATCH that wrote its fragment and died before committing it: the fragment is an
    orphan (once no PATCH holds the lease); the three the record names stay."""
    data = image_of(6 * MIB)
    url, _ = await create(client, len(data))
    image_id = id_of(url)
    await send_all(client, url, data[: 3 * MIB], MIB)
    named = keys_of(await fragments(app, image_id))
    runtime = app.state.runtime
    stray = runtime.resumable.layout.tail(image_id)
    await runtime.store.put_object(stray, b"y" * MIB, content_type="application/octet-stream")
    await age(app, image_id)
    # While a PATCH holds the lease, its fragment may be about to be committed: kept.
    async with runtime.db.engine.begin() as conn:
        await conn.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == image_id)
            .values(
                lease_token="a-patch-in-flight",
                lease_expires_at=utcnow() + timedelta(minutes=1),
            )
        )
    report = await runtime.reconciler.run(grace=0)
    assert stray not in report.orphan_objects
    assert stray in stored(inspector)
    async with runtime.db.engine.begin() as conn:
        await conn.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == image_id)
            .values(lease_token=None, lease_expires_at=None)
        )
    report = await runtime.reconciler.run(grace=0)
    assert stray in report.orphan_objects
    assert not named & set(report.orphan_objects)
    assert tail_objects(inspector, image_id) == named
    assert (await head(client, url)).headers["upload-offset"] == str(3 * MIB)
    await send_all(client, url, data, MIB, start=3 * MIB)
    await assert_image(client, url, data)


async def test_expiry_then_gc_removes_every_fragment(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    data = image_of(4 * MIB)
    with expiring(app, 1):
        url, _ = await create(client, len(data))
        await send_all(client, url, data[: 3 * MIB], 512 * KIB)
    assert len(await fragments(app, id_of(url))) == 6
    await asyncio.sleep(1.2)
    assert (await head(client, url)).status_code == 410
    report = await app.state.runtime.reconciler.run(grace=0)
    assert id_of(url) in report.expired_resumable_uploads
    await assert_nothing_left(app, inspector, id_of(url))


async def test_termination_removes_every_fragment(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    data = image_of(4 * MIB)
    url, _ = await create(client, len(data))
    await send_all(client, url, data[: 2 * MIB], 512 * KIB)
    assert len(tail_objects(inspector, id_of(url))) == 4
    assert (await client.delete(url, headers={"Tus-Resumable": "1.0.0"})).status_code == 204
    await assert_nothing_left(app, inspector, id_of(url))


async def test_a_long_list_is_consolidated_into_one_fragment(
    client: httpx.AsyncClient,
    app: FastAPI,
    inspector: Inspector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record names a bounded number of fragments: the PATCH that would go past it
    parks the fragments and its own bytes as one."""
    monkeypatch.setattr(receiver_module, "_MAX_FRAGMENTS", 3)
    data = image_of(2 * MIB)
    url, _ = await create(client, len(data))
    await send_all(client, url, data[: 3 * 256 * KIB], 256 * KIB)
    assert [f.size for f in await fragments(app, id_of(url))] == [256 * KIB] * 3
    await send_all(client, url, data[: 4 * 256 * KIB], 256 * KIB, start=3 * 256 * KIB)
    parked = await fragments(app, id_of(url))
    assert [f.size for f in parked] == [MIB]
    assert tail_objects(inspector, id_of(url)) == keys_of(parked)
    await send_all(client, url, data, 256 * KIB, start=MIB)
    await assert_image(client, url, data)
