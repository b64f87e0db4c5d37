"""Direct uploads (SPEC §11) through the API on every backend: rclone's `serve s3` (checks
SigV4), moto's server (accepts any PUT) and the local backend (the service's own upload
URL). The bytes go from a plain HTTP client without an API key straight to the URL the
service answered, with exactly the headers it answered."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from imagesvc.config import Settings
from tests.api import complete, fetch_content, put_direct, start_direct
from tests.conftest import TEST_MAX_UPLOAD, Inspector, client_for, running_app
from tests.samples import HTML, PDF, encode, jpeg


def keys_of(inspector: Inspector, image_id: str) -> set[str]:
    stored: set[str] = inspector.keys()
    return {key for key in stored if image_id in key}


def backend_of(settings: Settings) -> str:
    if settings.storage_backend == "local":
        return "local"
    return "rclone" if settings.s3_key_prefix else "moto"  # conftest: rclone has a prefix


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["code"] == code
    assert "Traceback" not in response.text
    return problem


async def assert_gone(client: httpx.AsyncClient, inspector: Inspector, image_id: str) -> None:
    """Nothing of the upload is left: no row, no object, and the id answers 404."""
    assert await inspector.row(image_id) is None
    assert keys_of(inspector, image_id) == set()
    assert inspector.open_uploads() == []
    assert_problem(await complete(client, image_id), 404, "not_found")
    assert (await client.get(f"/v1/images/{image_id}")).status_code == 404


async def test_round_trip(
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    settings: Settings,
) -> None:
    data = jpeg((320, 200))
    digest = hashlib.sha256(data).hexdigest()
    created = await start_direct(
        client, data, filename="../../holiday.jpg", visibility="public", sha256=digest.upper()
    )
    image_id, upload = created["id"], created["upload"]
    assert image_id.startswith("img_")
    assert upload["method"] == "PUT"
    assert upload["headers"] == {"Content-Type": "image/jpeg", "Content-Length": str(len(data))}
    assert upload["expires_at"].endswith("Z")
    if settings.storage_backend == "s3":
        assert "X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost" in upload["url"]
    else:
        # Relative: never built from the request's Host (IMAGESVC_PUBLIC_API_URL unset).
        assert upload["url"].startswith("/v1/direct-uploads/")

    # Until completed: not listed, not readable, not servable.
    assert (await client.get(f"/v1/images/{image_id}")).status_code == 404
    assert (await client.get(f"/v1/images/{image_id}/content")).status_code == 404
    listed = (await client.get("/v1/images")).json()["items"]
    assert image_id not in {item["id"] for item in listed}

    put = await put_direct(anonymous, upload, data)
    assert put.status_code == 200, put.text
    response = await complete(client, image_id)
    assert response.status_code == 200, response.text
    image = response.json()
    assert image["id"] == image_id
    assert image["status"] == "ready"
    assert (image["width"], image["height"], image["content_type"]) == (320, 200, "image/jpeg")
    assert (image["byte_size"], image["sha256"]) == (len(data), digest)
    assert (image["filename"], image["visibility"]) == ("holiday.jpg", "public")
    assert image["blurhash"]
    assert image["dominant_color"]

    content = await fetch_content(client, image_id)
    assert content.status_code == 200
    assert content.content == data
    assert content.headers["content-type"] == "image/jpeg"
    assert (await client.get(f"/v1/images/{image_id}")).json() == image
    listed = (await client.get("/v1/images")).json()["items"]
    assert image_id in {item["id"] for item in listed}
    # The checked copy is what stays; the key the client wrote is gone.
    assert keys_of(inspector, image_id) == {(await inspector.row(image_id)).storage_key}  # type: ignore[union-attr]

    again = await complete(client, image_id)  # a second complete answers the ready image
    assert again.status_code == 200
    assert again.json() == image
    assert (await client.delete(f"/v1/images/{image_id}")).status_code == 204
    await assert_gone(client, inspector, image_id)


async def test_the_type_comes_from_the_bytes_not_the_hint(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    data = encode("PNG", (40, 30))
    for hint in ("image/jpeg", "application/octet-stream"):
        created = await start_direct(client, data, content_type=hint)
        assert created["upload"]["headers"]["Content-Type"] == hint
        assert (await put_direct(anonymous, created["upload"], data)).status_code == 200
        image = (await complete(client, created["id"])).json()
        assert image["content_type"] == "image/png"
        # Redirects serve the stored object's own type: it is the detected one too.
        content = await fetch_content(client, created["id"])
        assert content.headers["content-type"] == "image/png"
        assert content.content == data


async def test_complete_before_the_put_is_409_and_changes_nothing(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, inspector: Inspector
) -> None:
    data = jpeg()
    created = await start_direct(client, data)
    image_id = created["id"]
    before = await inspector.row(image_id)
    assert before is not None
    problem = assert_problem(await complete(client, image_id), 409, "upload_incomplete")
    assert "PUT" in problem["detail"]
    after = await inspector.row(image_id)
    assert after is not None
    columns = [c.key for c in after.__table__.columns]
    assert [getattr(after, c) for c in columns] == [getattr(before, c) for c in columns]
    assert keys_of(inspector, image_id) == set()
    # The client may retry once the bytes are there.
    assert (await put_direct(anonymous, created["upload"], data)).status_code == 200
    assert (await complete(client, image_id)).status_code == 200


@pytest.mark.parametrize(
    "body",
    [PDF, HTML, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["pdf", "html", "broken png"],
)
async def test_bytes_that_are_not_an_image_are_415_and_leave_nothing(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, inspector: Inspector, body: bytes
) -> None:
    created = await start_direct(client, body, content_type="image/png")
    assert (await put_direct(anonymous, created["upload"], body)).status_code == 200
    assert_problem(await complete(client, created["id"]), 415, "unsupported_media_type")
    await assert_gone(client, inspector, created["id"])


async def test_a_sha256_mismatch_is_422_and_leaves_nothing(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, inspector: Inspector
) -> None:
    data = jpeg()
    created = await start_direct(client, data, sha256=hashlib.sha256(b"other").hexdigest())
    assert (await put_direct(anonymous, created["upload"], data)).status_code == 200
    assert_problem(await complete(client, created["id"]), 422, "sha256_mismatch")
    await assert_gone(client, inspector, created["id"])


async def test_a_put_of_another_size_never_becomes_an_image(
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    settings: Settings,
) -> None:
    declared, sent = jpeg((64, 48)), jpeg((300, 300))
    assert len(sent) != len(declared)
    created = await start_direct(client, declared)
    image_id = created["id"]
    # The body's own length goes out (httpx sets it), not the signed one.
    put = await put_direct(anonymous, created["upload"], sent, drop=("Content-Length",))
    if backend_of(settings) == "moto":
        assert put.status_code == 200  # moto stores whatever arrives: complete must check
        assert keys_of(inspector, image_id) != set()
        problem = assert_problem(await complete(client, image_id), 422, "upload_size_mismatch")
        assert str(len(declared)) in problem["detail"]
        await assert_gone(client, inspector, image_id)
    else:
        # rclone checks the signature (the length is a signed header); the local URL
        # checks the length itself. Nothing arrived, so nothing is completed or removed.
        assert put.status_code == 403, put.text
        assert keys_of(inspector, image_id) == set()
        assert_problem(await complete(client, image_id), 409, "upload_incomplete")
        assert await inspector.row(image_id) is not None


async def test_an_object_over_the_limit_is_413_at_complete(
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    settings: Settings,
) -> None:
    if backend_of(settings) != "moto":
        pytest.skip("only moto stores a PUT that does not match its signed length")
    created = await start_direct(client, jpeg())
    huge = b"\xff\xd8\xff" + b"\x00" * TEST_MAX_UPLOAD
    put = await put_direct(anonymous, created["upload"], huge, drop=("Content-Length",))
    assert put.status_code == 200
    assert_problem(await complete(client, created["id"]), 413, "payload_too_large")
    await assert_gone(client, inspector, created["id"])


async def test_the_presigned_url_is_bound_to_its_length_and_type(
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    settings: Settings,
) -> None:
    if backend_of(settings) == "moto":
        pytest.skip("moto checks no signature (see the size test above)")
    data = jpeg()
    created = await start_direct(client, data)
    upload, image_id = created["upload"], created["id"]
    longer = await put_direct(anonymous, upload, data + b"\x00", drop=("Content-Length",))
    assert longer.status_code == 403, longer.text
    shorter = await put_direct(anonymous, upload, data[:-1], drop=("Content-Length",))
    assert shorter.status_code == 403, shorter.text
    other_type = await put_direct(anonymous, upload, data, headers={"Content-Type": "text/html"})
    assert other_type.status_code == 403, other_type.text
    assert keys_of(inspector, image_id) == set()
    assert (await put_direct(anonymous, upload, data)).status_code == 200


async def test_another_owners_complete_is_404(
    app: FastAPI,
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
) -> None:
    data = jpeg()
    created = await start_direct(client, data)
    assert (await put_direct(anonymous, created["upload"], data)).status_code == 200
    async with client_for(app, "someone-else") as other:
        problem = assert_problem(await complete(other, created["id"]), 404, "not_found")
        mine = assert_problem(
            await complete(client, "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S"), 404, "not_found"
        )
        assert problem.keys() == mine.keys()
        row = await inspector.row(created["id"])
        assert row is not None
        assert row.status == "pending"  # untouched
        assert (await complete(client, created["id"])).status_code == 200
        assert_problem(await complete(other, created["id"]), 404, "not_found")
        assert (await other.get(f"/v1/images/{created['id']}")).status_code == 404
    assert_problem(await complete(anonymous, created["id"]), 401, "unauthorized")


async def test_a_streamed_upload_cannot_be_completed(client: httpx.AsyncClient) -> None:
    # Completing an image uploaded through POST /v1/images answers it (it is ready).
    uploaded = await client.post(
        "/v1/images", content=jpeg(), headers={"Content-Type": "image/jpeg"}
    )
    completed = await complete(client, uploaded.json()["id"])
    assert completed.status_code == 200
    assert completed.json() == uploaded.json()


async def test_a_declared_size_over_the_limit_is_413_at_once(
    client: httpx.AsyncClient, owner: str, inspector: Inspector
) -> None:
    response = await client.post(
        "/v1/images/direct", json={"byte_size": TEST_MAX_UPLOAD + 1, "content_type": "image/png"}
    )
    assert_problem(response, 413, "payload_too_large")
    assert await inspector.rows(owner) == 0
    exactly = await client.post("/v1/images/direct", json={"byte_size": TEST_MAX_UPLOAD})
    assert exactly.status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"byte_size": 0},
        {"byte_size": -5},
        {"byte_size": "many"},
        {"byte_size": 1.5},
        {"byte_size": 10, "content_type": "text/html"},
        {"byte_size": 10, "content_type": "image/svg+xml"},
        {"byte_size": 10, "sha256": "abc"},
        {"byte_size": 10, "sha256": "z" * 64},
        {"byte_size": 10, "visibility": "everyone"},
        {"byte_size": 10, "filename": "x" * 2000},
        {"byte_size": 10, "surprise": True},
        [10],
        "10",
    ],
)
async def test_a_malformed_body_is_422(
    client: httpx.AsyncClient, owner: str, inspector: Inspector, body: Any
) -> None:
    response = await client.post("/v1/images/direct", json=body)
    problem = assert_problem(response, 422, "invalid_parameter")
    assert problem["errors"]
    assert await inspector.rows(owner) == 0


async def test_a_body_that_is_not_json_is_422(
    client: httpx.AsyncClient, owner: str, inspector: Inspector
) -> None:
    response = await client.post(
        "/v1/images/direct", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 422, "invalid_parameter")
    assert await inspector.rows(owner) == 0


async def test_idempotency_key_replays_the_same_id_and_upload(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, owner: str, inspector: Inspector
) -> None:
    data = jpeg()
    body = {"byte_size": len(data), "content_type": "image/jpeg", "filename": "a.jpg"}
    key = {"Idempotency-Key": "direct-42"}
    first = await client.post("/v1/images/direct", json=body, headers=key)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    again = await client.post("/v1/images/direct", json=body, headers=key)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    # The same upload, with a freshly signed URL: a URL is a credential, so none is kept in
    # the database to replay.
    replayed, original = again.json(), first.json()
    assert replayed["id"] == original["id"]
    assert replayed["upload"]["expires_at"] == original["upload"]["expires_at"]
    assert replayed["upload"]["headers"] == original["upload"]["headers"]
    assert await inspector.rows(owner) == 1
    other = await client.post("/v1/images/direct", json=body | {"filename": "b.jpg"}, headers=key)
    assert_problem(other, 409, "idempotency_key_reused")
    # The key spans both ways of uploading: a streamed upload with it is another request.
    streamed = await client.post(
        "/v1/images", content=data, headers=key | {"Content-Type": "image/jpeg"}
    )
    assert_problem(streamed, 409, "idempotency_key_reused")
    assert_problem(
        await client.post("/v1/images/direct", json=body, headers={"Idempotency-Key": "x" * 256}),
        422,
        "invalid_parameter",
    )
    # The replayed URL is the same upload: completing it completes the first.
    assert (await put_direct(anonymous, again.json()["upload"], data)).status_code == 200
    assert (await complete(client, first.json()["id"])).status_code == 200
    assert await inspector.rows(owner) == 1


async def test_rewriting_the_upload_after_complete_changes_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    inspector: Inspector,
    settings: Settings,
) -> None:
    """The URL stays valid until it expires, so a client may PUT again after `complete`:
    the image is served from the copy the service checked, never from the key the client
    writes, and gc removes what the client wrote since."""
    data = jpeg((50, 50), color=(10, 200, 10))
    created = await start_direct(client, data)
    upload, image_id = created["upload"], created["id"]
    assert (await put_direct(anonymous, upload, data)).status_code == 200
    image = (await complete(client, image_id)).json()
    swapped = PDF.ljust(len(data), b" ")
    assert len(swapped) == len(data)
    rewrite = await put_direct(anonymous, upload, swapped)
    if settings.storage_backend == "local":
        assert rewrite.status_code == 403  # the service's own URL ends with the upload
        assert (await fetch_content(client, image_id)).content == data
        return
    assert rewrite.status_code == 200  # a presigned URL cannot be revoked
    assert (await complete(client, image_id)).json() == image
    assert (await fetch_content(client, image_id)).content == data
    row = await inspector.row(image_id)
    assert row is not None
    assert len(keys_of(inspector, image_id)) == 2
    landing = {k for k in keys_of(inspector, image_id) if k != row.storage_key}
    report = await app.state.runtime.reconciler.run(grace=0)
    assert {k for k in report.orphan_objects if image_id in k} == landing
    assert keys_of(inspector, image_id) == {row.storage_key}
    assert inspector.read(row.storage_key) == data


async def test_the_local_upload_url_is_absolute_only_from_configuration(
    settings: Settings,
) -> None:
    """The local backend's URL points at the service itself: from IMAGESVC_PUBLIC_API_URL
    when set, never from the request's Host (a forged one would send the token there)."""
    if settings.storage_backend != "local":
        pytest.skip("S3 answers presigned URLs of the store")
    configured = settings.model_copy(update={"public_api_url": "https://images.example.com"})
    async for app in running_app(configured):
        async with client_for(app, "direct-public-url") as api:
            created = await api.post(
                "/v1/images/direct",
                json={"byte_size": 10, "content_type": "image/jpeg"},
                headers={"Host": "evil.example"},
            )
            assert created.status_code == 201, created.text
            url = created.json()["upload"]["url"]
            assert url.startswith("https://images.example.com/v1/direct-uploads/")
            assert "evil" not in created.text
