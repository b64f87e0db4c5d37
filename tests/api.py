"""What tests do through the HTTP API, in one place: upload, follow a redirect to the
store, fetch content and variants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.samples import jpeg


async def upload(
    client: httpx.AsyncClient,
    data: bytes | None = None,
    *,
    filename: str | None = None,
    headers: dict[str, str] | None = None,
    **params: str,
) -> dict[str, Any]:
    """A raw-body upload that must succeed; the Image it created."""
    response = await post_raw(client, jpeg() if data is None else data, filename, headers, **params)
    assert response.status_code == 201, response.text
    image: dict[str, Any] = response.json()
    return image


async def post_raw(
    client: httpx.AsyncClient,
    data: bytes | AsyncIterator[bytes],
    filename: str | None = None,
    headers: dict[str, str] | None = None,
    **params: str,
) -> httpx.Response:
    sent = {"Content-Type": "image/jpeg", **(headers or {})}
    if filename is not None:
        sent["X-Filename"] = filename
    return await client.post("/v1/images", content=data, params=params, headers=sent)


async def post_form(
    client: httpx.AsyncClient,
    data: bytes,
    name: str = "photo.jpg",
    *,
    headers: dict[str, str] | None = None,
    **form: str,
) -> httpx.Response:
    """A multipart upload (part `file`, and `form` as text parts)."""
    return await client.post(
        "/v1/images", files={"file": (name, data, "image/jpeg")}, data=form, headers=headers
    )


async def follow(response: httpx.Response) -> httpx.Response:
    """What a client gets after following a redirect to the store (over real HTTP)."""
    if response.status_code != 302:
        return response
    async with httpx.AsyncClient() as outside:
        followed = await outside.get(response.headers["location"])
    followed.headers["x-original-vary"] = response.headers.get("vary", "")
    return followed


async def fetch_content(
    client: httpx.AsyncClient, image_id: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """GET the content, following a redirect to the signed S3 URL."""
    return await follow(await client.get(f"/v1/images/{image_id}/content", headers=headers))


async def variant(
    client: httpx.AsyncClient, image_id: str, spec: str, **params: str
) -> httpx.Response:
    """GET a variant, following a redirect to S3 like a client would."""
    return await follow(await client.get(f"/v1/images/{image_id}/variants/{spec}", params=params))


async def start_direct(client: httpx.AsyncClient, data: bytes, **fields: Any) -> dict[str, Any]:
    """`POST /v1/images/direct` for `data` (its size, `image/jpeg` unless `fields` say
    otherwise), which must succeed: `{"id", "upload": {...}}`."""
    body = {"byte_size": len(data), "content_type": "image/jpeg", **fields}
    response = await client.post("/v1/images/direct", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def put_direct(
    anonymous: httpx.AsyncClient,
    upload: dict[str, Any],
    data: bytes,
    *,
    drop: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send the bytes where `upload` says, with exactly its headers (less `drop`, plus
    `headers`), from a client without an API key: over real HTTP to the S3 server, or to the
    app itself when the URL is the service's own (local backend)."""
    sent = {k: v for k, v in upload["headers"].items() if k not in drop} | (headers or {})
    url = httpx.URL(upload["url"])
    if not url.is_absolute_url or url.host == anonymous.base_url.host:
        return await anonymous.put(url, content=data, headers=sent)
    async with httpx.AsyncClient() as outside:
        return await outside.put(url, content=data, headers=sent)


async def complete(client: httpx.AsyncClient, image_id: str) -> httpx.Response:
    return await client.post(f"/v1/images/{image_id}/complete")
