"""Serving bytes (redirect and proxy: ETag, Range, If-None-Match), and the problems every
route answers with."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import serving
from tests.samples import jpeg


@pytest.fixture
def proxy_client(app: FastAPI, client: httpx.AsyncClient) -> Iterator[httpx.AsyncClient]:
    """The same app in proxy mode: every backend streams the bytes itself."""
    with serving(app, redirect=False):
        yield client


async def test_proxy_serving_with_etag_range_and_conditional_requests(
    proxy_client: httpx.AsyncClient,
) -> None:
    data = jpeg((300, 200)) + os.urandom(300_000)  # larger than one read chunk
    created = await proxy_client.post(
        "/v1/images", content=data, headers={"Content-Type": "image/jpeg"}
    )
    image = created.json()
    url = f"/v1/images/{image['id']}/content"

    full = await proxy_client.get(url)
    assert full.status_code == 200
    assert full.content == data
    assert full.headers["content-length"] == str(len(data))
    assert full.headers["accept-ranges"] == "bytes"
    assert "immutable" in full.headers["cache-control"]
    etag = full.headers["etag"]
    assert etag == f'"{image["sha256"]}"'

    cases = {
        "bytes=0-9": (0, 9),
        "bytes=100-199": (100, 199),
        "bytes=262000-262200": (262000, 262200),  # spans a read-chunk boundary
        f"bytes={len(data) - 5}-": (len(data) - 5, len(data) - 1),
        "bytes=-7": (len(data) - 7, len(data) - 1),
        f"bytes=10-{len(data) * 2}": (10, len(data) - 1),
    }
    for header, (start, end) in cases.items():
        part = await proxy_client.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == data[start : end + 1], header
        assert part.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
        assert part.headers["content-length"] == str(end - start + 1)

    past_end = await proxy_client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past_end.status_code == 416
    assert past_end.headers["content-type"] == "application/problem+json"
    assert past_end.headers["content-range"] == f"bytes */{len(data)}"

    # Ranges we do not serve partially (multiple, malformed) get the whole image.
    for header in (
        "bytes=0-1,5-6",
        "bytes=abc",
        "items=0-5",
        "bytes=9-2",
        "bytes=" + "9" * 5000 + "-",
    ):
        whole = await proxy_client.get(url, headers={"Range": header})
        assert whole.status_code == 200, header
        assert whole.content == data

    not_modified = await proxy_client.get(url, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    in_list = await proxy_client.get(url, headers={"If-None-Match": f'"other", {etag}'})
    assert in_list.status_code == 304
    changed = await proxy_client.get(url, headers={"If-None-Match": '"something-else"'})
    assert changed.status_code == 200

    # If-Range with a stale validator: the partial request becomes a full one.
    stale = await proxy_client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert stale.status_code == 200
    assert stale.content == data
    fresh = await proxy_client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert fresh.status_code == 206


async def test_redirect_is_signed_and_expires_with_the_ttl(
    client: httpx.AsyncClient, backend: str, app: FastAPI
) -> None:
    if backend != "s3":
        pytest.skip("the local backend has nothing to sign: it always proxies")
    created = await client.post(
        "/v1/images", content=jpeg(), headers={"Content-Type": "image/jpeg"}
    )
    response = await client.get(f"/v1/images/{created.json()['id']}/content")
    assert response.status_code == 302
    ttl = app.state.runtime.content.options.signed_url_ttl
    assert f"X-Amz-Expires={ttl}" in response.headers["location"]
    assert response.headers["cache-control"] == f"private, max-age={ttl // 2}"


@pytest.mark.parametrize(
    "bad_id", ["nope", "img_0", "1", "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S", "x" * 64]
)
async def test_unknown_ids_are_404_problems(client: httpx.AsyncClient, bad_id: str) -> None:
    response = await client.get(f"/v1/images/{bad_id}")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_unknown_routes_and_methods_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v2/anything")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = await client.put("/v1/images")
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "method_not_allowed"
    assert "allow" in wrong.headers


async def test_request_id_is_echoed_and_in_problems(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/images/nope", headers={"X-Request-ID": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    assert response.json()["request_id"] == "trace-123"
    junk = await client.get("/v1/images/nope", headers={"X-Request-ID": "bad id with spaces"})
    assert junk.headers["x-request-id"] != "bad id with spaces"
    assert junk.json()["request_id"] == junk.headers["x-request-id"]
