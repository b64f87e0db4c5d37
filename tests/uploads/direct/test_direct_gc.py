"""What gc makes of direct uploads, on every backend: expired ones go (with or without their
bytes), live ones stay whatever the grace, and a crash between any two steps of `complete`
leaves state that gc repairs (or that a retried `complete` finishes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from imagesvc.config import Settings
from imagesvc.db import utcnow
from imagesvc.images.models import Image
from imagesvc.storage.port import ObjectStore
from imagesvc.uploads.direct.service import DirectUploads
from tests.api import complete, fetch_content, put_direct, start_direct
from tests.conftest import Inspector, client_for, running_app
from tests.consistency import run_gc
from tests.samples import PDF, jpeg
from tests.uploads.direct.test_direct import assert_problem, keys_of

SHORT_TTL = 2


@pytest.fixture(scope="module")
async def short_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The same database and store, with direct uploads that expire after 2 s."""
    short = settings.model_copy(update={"direct_upload_ttl": SHORT_TTL})
    async for running in running_app(short):
        yield running


@pytest.fixture
async def short_client(short_app: FastAPI, owner: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(short_app, owner) as c:
        yield c


async def wait_past(expires_at: str) -> None:
    moment = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    await asyncio.sleep(max(0.0, (moment - utcnow()).total_seconds()) + 0.2)


@pytest.mark.parametrize("with_bytes", [False, True], ids=["no bytes", "with bytes"])
async def test_an_expired_direct_upload_is_gone_after_gc(
    short_app: FastAPI,
    short_client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    settings: Settings,
    with_bytes: bool,
) -> None:
    data = jpeg()
    created = await start_direct(short_client, data)
    image_id, upload = created["id"], created["upload"]
    if with_bytes:
        assert (await put_direct(anonymous, upload, data)).status_code == 200
        assert keys_of(inspector, image_id) != set()
    reconciler = short_app.state.runtime.reconciler

    # Within its TTL nothing takes it, even with no grace at all.
    report = await reconciler.run(grace=0)
    assert image_id not in report.expired_direct_uploads + report.abandoned_uploads
    assert await inspector.row(image_id) is not None

    await wait_past(upload["expires_at"])
    assert_problem(await complete(short_client, image_id), 410, "upload_expired")
    if settings.storage_backend == "local" or settings.s3_key_prefix:  # local, rclone
        late = await put_direct(anonymous, upload, data)  # the URL has expired too
        assert late.status_code in (400, 403), late.text  # rclone says 400, AWS 403

    dry = await reconciler.run(grace=3600, dry_run=True)
    assert image_id in dry.expired_direct_uploads
    assert await inspector.row(image_id) is not None
    # The TTL decides, not the grace period (which is about the store's clock).
    report = await reconciler.run(grace=3600)
    assert image_id in report.expired_direct_uploads
    assert f"removed expired direct upload {image_id}" in report.lines()
    assert report.counts()["expired_direct_upload"] >= 1
    assert await inspector.row(image_id) is None
    assert keys_of(inspector, image_id) == set()
    assert_problem(await complete(short_client, image_id), 404, "not_found")


async def test_gc_with_grace_0_leaves_live_direct_uploads_alone(
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    settings: Settings,
) -> None:
    data = jpeg()
    waiting = await start_direct(client, data)  # nothing uploaded yet
    uploaded = await start_direct(client, data)
    assert (await put_direct(anonymous, uploaded["upload"], data)).status_code == 200
    stored = keys_of(inspector, uploaded["id"])
    # The operator's command, as cron runs it: a pending direct upload is not heart-beaten,
    # and `--grace 0` must still not take it before its TTL.
    report = run_gc(settings, "--grace", "0")
    for created in (waiting, uploaded):
        assert created["id"] not in report
        assert await inspector.row(created["id"]) is not None
    assert keys_of(inspector, uploaded["id"]) == stored
    assert (await complete(client, uploaded["id"])).status_code == 200
    assert (await put_direct(anonymous, waiting["upload"], data)).status_code == 200
    assert (await complete(client, waiting["id"])).status_code == 200


# --- crashes inside `complete` ----------------------------------------------------------


class Crash(BaseException):
    """The process dies here: nothing after this point runs, no handler, no clean-up."""


class CrashingStore:
    """The real store, except that the process dies when `at` is called."""

    def __init__(self, store: ObjectStore, at: str) -> None:
        self._store = store
        self._at = at

    def __getattr__(self, name: str) -> Any:
        if name == self._at:

            async def die(*args: Any, **kwargs: Any) -> None:
                raise Crash(name)

            return die
        return getattr(self._store, name)


def crashing(app: FastAPI, at: str) -> DirectUploads:
    """The service of `app` on a store that dies at `at`."""
    runtime = app.state.runtime
    real: DirectUploads = runtime.direct
    return DirectUploads(
        real.db,
        CrashingStore(real.store, at),
        real.ingest,
        real.idempotency,
        layout=real.layout,
        limits=real.limits,
        ttl=real.ttl,
    )


async def age(app: FastAPI, image_id: str, **fields: timedelta) -> None:
    """Let time pass for the row: move these timestamps back (the TTL and the lease run
    out without the test waiting for them)."""
    row = await app.state.runtime.db.read(lambda tx: tx.get(Image, image_id))
    values = {name: getattr(row, name) - delta for name, delta in fields.items()}
    async with app.state.runtime.db.engine.begin() as conn:
        await conn.execute(update(Image).where(Image.id == image_id).values(**values))


HOURS = timedelta(hours=2)


@pytest.mark.parametrize(
    ("at", "left"),
    [
        ("copy", "the lease taken, nothing copied"),
        ("open_read", "the copy made, not read"),
        ("delete_keys", "the image ready, the landing key still there"),
    ],
)
async def test_a_crash_inside_complete_is_repaired_by_gc(
    app: FastAPI,
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    owner: str,
    at: str,
    left: str,
) -> None:
    data = jpeg((80, 60))
    created = await start_direct(client, data)
    image_id = created["id"]
    assert (await put_direct(anonymous, created["upload"], data)).status_code == 200
    with pytest.raises(Crash):
        await crashing(app, at).complete(owner=owner, image_id=image_id)
    row = await inspector.row(image_id)
    assert row is not None
    reconciler = app.state.runtime.reconciler
    if row.status == "ready":  # crashed after the commit: the image is promised
        assert len(keys_of(inspector, image_id)) == 2
        report = await reconciler.run(grace=0)
        assert keys_of(inspector, image_id) == {row.storage_key}
        assert {k for k in report.orphan_objects if image_id in k} != set()
        assert (await fetch_content(client, image_id)).content == data
        return
    # Still pending: a retry within the TTL waits for the dead request's lease ...
    assert_problem(await complete(client, image_id), 409, "upload_in_progress")
    # ... and once the TTL is over too, gc removes every object and the row.
    await age(app, image_id, created_at=HOURS, updated_at=HOURS, upload_expires_at=HOURS)
    report = await reconciler.run(grace=0)
    assert image_id in report.expired_direct_uploads, left
    assert await inspector.row(image_id) is None
    assert keys_of(inspector, image_id) == set()


async def test_a_retried_complete_finishes_after_a_crash(
    app: FastAPI,
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    owner: str,
) -> None:
    data = jpeg((80, 60))
    created = await start_direct(client, data)
    image_id = created["id"]
    assert (await put_direct(anonymous, created["upload"], data)).status_code == 200
    with pytest.raises(Crash):
        await crashing(app, "open_read").complete(owner=owner, image_id=image_id)
    await age(app, image_id, updated_at=timedelta(minutes=5))  # the dead request's lease lapses
    response = await complete(client, image_id)
    assert response.status_code == 200, response.text
    assert (await fetch_content(client, image_id)).content == data
    row = await inspector.row(image_id)
    assert row is not None
    assert row.status == "ready"
    assert keys_of(inspector, image_id) == {row.storage_key}


async def test_a_crash_while_removing_refused_bytes_is_repaired_by_gc(
    app: FastAPI,
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    owner: str,
) -> None:
    created = await start_direct(client, PDF, content_type="image/png")
    image_id = created["id"]
    assert (await put_direct(anonymous, created["upload"], PDF)).status_code == 200
    with pytest.raises(Crash):  # the row went, the objects did not
        await crashing(app, "delete_prefix").complete(owner=owner, image_id=image_id)
    assert await inspector.row(image_id) is None
    left = keys_of(inspector, image_id)
    assert len(left) == 2  # the landing key and the copy
    report = await app.state.runtime.reconciler.run(grace=0)
    assert left <= set(report.orphan_objects)
    assert keys_of(inspector, image_id) == set()
