"""The image lifecycle over HTTP: create, get, list, update, content, delete — on every
backend (MariaDB + moto S3, MariaDB + rclone S3, SQLite + local directory)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx
import pytest

from imagesvc.config import MIB
from tests.api import fetch_content, post_form
from tests.conftest import Inspector
from tests.samples import encode, jpeg


async def test_upload_get_list_content_delete(
    client: httpx.AsyncClient, inspector: Inspector, backend: str
) -> None:
    data = jpeg((640, 480))
    keys_before = inspector.keys()

    created = await post_form(client, data, "holiday.jpg")
    assert created.status_code == 201, created.text
    image = created.json()
    assert created.headers["location"] == f"/v1/images/{image['id']}"
    assert image["id"].startswith("img_")
    assert len(image["id"]) == 30
    assert image["status"] == "ready"
    assert image["content_type"] == "image/jpeg"
    assert (image["width"], image["height"], image["frames"]) == (640, 480, 1)
    assert image["byte_size"] == len(data)
    assert image["sha256"] == hashlib.sha256(data).hexdigest()
    assert image["filename"] == "holiday.jpg"
    assert image["visibility"] == "private"
    assert image["created_at"].endswith("Z")
    assert image["links"] == {
        "self": f"/v1/images/{image['id']}",
        "content": f"/v1/images/{image['id']}/content",
    }

    # Exactly one new object, holding exactly the uploaded bytes.
    new_keys = inspector.keys() - keys_before
    assert len(new_keys) == 1
    (key,) = new_keys
    assert inspector.read(key) == data
    assert "holiday" not in key

    fetched = await client.get(f"/v1/images/{image['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == image

    listed = await client.get("/v1/images")
    assert listed.status_code == 200
    assert listed.json() == {"items": [image], "next_cursor": None}

    content = await client.get(f"/v1/images/{image['id']}/content")
    if backend == "s3":
        assert content.status_code == 302
        assert "max-age" in content.headers["cache-control"]
        signed = content.headers["location"]
        assert "X-Amz-Signature=" in signed
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in signed
        async with httpx.AsyncClient() as outside:
            direct = await outside.get(signed)
        assert direct.status_code == 200
        assert direct.content == data
    else:
        assert content.status_code == 200
        assert content.content == data
        assert content.headers["content-type"] == "image/jpeg"
        assert content.headers["etag"] == f'"{image["sha256"]}"'

    deleted = await client.delete(f"/v1/images/{image['id']}")
    assert deleted.status_code == 204
    assert inspector.keys() == keys_before
    assert await inspector.row(image["id"]) is None
    for path in ("", "/content"):
        gone = await client.get(f"/v1/images/{image['id']}{path}")
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"
    again = await client.delete(f"/v1/images/{image['id']}")
    assert again.status_code == 404
    assert again.json()["code"] == "not_found"


async def test_raw_body_upload_with_filename_header(client: httpx.AsyncClient) -> None:
    data = encode("PNG", (33, 17))
    response = await client.post(
        "/v1/images",
        content=data,
        headers={"Content-Type": "application/octet-stream", "X-Filename": "caf%C3%A9.png"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["content_type"] == "image/png"
    assert (body["width"], body["height"]) == (33, 17)
    assert body["filename"] == "café.png"


async def test_raw_upload_filename_in_raw_utf8_and_no_content_type(
    client: httpx.AsyncClient,
) -> None:
    # Many clients put UTF-8 straight into the header; some send no Content-Type at all
    # (accepted as a raw body: the bytes decide the type anyway).
    response = await client.post(
        "/v1/images",
        content=encode("WEBP", (8, 8)),
        headers={b"X-Filename": "été.webp".encode()},
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "été.webp"
    assert response.json()["content_type"] == "image/webp"


@pytest.mark.parametrize(
    ("fmt", "content_type", "options"),
    [
        ("JPEG", "image/jpeg", {}),
        ("PNG", "image/png", {}),
        ("GIF", "image/gif", {}),
        ("WEBP", "image/webp", {}),
        ("AVIF", "image/avif", {}),
    ],
)
async def test_type_and_size_come_from_the_bytes(
    client: httpx.AsyncClient, fmt: str, content_type: str, options: dict[str, Any]
) -> None:
    data = encode(fmt, (71, 29), **options)
    # The declared type is deliberately wrong: only the bytes count.
    response = await client.post("/v1/images", files={"file": ("x.bin", data, "text/plain")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["content_type"] == content_type
    assert (body["width"], body["height"], body["frames"]) == (71, 29, 1)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
async def test_animated_images_report_their_frames(client: httpx.AsyncClient, fmt: str) -> None:
    response = await post_form(client, encode(fmt, (20, 10), frames=4))
    assert response.status_code == 201, response.text
    assert response.json()["frames"] == 4


async def test_two_uploads_with_the_same_name_stay_two_images(
    client: httpx.AsyncClient,
) -> None:
    first, second = jpeg(color=(255, 0, 0)), jpeg(color=(0, 0, 255))
    a = (await post_form(client, first, "photo.jpg")).json()
    b = (await post_form(client, second, "photo.jpg")).json()
    assert a["id"] != b["id"]
    assert a["sha256"] != b["sha256"]
    for image, data in ((a, first), (b, second)):
        got = await fetch_content(client, image["id"])
        assert got.status_code == 200
        assert got.content == data


async def test_large_upload_goes_through_s3_multipart(
    client: httpx.AsyncClient, inspector: Inspector
) -> None:
    # Past the 5 MiB part size: CreateMultipartUpload + 3 parts + Complete on S3.
    data = jpeg() + os.urandom(11 * MIB)
    response = await client.post("/v1/images", content=data, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["byte_size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    row = await inspector.row(body["id"])
    assert row is not None
    assert inspector.read(row.storage_key) == data
    assert inspector.open_uploads() == []


async def test_visibility_form_field_and_patch(client: httpx.AsyncClient) -> None:
    created = await post_form(client, jpeg(), visibility="public")
    assert created.status_code == 201
    image = created.json()
    assert image["visibility"] == "public"

    patched = await client.patch(
        f"/v1/images/{image['id']}", json={"visibility": "private", "filename": "../x/new.jpg"}
    )
    assert patched.status_code == 200
    assert patched.json()["visibility"] == "private"
    assert patched.json()["filename"] == "new.jpg"

    cleared = await client.patch(f"/v1/images/{image['id']}", json={"filename": None})
    assert cleared.json()["filename"] is None
    assert cleared.json()["visibility"] == "private"

    made_public = await client.patch(f"/v1/images/{image['id']}", json={"visibility": "public"})
    assert made_public.json()["visibility"] == "public"
    # Merge-patch null removes the member: visibility goes back to its default.
    reset = await client.patch(f"/v1/images/{image['id']}", json={"visibility": None})
    assert reset.status_code == 200
    assert reset.json()["visibility"] == "private"

    for bad in ({"visibility": "secret"}, {"owner": "someone"}, {"filename": 7}):
        refused = await client.patch(f"/v1/images/{image['id']}", json=bad)
        assert refused.status_code == 422, bad
        assert refused.headers["content-type"] == "application/problem+json"
    missing = await client.patch("/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S", json={})
    assert missing.status_code == 404


async def test_visibility_in_query_and_invalid_visibility(
    client: httpx.AsyncClient, inspector: Inspector, owner: str
) -> None:
    response = await client.post(
        "/v1/images?visibility=public", content=jpeg(), headers={"Content-Type": "image/jpeg"}
    )
    assert response.json()["visibility"] == "public"
    keys = inspector.keys()
    refused = await post_form(client, jpeg(), visibility="everyone")
    assert refused.status_code == 422
    assert inspector.keys() == keys
    assert await inspector.rows(owner) == 1
