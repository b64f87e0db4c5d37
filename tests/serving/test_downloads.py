"""HEAD, downloads and names (SPEC §9) on every backend: HEAD answers what GET would
without opening the object; `?download=1` names the file, proxied or baked into the signed
store URL; hostile filenames never break a header; multipart `filename*` wins."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi import FastAPI

from tests.api import follow, upload
from tests.conftest import serving
from tests.samples import jpeg

_VOLATILE = {"x-request-id", "date", "server"}
HOSTILE = 'Été "quoted"; name=evil\r\nX-Injected: 1 %41 ✓.jpg'
DISPOSITION = re.compile(
    r"(inline|attachment); filename=\"([^\"\\\\;%\r\n]*)\"; "
    r"filename\*=UTF-8''([A-Za-z0-9!#$&+^`|~%._-]+)"
)


@pytest.fixture
def opened(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys the store was asked to open for reading (a spy on the real store)."""
    store = app.state.runtime.store
    real = store.open_read
    keys: list[str] = []

    async def open_read(key: str, *args: Any, **kwargs: Any) -> Any:
        keys.append(key)
        return await real(key, *args, **kwargs)

    monkeypatch.setattr(store, "open_read", open_read)
    return keys


def headers_of(response: httpx.Response) -> dict[str, str]:
    headers = {k: v for k, v in response.headers.items() if k not in _VOLATILE}
    if response.status_code == 302:
        # A redirect may be cached for what is left of its signature: a second apart at most.
        headers["cache-control"] = headers["cache-control"].split("max-age=")[0]
    return headers


def max_age(response: httpx.Response) -> int:
    return int(response.headers["cache-control"].split("max-age=")[1].split(",")[0])


def parse_disposition(value: str) -> tuple[str, str, str]:
    match = DISPOSITION.fullmatch(value)
    assert match, value
    kind, fallback, encoded = match.groups()
    return kind, fallback, unquote(encoded, errors="strict")


async def test_head_answers_what_get_would_without_reading_the_object(
    app: FastAPI, client: httpx.AsyncClient, opened: list[str]
) -> None:
    for redirect in (True, False):
        # A fresh image per mode: kept answers (web/hot_reads.py) outlive a mode switch.
        image = await upload(client, jpeg((120, 90)), filename="head.jpg")
        paths = [f"/v1/images/{image['id']}/content", f"/v1/images/{image['id']}/variants/40x40"]
        with serving(app, redirect=redirect):
            await client.get(paths[1])  # rendered once, so HEAD finds it ready
            for path in paths:
                get = await client.get(path)
                etag = get.headers["etag"]
                for extra in ({}, {"If-None-Match": etag}, {"Range": "bytes=0-9"}):
                    get = await client.get(path, headers=extra)
                    opened.clear()
                    head = await client.head(path, headers=extra)
                    assert head.status_code == get.status_code, (path, extra)
                    assert headers_of(head) == headers_of(get), (path, extra)
                    assert abs(max_age(head) - max_age(get)) <= 1
                    assert head.content == b""
                    assert opened == []  # no object was opened for HEAD
                    if get.status_code == 200:
                        assert head.headers["content-length"] == str(len(get.content))
    missing = await client.head("/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S/content")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    anonymous = await client.head(paths[0], headers={"Authorization": "Bearer nope"})
    assert anonymous.status_code == 401


async def test_proxied_bytes_are_inline_nosniff_and_download_names_the_file(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    data = jpeg((64, 48))
    image = await upload(client, data, filename="%C3%89t%C3%A9 photo.jpg")  # X-Filename
    unnamed = await upload(client, data)
    base = f"/v1/images/{image['id']}"
    with serving(app, redirect=False):
        inline = await client.get(f"{base}/content")
        assert inline.headers["x-content-type-options"] == "nosniff"
        assert parse_disposition(inline.headers["content-disposition"]) == (
            "inline",
            "Ete photo.jpg",
            "Été photo.jpg",
        )
        download = await client.get(f"{base}/content", params={"download": "1"})
        assert download.content == data
        assert parse_disposition(download.headers["content-disposition"])[0] == "attachment"
        assert download.headers["x-content-type-options"] == "nosniff"
        off = await client.get(f"{base}/content", params={"download": "0"})
        assert parse_disposition(off.headers["content-disposition"])[0] == "inline"
        bad = await client.get(f"{base}/content", params={"download": "maybe"})
        assert bad.status_code == 422
        thumb = await client.get(
            f"{base}/variants/32x32", params={"download": "1", "format": "png"}
        )
        assert thumb.headers["x-content-type-options"] == "nosniff"
        assert parse_disposition(thumb.headers["content-disposition"]) == (
            "attachment",
            "Ete photo-32x32.png",
            "Été photo-32x32.png",
        )
        nameless = await client.get(f"/v1/images/{unnamed['id']}/content?download=1")
        assert parse_disposition(nameless.headers["content-disposition"])[1:] == (
            f"{unnamed['id']}.jpg",
            f"{unnamed['id']}.jpg",
        )


async def test_a_hostile_filename_never_breaks_a_header(
    app: FastAPI, client: httpx.AsyncClient, backend: str
) -> None:
    image = await upload(client, jpeg())
    patched = await client.patch(f"/v1/images/{image['id']}", json={"filename": HOSTILE})
    stored = patched.json()["filename"]
    assert "\r" not in stored
    assert '"' in stored
    assert ";" in stored  # kept as metadata: only the header needs care
    with serving(app, redirect=False):
        response = await client.get(f"/v1/images/{image['id']}/content?download=1")
    header = response.headers["content-disposition"]
    assert "x-injected" not in response.headers
    kind, fallback, exact = parse_disposition(header)
    assert (kind, exact) == ("attachment", stored)
    assert fallback.isascii()
    if backend == "s3":  # baked into the signed URL, and answered by the store itself
        redirected = await client.get(f"/v1/images/{image['id']}/content?download=1")
        assert redirected.status_code == 302
        followed = await follow(redirected)
        assert followed.status_code == 200
        assert "x-injected" not in followed.headers


async def test_a_download_redirect_carries_the_name_to_the_store(
    client: httpx.AsyncClient, backend: str, app: FastAPI
) -> None:
    if backend != "s3":
        pytest.skip("the local backend always proxies (tested above)")
    data = jpeg((50, 40))
    image = await upload(client, data, filename="holiday.jpg")
    plain = await client.get(f"/v1/images/{image['id']}/content")
    download = await client.get(f"/v1/images/{image['id']}/content", params={"download": "1"})
    assert download.status_code == 302
    assert "response-content-disposition" not in plain.headers["location"]
    assert "response-content-disposition=attachment" in download.headers["location"]
    assert download.headers["location"] != plain.headers["location"]
    followed = await follow(download)
    assert followed.content == data
    expected = "attachment; filename=\"holiday.jpg\"; filename*=UTF-8''holiday.jpg"
    # moto and rclone both answer with the signed response-content-disposition.
    assert followed.headers.get("content-disposition") == expected
    # A public image behind IMAGESVC_PUBLIC_BASE_URL: a download still gets a signed URL.
    await client.patch(f"/v1/images/{image['id']}", json={"visibility": "public"})
    with serving(app, public_base_url="https://cdn.example.test"):
        cdn = await client.get(f"/v1/images/{image['id']}/content")
        assert cdn.headers["location"].startswith("https://cdn.example.test/")
        signed = await client.get(f"/v1/images/{image['id']}/content?download=1")
        assert "response-content-disposition" in signed.headers["location"]


def _multipart(disposition: str, data: bytes) -> tuple[bytes, str]:
    boundary = "imagesvc-test-boundary"
    body = (
        (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ("filename=\"plain.jpg\"; filename*=UTF-8''%E5%86%99%E7%9C%9F.jpg", "写真.jpg"),
        ("filename*=utf-8'ja'%E5%86%99%E7%9C%9F.jpg; filename=\"plain.jpg\"", "写真.jpg"),
        ("filename*=iso-8859-1''caf%E9.jpg", "café.jpg"),
        ("filename=\"plain.jpg\"; filename*=UTF-8''%FF%FE.jpg", "plain.jpg"),  # not UTF-8
        ("filename=\"plain.jpg\"; filename*=koi8-r''x.jpg", "plain.jpg"),  # another charset
        ("filename=\"a; filename*=UTF-8''evil.jpg\"", "a; filename*=UTF-8''evil.jpg"),  # quoted
    ],
)
async def test_multipart_filename_star_wins_over_filename(
    client: httpx.AsyncClient, parameters: str, expected: str
) -> None:
    body, content_type = _multipart(f'form-data; name="file"; {parameters}', jpeg())
    response = await client.post("/v1/images", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == expected
