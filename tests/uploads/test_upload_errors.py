"""Bad and hostile uploads: each gets a clear problem+json and leaves nothing behind — no
row, no object, no open multipart upload."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest

from imagesvc.config import MIB
from tests.conftest import TEST_MAX_UPLOAD, Inspector
from tests.samples import HTML, PDF, SVG, jpeg, png_claiming

BOUNDARY = "imagesvc-test-boundary"


def multipart(*parts: bytes, close: bool = True) -> bytes:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + BOUNDARY.encode() + b"--\r\n" if close else b"")


def file_part(data: bytes, filename: bytes = b"photo.jpg", name: bytes = b"file") -> bytes:
    return (
        b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + data
    )


def text_part(name: str, value: str) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def assert_refused(
    client: httpx.AsyncClient,
    inspector: Inspector,
    owner: str,
    status: int,
    code: str,
    *,
    content: bytes | AsyncIterator[bytes],
    headers: dict[str, str],
) -> dict[str, object]:
    keys = inspector.keys()
    response = await client.post("/v1/images", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["request_id"]
    assert "Traceback" not in response.text
    assert await inspector.rows(owner) == 0
    assert inspector.keys() == keys
    assert inspector.open_uploads() == []
    return problem


CASES = {
    "empty raw body": (400, "bad_request", b"", {"Content-Type": "image/jpeg"}),
    "empty file part": (400, "bad_request", multipart(file_part(b"")), MULTIPART),
    "no file part": (
        400,
        "bad_request",
        multipart(text_part("visibility", "public")),
        MULTIPART,
    ),
    "file part under another name": (
        400,
        "bad_request",
        multipart(file_part(jpeg(), name=b"image")),
        MULTIPART,
    ),
    "two file parts": (
        400,
        "bad_request",
        multipart(file_part(jpeg()), file_part(jpeg())),
        MULTIPART,
    ),
    "no boundary": (
        400,
        "bad_request",
        multipart(file_part(jpeg())),
        {"Content-Type": "multipart/form-data"},
    ),
    "garbage multipart": (400, "bad_request", b"this is not multipart at all", MULTIPART),
    "boundary longer than RFC 2046 allows": (
        400,
        "bad_request",
        b"--" + b"b" * 300 + b"\r\n",
        {"Content-Type": "multipart/form-data; boundary=" + "b" * 300},
    ),
    "multipart without closing boundary": (
        400,
        "bad_request",
        multipart(file_part(jpeg()), close=False),
        MULTIPART,
    ),
    "oversized text field": (
        400,
        "bad_request",
        multipart(text_part("visibility", "x" * 5000), file_part(jpeg())),
        MULTIPART,
    ),
    "random bytes as image/jpeg": (
        415,
        "unsupported_media_type",
        os.urandom(4096),
        {"Content-Type": "image/jpeg"},
    ),
    "svg": (415, "unsupported_media_type", SVG, {"Content-Type": "image/svg+xml"}),
    "svg as png in multipart": (
        415,
        "unsupported_media_type",
        multipart(file_part(SVG, b"logo.png")),
        MULTIPART,
    ),
    "html as jpeg": (415, "unsupported_media_type", HTML, {"Content-Type": "image/jpeg"}),
    "pdf as jpeg": (
        415,
        "unsupported_media_type",
        multipart(file_part(PDF, b"scan.jpg")),
        MULTIPART,
    ),
    "jpeg cut before its frame header": (
        415,
        "unsupported_media_type",
        jpeg()[:20],
        {"Content-Type": "image/jpeg"},
    ),
    "text/html declared": (415, "unsupported_media_type", jpeg(), {"Content-Type": "text/html"}),
    "png claiming 100000x100000": (
        413,
        "payload_too_large",
        png_claiming(100_000, 100_000),
        {"Content-Type": "image/png"},
    ),
    "oversize with content-length": (
        413,
        "payload_too_large",
        jpeg() + b"\0" * TEST_MAX_UPLOAD,
        {"Content-Type": "image/jpeg"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_upload_is_refused_and_leaves_nothing(
    case: str, client: httpx.AsyncClient, inspector: Inspector, owner: str
) -> None:
    status, code, content, headers = CASES[case]
    await assert_refused(client, inspector, owner, status, code, content=content, headers=headers)


async def _chunked(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_oversize_stream_aborts_the_multipart_upload(
    client: httpx.AsyncClient, inspector: Inspector, owner: str
) -> None:
    # No Content-Length (chunked) and well past one 5 MiB part, so S3 has an open
    # multipart upload with parts in it when the limit trips.
    data = jpeg() + os.urandom(TEST_MAX_UPLOAD + MIB)
    problem = await assert_refused(
        client,
        inspector,
        owner,
        413,
        "payload_too_large",
        content=_chunked(data),
        headers={"Content-Type": "image/jpeg"},
    )
    assert str(TEST_MAX_UPLOAD) in str(problem["detail"])


async def test_oversize_multipart_file_is_counted_while_streaming(
    client: httpx.AsyncClient, inspector: Inspector, owner: str
) -> None:
    body = multipart(file_part(jpeg() + os.urandom(TEST_MAX_UPLOAD)))
    await assert_refused(
        client,
        inspector,
        owner,
        413,
        "payload_too_large",
        content=_chunked(body),
        headers=MULTIPART,
    )


async def test_gif_over_the_pixel_limit_by_frame_count(
    client: httpx.AsyncClient, inspector: Inspector, owner: str, app: object
) -> None:
    # 3000 x 3000 x 6 frames = 54 M pixels > 50 M: only the frame count tips it over.
    from tests.samples import encode

    data = encode("GIF", (3000, 3000), frames=6)
    await assert_refused(
        client,
        inspector,
        owner,
        413,
        "payload_too_large",
        content=data,
        headers={"Content-Type": "image/gif"},
    )


HOSTILE_NAMES = [
    (b"../../../etc/passwd", "passwd"),
    (b"..\\..\\windows\\system32\\evil.jpg", "evil.jpg"),
    (b"a" * 1000 + b".jpg", "a" * 251 + ".jpg"),
    (b"nul\x00byte.jpg", "nulbyte.jpg"),
    ("фото 📷 ünïcödé.jpg".encode(), "фото 📷 ünïcödé.jpg"),
    ("\u202egpj.exe".encode(), "gpj.exe"),
    (b"...", None),
]


@pytest.mark.parametrize(("raw", "expected"), HOSTILE_NAMES)
async def test_hostile_filenames_are_sanitised_metadata(
    raw: bytes,
    expected: str | None,
    client: httpx.AsyncClient,
    inspector: Inspector,
    owner: str,
) -> None:
    keys = inspector.keys()
    response = await client.post(
        "/v1/images", content=multipart(file_part(jpeg(), raw)), headers=MULTIPART
    )
    assert response.status_code == 201, response.text
    image = response.json()
    assert image["filename"] == expected
    (key,) = inspector.keys() - keys
    assert key.endswith(f"img/{image['id']}/original")
    assert await inspector.rows(owner) == 1
