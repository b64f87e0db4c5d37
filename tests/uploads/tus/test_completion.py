"""The last byte of a tus upload, when something fails after it: the completion is finished
by the client's retry (a HEAD, or a PATCH at the end) from the committed `completing`
state, never lost; and a finished upload whose image is deleted is gone with it. On every
backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from imagesvc.errors import ServiceUnavailable
from imagesvc.storage.port import StorageUnavailable
from tests.api import fetch_content
from tests.conftest import TEST_MAX_UPLOAD, TEST_PART_SIZE, Inspector
from tests.uploads.tus.helpers import MIB, TUS, create, head, image_of, patch, sha256
from tests.uploads.tus.test_protocol import assert_nothing_left, id_of, record, stored


def fail_once(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str, error: Exception
) -> list[int]:
    """Make `target.name` raise `error` on its first call, then behave; counts the calls."""
    original: Callable[..., Awaitable[Any]] = getattr(target, name)
    calls: list[int] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return await original(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return calls


async def upload_all_but_the_last_chunk(client: httpx.AsyncClient, data: bytes) -> tuple[str, int]:
    url, _ = await create(client, len(data))
    first = TEST_PART_SIZE + MIB  # a part is cut: the completion assembles a multipart upload
    assert (await patch(client, url, 0, data[:first])).status_code == 204
    return url, first


async def assert_ready_and_clean(
    client: httpx.AsyncClient, inspector: Inspector, url: str, data: bytes
) -> None:
    image_id = id_of(url)
    image = (await client.get(f"/v1/images/{image_id}")).json()
    assert (image["byte_size"], image["sha256"]) == (len(data), sha256(data))
    assert sha256((await fetch_content(client, image_id)).content) == sha256(data)
    assert [k for k in stored(inspector) if image_id in k and "/tus/" in k] == []
    assert [u for u in inspector.open_uploads() if image_id in u] == []


async def test_a_failed_ready_step_is_finished_by_the_next_head(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image_of(TEST_PART_SIZE + 3 * MIB)
    url, offset = await upload_all_but_the_last_chunk(client, data)
    ingest = app.state.runtime.resumable.ingest
    calls = fail_once(monkeypatch, ingest, "make_ready", ServiceUnavailable("database down"))

    last = await patch(client, url, offset, data[offset:])
    assert last.status_code == 503, last.text
    assert last.headers["content-type"] == "application/problem+json"
    # Every byte is stored and committed: the client resuming from HEAD sends nothing more,
    # and that HEAD finishes the completion.
    assert (await record(app, id_of(url))).state == "completing"  # type: ignore[union-attr]
    state = await head(client, url)
    assert state.status_code == 200, state.text
    assert state.headers["upload-offset"] == str(len(data))
    assert state.headers["image-id"] == id_of(url)
    assert len(calls) == 2
    await assert_ready_and_clean(client, inspector, url, data)
    assert (await record(app, id_of(url))).state == "done"  # type: ignore[union-attr]


async def test_a_failed_assembly_is_finished_by_a_patch_at_the_end(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image_of(TEST_PART_SIZE + 2 * MIB)
    url, offset = await upload_all_but_the_last_chunk(client, data)
    store = app.state.runtime.resumable.store
    fail_once(monkeypatch, store, "complete_multipart", StorageUnavailable("store down"))

    last = await patch(client, url, offset, data[offset:])
    assert last.status_code == 503, last.text
    # A retry of the same chunk is a conflict (its bytes are stored); at the end it finishes.
    assert (await patch(client, url, offset, data[offset:])).status_code == 409
    done = await patch(client, url, len(data), b"")
    assert done.status_code == 204, done.text
    assert done.headers["image-id"] == id_of(url)
    await assert_ready_and_clean(client, inspector, url, data)


async def test_bytes_sent_to_a_completing_upload_are_refused(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image_of(TEST_PART_SIZE + MIB + 5000)
    url, offset = await upload_all_but_the_last_chunk(client, data)
    fail_once(
        monkeypatch, app.state.runtime.resumable.ingest, "make_ready", ServiceUnavailable("down")
    )
    assert (await patch(client, url, offset, data[offset:])).status_code == 503
    assert (await patch(client, url, len(data), b"more")).status_code == 413
    assert (await head(client, url)).headers["image-id"] == id_of(url)
    await assert_ready_and_clean(client, inspector, url, data)


async def test_a_completing_upload_expires_and_gc_leaves_nothing(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.uploads.tus.test_protocol import expiring

    data = image_of(TEST_PART_SIZE + MIB + 7)
    url, offset = await upload_all_but_the_last_chunk(client, data)
    fail_once(
        monkeypatch, app.state.runtime.resumable.ingest, "make_ready", ServiceUnavailable("down")
    )
    with expiring(app, 0.01):
        assert (await patch(client, url, offset, data[offset:])).status_code == 503
    assert (await head(client, url)).status_code == 410
    report = await app.state.runtime.reconciler.run(grace=0)
    assert id_of(url) in report.expired_resumable_uploads
    await assert_nothing_left(app, inspector, id_of(url))


async def test_deleting_the_image_of_a_finished_upload_makes_the_upload_404(
    client: httpx.AsyncClient,
) -> None:
    data = image_of(4000)
    url, _ = await create(client, len(data))
    assert (await patch(client, url, 0, data)).status_code == 204
    assert (await client.delete(f"/v1/images/{id_of(url)}")).status_code == 204
    assert (await head(client, url)).status_code == 404
    again = await patch(client, url, len(data), b"")
    assert again.status_code == 404
    assert "image-id" not in again.headers


@pytest.mark.parametrize(
    ("digits", "length_status", "offset_status"),
    [(13, 413, 409), (19, 413, 409), (20, 400, 400), (40, 400, 400)],
)
async def test_huge_offsets_and_lengths_are_refused_before_the_database(
    client: httpx.AsyncClient, digits: int, length_status: int, offset_status: int
) -> None:
    """Past Tus-Max-Size: 413 for a length, 409 for an offset (no upload is there); past
    what an int64 holds (tusd's bound too): 400. Never a 500 from the database."""
    huge = "9" * digits
    assert int(huge) > TEST_MAX_UPLOAD
    too_long = await client.post("/v1/uploads", headers={**TUS, "Upload-Length": huge})
    assert too_long.status_code == length_status, too_long.text
    data = image_of(4000)
    url, _ = await create(client, len(data))
    offset = await patch(client, url, int(huge), data)
    assert offset.status_code == offset_status, offset.text
    length = await patch(client, url, 0, data, **{"Upload-Length": huge})
    assert length.status_code == length_status, length.text
    assert (await head(client, url)).headers["upload-offset"] == "0"
    assert (await patch(client, url, 0, data)).status_code == 204


async def test_a_completing_upload_can_be_terminated_leaving_nothing(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image_of(TEST_PART_SIZE + MIB + 11)
    url, offset = await upload_all_but_the_last_chunk(client, data)
    fail_once(
        monkeypatch, app.state.runtime.resumable.ingest, "make_ready", ServiceUnavailable("down")
    )
    assert (await patch(client, url, offset, data[offset:])).status_code == 503
    assert (await client.delete(url, headers=TUS)).status_code == 204
    assert (await head(client, url)).status_code == 404
    await assert_nothing_left(app, inspector, id_of(url))
