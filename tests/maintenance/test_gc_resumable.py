"""`imagesvc gc` and resumable (tus) uploads: a live upload idle between PATCHes keeps its
row, its parked tail and its multipart upload, however old; what a crash leaves at each
step of a PATCH, a termination or an expiry is removed. On every backend."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from imagesvc.db import utcnow
from imagesvc.images.models import Image, ImageStatus, ResumableUpload
from imagesvc.images.repository import ImageRepository
from imagesvc.uploads.tus.repository import ResumableRepository
from tests.conftest import Inspector
from tests.uploads.tus.helpers import MIB, create, head, image_of, patch, send_all, sha256
from tests.uploads.tus.test_protocol import assert_nothing_left, id_of, record, stored


async def age(app: FastAPI, image_id: str, *, hours: float = 2) -> None:
    """Make the upload's rows look as old as a phone left in a drawer."""
    then = utcnow() - timedelta(hours=hours)
    async with app.state.runtime.db.engine.begin() as conn:
        await conn.execute(update(Image).where(Image.id == image_id).values(updated_at=then))
        await conn.execute(
            update(ResumableUpload).where(ResumableUpload.id == image_id).values(updated_at=then)
        )


async def test_an_idle_live_upload_survives_gc_and_resumes(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    data = image_of(8 * MIB)
    url, _ = await create(client, len(data))
    await send_all(client, url, data[: 7 * MIB], MIB)  # one part open, a 2 MiB tail parked
    image_id = id_of(url)
    await age(app, image_id)
    kept = {k for k in stored(inspector) if image_id in k}
    report = await app.state.runtime.reconciler.run(grace=0)
    assert image_id not in report.abandoned_uploads
    assert not [k for k in report.orphan_objects if image_id in k]
    assert not [k for k in report.unfinished_multipart_uploads if image_id in k]
    assert {k for k in stored(inspector) if image_id in k} == kept
    assert (await head(client, url)).headers["upload-offset"] == str(7 * MIB)
    await send_all(client, url, data, MIB, start=7 * MIB)
    assert (await client.get(f"/v1/images/{image_id}")).json()["sha256"] == sha256(data)


async def test_what_a_crashed_patch_left_is_removed(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    """A PATCH that died after writing a new tail and opening a multipart upload, before
    committing either: gc removes both, the committed state stays resumable."""
    data = image_of(6 * MIB)
    url, _ = await create(client, len(data))
    await send_all(client, url, data[:MIB], MIB)
    image_id = id_of(url)
    runtime = app.state.runtime
    stray_tail = runtime.resumable.layout.tail(image_id)
    await runtime.store.put_object(stray_tail, b"x" * 1000, content_type="image/jpeg")
    original = runtime.resumable.layout.original(image_id)
    stray_upload = await runtime.store.create_multipart(original, content_type="image/jpeg")
    report = await runtime.reconciler.run(grace=0)
    assert stray_tail in report.orphan_objects
    assert original in report.unfinished_multipart_uploads
    assert stray_tail not in stored(inspector)
    assert [u for u in inspector.open_uploads() if stray_upload in u or image_id in u] == []
    await send_all(client, url, data, 2 * MIB, start=MIB)
    assert (await client.get(f"/v1/images/{image_id}")).json()["sha256"] == sha256(data)


async def test_an_expiry_that_stopped_half_way_is_finished(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    """gc dropped the record and turned the image `deleting`, then died before the store:
    the next run (once the lease passed) removes the rest."""
    data = image_of(8 * MIB)
    url, _ = await create(client, len(data))
    await send_all(client, url, data[: 7 * MIB], MIB)
    image_id = id_of(url)
    runtime = app.state.runtime
    now = utcnow()

    async with runtime.db.engine.begin() as conn:
        await conn.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == image_id)
            .values(expires_at=now - timedelta(seconds=1))
        )
    # The statements of gc's first step, by hand; then it "dies".
    dropped = await runtime.db.run(
        lambda tx: ResumableRepository(tx).remove_expired(image_id, now=utcnow())
    )
    assert dropped
    await runtime.db.run(lambda tx: ImageRepository(tx).claim_pending(image_id, now=utcnow()))
    await age(app, image_id)
    row = await inspector.row(image_id)
    assert row is not None
    assert row.status == ImageStatus.DELETING
    report = await runtime.reconciler.run(grace=0)
    assert image_id in report.unfinished_deletes
    await assert_nothing_left(app, inspector, image_id)
    assert (await head(client, url)).status_code == 404


async def test_an_expired_upload_whose_patch_holds_the_lease_is_left_alone(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    url, _ = await create(client, 5000)
    image_id = id_of(url)
    now = utcnow()
    async with app.state.runtime.db.engine.begin() as conn:
        await conn.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == image_id)
            .values(
                expires_at=now - timedelta(seconds=1),
                lease_token="a-patch-in-flight",
                lease_expires_at=now + timedelta(minutes=1),
            )
        )
    report = await app.state.runtime.reconciler.run(grace=0)
    assert image_id not in report.expired_resumable_uploads
    assert await record(app, image_id) is not None
    assert (await patch(client, url, 0, image_of(5000))).status_code == 410
