"""tus 1.0.0 at /v1/uploads, request by request, on every backend (MariaDB + moto, MariaDB +
rclone, SQLite + local): what a client sees, and what is left in the store and the
database after each answer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from imagesvc.images.models import ResumableUpload
from tests.api import fetch_content
from tests.conftest import TEST_MAX_UPLOAD, TEST_PART_SIZE, Inspector, client_for
from tests.samples import PDF, encode, png_claiming
from tests.uploads.tus.helpers import (
    CHUNK,
    MIB,
    TUS,
    create,
    head,
    image_of,
    metadata,
    patch,
    send_all,
    sha256,
)


async def record(app: FastAPI, upload_id: str) -> ResumableUpload | None:
    async with app.state.runtime.db.engine.connect() as conn:
        row = (
            await conn.execute(select(ResumableUpload).where(ResumableUpload.id == upload_id))
        ).first()
        return None if row is None else ResumableUpload(**row._mapping)


async def assert_nothing_left(app: FastAPI, inspector: Inspector, upload_id: str) -> None:
    assert [k for k in stored(inspector) if upload_id in k] == []
    assert [u for u in inspector.open_uploads() if upload_id in u] == []
    assert await inspector.row(upload_id) is None
    assert await record(app, upload_id) is None


def stored(inspector: Inspector) -> set[str]:
    return set(inspector.keys())


def id_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


@contextmanager
def expiring(app: FastAPI, seconds: float) -> Iterator[None]:
    service = app.state.runtime.resumable
    saved = service.expiry
    service.expiry = timedelta(seconds=seconds)
    try:
        yield
    finally:
        service.expiry = saved


# --- discovery and the version header ---------------------------------------------------------


async def test_options_answers_without_a_key_even_for_a_gone_upload(
    anonymous: httpx.AsyncClient,
) -> None:
    for url in ("/v1/uploads", "/v1/uploads/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S"):
        response = await anonymous.options(url)
        assert response.status_code == 204
        assert response.headers["tus-version"] == "1.0.0"
        assert response.headers["tus-max-size"] == str(TEST_MAX_UPLOAD)
        assert set(response.headers["tus-extension"].split(",")) == {
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "termination",
            "expiration",
            "checksum",
        }
        assert response.headers["tus-checksum-algorithm"] == "sha1,md5,sha256"


async def test_requests_without_tus_resumable_are_412_and_not_processed(
    client: httpx.AsyncClient, app: FastAPI, owner: str, inspector: Inspector
) -> None:
    before = await inspector.rows(owner)
    refused = await client.post("/v1/uploads", headers={"Upload-Length": "100"})
    assert refused.status_code == 412
    assert refused.headers["tus-version"] == "1.0.0"
    assert refused.headers["content-type"] == "application/problem+json"
    assert await inspector.rows(owner) == before
    url, _ = await create(client, 1000)
    assert (await client.head(url)).status_code == 412
    no_version = await client.patch(url, content=b"x", headers={"Upload-Offset": "0"})
    assert no_version.status_code == 412
    assert (await client.delete(url)).status_code == 412
    assert (await client.post(url, headers={"Tus-Resumable": "0.2.2"})).status_code == 412
    assert (await head(client, url)).headers["upload-offset"] == "0"


async def test_creation_over_the_max_size_is_413_and_stores_nothing(
    client: httpx.AsyncClient, owner: str, inspector: Inspector
) -> None:
    response = await client.post(
        "/v1/uploads", headers={**TUS, "Upload-Length": str(TEST_MAX_UPLOAD + 1)}
    )
    assert response.status_code == 413
    assert response.headers["tus-resumable"] == "1.0.0"
    assert await inspector.rows(owner) == 0


async def test_bad_creation_headers_are_400(client: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Upload-Length": "-1"},
        {"Upload-Length": "12", "Upload-Defer-Length": "1"},
        {"Upload-Defer-Length": "2"},
        {"Upload-Length": "0"},
        {"Upload-Length": "10", "Upload-Metadata": "filename not-base64!"},
        {"Upload-Length": "10", "Upload-Metadata": "a Yg==,a Yg=="},
    ):
        response = await client.post("/v1/uploads", headers={**TUS, **headers})
        assert response.status_code == 400, headers


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk",
    [MIB, TEST_PART_SIZE, 10 * MIB],
    ids=["1MiB-below-min-part", "part-size", "one-shot"],
)
async def test_round_trip_in_chunks_is_byte_identical(
    client: httpx.AsyncClient, chunk: int, app: FastAPI, inspector: Inspector
) -> None:
    data = image_of(10 * MIB + 12345)
    url, created = await create(
        client, len(data), **{"Upload-Metadata": metadata(filename="big.jpg", filetype="text/html")}
    )
    assert url.startswith("/v1/uploads/img_")
    assert created.headers["upload-expires"].endswith(" GMT")
    assert created.headers["tus-resumable"] == "1.0.0"
    last = await send_all(client, url, data, chunk)
    image_id = last.headers["image-id"]
    assert image_id == id_of(url)  # the upload id is the image id
    assert "upload-expires" not in last.headers
    image = (await client.get(f"/v1/images/{image_id}")).json()
    assert (image["content_type"], image["filename"]) == ("image/jpeg", "big.jpg")
    assert (image["byte_size"], image["sha256"]) == (len(data), sha256(data))
    assert image["width"] == 64
    assert image["blurhash"]
    content = await fetch_content(client, image_id)
    assert sha256(content.content) == sha256(data)
    state = await head(client, url)
    assert state.status_code == 200
    assert (state.headers["upload-offset"], state.headers["image-id"]) == (str(len(data)), image_id)
    assert state.headers["cache-control"] == "no-store"
    listed = (await client.get("/v1/images")).json()["items"]
    assert image_id in [i["id"] for i in listed]
    # Nothing of the upload's machinery is left: the original only, no tail, no open upload.
    assert [k for k in stored(inspector) if image_id in k and "/tus/" in k] == []
    assert [u for u in inspector.open_uploads() if image_id in u] == []


async def test_small_upload_below_one_part(client: httpx.AsyncClient) -> None:
    data = image_of(3000)
    url, _ = await create(client, len(data), **{"Upload-Metadata": "visibility cHVibGlj"})
    await send_all(client, url, data, 1000)
    image = (await client.get(f"/v1/images/{id_of(url)}")).json()
    assert (image["visibility"], image["sha256"]) == ("public", sha256(data))


async def test_deferred_length(client: httpx.AsyncClient) -> None:
    data = image_of(6 * MIB)
    url, _ = await create(client, None)
    state = await head(client, url)
    assert state.headers["upload-defer-length"] == "1"
    assert "upload-length" not in state.headers
    first = await patch(client, url, 0, data[: 4 * MIB])
    assert first.status_code == 204
    last = await patch(client, url, 4 * MIB, data[4 * MIB :], **{"Upload-Length": str(len(data))})
    assert last.status_code == 204, last.text
    assert last.headers["image-id"] == id_of(url)
    assert (await client.get(f"/v1/images/{id_of(url)}")).json()["sha256"] == sha256(data)


async def test_deferred_length_declared_by_an_empty_patch(client: httpx.AsyncClient) -> None:
    data = image_of(2 * MIB)
    url, _ = await create(client, None)
    assert (await patch(client, url, 0, data)).status_code == 204
    done = await patch(client, url, len(data), b"", **{"Upload-Length": str(len(data))})
    assert done.status_code == 204, done.text
    assert done.headers["image-id"] == id_of(url)


async def test_creation_with_upload(client: httpx.AsyncClient) -> None:
    data = image_of(2 * MIB)
    response = await client.post(
        "/v1/uploads",
        content=data[:MIB],
        headers={**CHUNK, "Upload-Length": str(len(data))},
    )
    assert response.status_code == 201, response.text
    assert response.headers["upload-offset"] == str(MIB)
    url = response.headers["location"]
    await send_all(client, url, data, MIB, start=MIB)
    assert (await client.get(f"/v1/images/{id_of(url)}")).json()["sha256"] == sha256(data)


async def test_patch_of_a_finished_upload_at_its_end_is_a_no_op(client: httpx.AsyncClient) -> None:
    data = image_of(5000)
    url, _ = await create(client, len(data))
    await send_all(client, url, data, len(data))
    again = await patch(client, url, len(data), b"")
    assert again.status_code == 204
    assert again.headers["image-id"] == id_of(url)
    assert (await patch(client, url, 0, data)).status_code == 409


async def test_method_override(client: httpx.AsyncClient) -> None:
    data = image_of(5000)
    url, _ = await create(client, len(data))
    response = await client.post(
        url,
        content=data,
        headers={**CHUNK, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert response.status_code == 204, response.text
    assert response.headers["image-id"] == id_of(url)


# --- refusals that change nothing -------------------------------------------------------------


async def test_wrong_offset_is_409_and_changes_nothing(client: httpx.AsyncClient) -> None:
    data = image_of(2 * MIB)
    url, _ = await create(client, len(data))
    assert (await patch(client, url, 0, data[:MIB])).status_code == 204
    for offset in (0, MIB + 1, 3 * MIB):
        response = await patch(client, url, offset, data[offset : offset + 1000])
        assert response.status_code == 409
        assert response.headers["tus-resumable"] == "1.0.0"
    assert (await head(client, url)).headers["upload-offset"] == str(MIB)
    await send_all(client, url, data, MIB, start=MIB)
    assert (await client.get(f"/v1/images/{id_of(url)}")).json()["sha256"] == sha256(data)


async def test_wrong_content_type_is_415(client: httpx.AsyncClient) -> None:
    data = image_of(5000)
    url, _ = await create(client, len(data))
    response = await client.patch(
        url,
        content=data,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 415
    assert (await head(client, url)).headers["upload-offset"] == "0"


async def test_chunk_past_the_length_is_413_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    data = image_of(5000)
    url, _ = await create(client, len(data))
    response = await patch(client, url, 0, data + b"more")
    assert response.status_code == 413
    assert (await head(client, url)).headers["upload-offset"] == "0"
    await send_all(client, url, data, 5000)


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256"])
async def test_checksum_mismatch_is_460_with_the_offset_unchanged(
    client: httpx.AsyncClient, algorithm: str
) -> None:
    data = image_of(7 * MIB)
    url, _ = await create(client, len(data))

    def checksum(chunk: bytes) -> dict[str, str]:
        digest = hashlib.new(algorithm, chunk).digest()
        return {"Upload-Checksum": f"{algorithm} {base64.b64encode(digest).decode()}"}

    first = data[:MIB]
    assert (await patch(client, url, 0, first, **checksum(first))).status_code == 204
    # 6 MiB: a whole part would go to the store before the body ends; it must not count.
    rest = data[MIB:]
    wrong = await patch(client, url, MIB, rest, **checksum(rest[:-1] + bytes([rest[-1] ^ 1])))
    assert wrong.status_code == 460
    assert wrong.json()["code"] == "checksum_mismatch"
    assert (await head(client, url)).headers["upload-offset"] == str(MIB)
    right = await patch(client, url, MIB, rest, **checksum(rest))
    assert right.status_code == 204, right.text
    assert (await client.get(f"/v1/images/{id_of(url)}")).json()["sha256"] == sha256(data)


async def test_unsupported_checksum_algorithm_is_400(client: httpx.AsyncClient) -> None:
    url, _ = await create(client, 100)
    response = await patch(client, url, 0, b"x", **{"Upload-Checksum": "crc32 AAAAAA=="})
    assert response.status_code == 400


# --- owners, visibility, termination, expiry --------------------------------------------------


async def test_another_owners_upload_is_404(client: httpx.AsyncClient, app: FastAPI) -> None:
    data = image_of(5000)
    url, _ = await create(client, len(data))
    async with client_for(app, "someone-else") as other:
        assert (await head(other, url)).status_code == 404
        assert (await patch(other, url, 0, data)).status_code == 404
        assert (await other.delete(url, headers=TUS)).status_code == 404
    assert (await head(client, url)).headers["upload-offset"] == "0"


async def test_pending_uploads_are_invisible(client: httpx.AsyncClient) -> None:
    data = image_of(2 * MIB)
    url, _ = await create(client, len(data))
    assert (await patch(client, url, 0, data[:MIB])).status_code == 204
    image_id = id_of(url)
    assert (await client.get(f"/v1/images/{image_id}")).status_code == 404
    assert (await client.get(f"/v1/images/{image_id}/content")).status_code == 404
    assert (await client.delete(f"/v1/images/{image_id}")).status_code == 404
    assert image_id not in [i["id"] for i in (await client.get("/v1/images")).json()["items"]]


async def test_delete_leaves_nothing(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    data = image_of(8 * MIB)
    url, _ = await create(client, len(data))
    await send_all(client, url, data[: 7 * MIB], MIB)  # one part and a parked tail
    assert [k for k in stored(inspector) if id_of(url) in k]
    response = await client.delete(url, headers=TUS)
    assert response.status_code == 204
    await assert_nothing_left(app, inspector, id_of(url))
    assert (await head(client, url)).status_code == 404
    assert (await client.delete(url, headers=TUS)).status_code == 404
    assert (await client.options(url)).status_code == 204


async def test_expiry_is_410_then_gc_leaves_nothing(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    data = image_of(8 * MIB)
    with expiring(app, 1):
        url, _ = await create(client, len(data))
        await send_all(client, url, data[: 7 * MIB], MIB)
    await asyncio.sleep(1.2)
    assert (await head(client, url)).status_code == 410
    assert (await patch(client, url, 7 * MIB, data[7 * MIB :])).status_code == 410
    report = await app.state.runtime.reconciler.run(grace=0)
    assert id_of(url) in report.expired_resumable_uploads
    await assert_nothing_left(app, inspector, id_of(url))
    assert (await head(client, url)).status_code == 404


async def test_a_finished_uploads_record_expires_but_the_image_stays(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    data = image_of(5000)
    with expiring(app, 1):
        url, _ = await create(client, len(data))
        await send_all(client, url, data, len(data))
    await asyncio.sleep(1.2)
    await app.state.runtime.reconciler.run(grace=0)
    assert await record(app, id_of(url)) is None
    assert (await client.get(f"/v1/images/{id_of(url)}")).status_code == 200


# --- the bytes decide -------------------------------------------------------------------------


async def test_non_image_bytes_are_415_at_once_and_leave_nothing(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    url, _ = await create(client, 5 * MIB, **{"Upload-Metadata": metadata(filetype="image/jpeg")})
    response = await patch(client, url, 0, PDF)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    await assert_nothing_left(app, inspector, id_of(url))
    assert (await head(client, url)).status_code == 404


async def test_header_split_over_tiny_patches_is_probed_across_them(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    data = PDF * 20
    url, _ = await create(client, len(data))
    assert (await patch(client, url, 0, data[:5])).status_code == 204  # not enough to tell
    response = await patch(client, url, 5, data[5:20])
    assert response.status_code == 415
    await assert_nothing_left(app, inspector, id_of(url))


async def test_over_the_pixel_limit_is_413_and_gone(
    client: httpx.AsyncClient, app: FastAPI, inspector: Inspector
) -> None:
    data = png_claiming(20000, 20000)
    url, _ = await create(client, len(data) + 1000)
    response = await patch(client, url, 0, data)
    assert response.status_code == 413
    await assert_nothing_left(app, inspector, id_of(url))


# --- concurrency ------------------------------------------------------------------------------


async def test_two_concurrent_patches_one_wins_bytes_exact(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    data = image_of(6 * MIB)
    url, _ = await create(client, len(data))
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for start in range(0, 3 * MIB, 256 * 1024):
            yield data[start : start + 256 * 1024]
            started.set()
            await asyncio.sleep(0.02)

    first = asyncio.create_task(patch_stream(client, url, 0, slow()))
    await started.wait()
    second = await patch(client, url, 0, data[: 3 * MIB])
    assert second.status_code in (409, 423)
    if second.status_code == 423:
        assert second.headers["retry-after"]
    assert (await first).status_code == 204
    assert (await head(client, url)).headers["upload-offset"] == str(3 * MIB)
    await send_all(client, url, data, 3 * MIB, start=3 * MIB)
    assert (await client.get(f"/v1/images/{id_of(url)}")).json()["sha256"] == sha256(data)


async def patch_stream(
    client: httpx.AsyncClient, url: str, offset: int, body: AsyncIterator[bytes]
) -> httpx.Response:
    return await client.patch(url, content=body, headers={**CHUNK, "Upload-Offset": str(offset)})


@pytest.mark.parametrize("same_process", [True, False], ids=["measured-on-the-way", "read-back"])
async def test_facts_of_an_animation_whichever_way_they_are_measured(
    client: httpx.AsyncClient, app: FastAPI, same_process: bool
) -> None:
    """One process that saw every byte measures on the way in; otherwise (another replica
    served a PATCH) the finished object is read back once. Same facts either way."""
    data = encode("GIF", (40, 30), frames=7)
    url, _ = await create(client, len(data))
    half = len(data) // 2
    assert (await patch(client, url, 0, data[:half])).status_code == 204
    if not same_process:
        app.state.runtime.resumable.chains.clear()  # as if another process had served it
    assert (await patch(client, url, half, data[half:])).status_code == 204
    image = (await client.get(f"/v1/images/{id_of(url)}")).json()
    assert (image["content_type"], image["frames"]) == ("image/gif", 7)
    assert (image["byte_size"], image["sha256"]) == (len(data), sha256(data))


async def test_metrics_count_uploads_and_received_bytes(client: httpx.AsyncClient) -> None:
    def value(text: str, sample: str) -> float:
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        return 0.0

    before = (await client.get("/metrics")).text
    data = image_of(3000)
    url, _ = await create(client, len(data))
    await send_all(client, url, data, 1000)
    refused, _ = await create(client, 100)
    await patch(client, refused, 0, PDF)
    after = (await client.get("/metrics")).text
    for event, more in (("started", 2), ("completed", 1), ("refused", 1)):
        sample = f'imagesvc_resumable_uploads_total{{event="{event}"}}'
        assert value(after, sample) - value(before, sample) == more, event
    received = 'imagesvc_upload_received_bytes_total{protocol="tus"}'
    assert value(after, received) - value(before, received) == len(data) + len(PDF)
