"""Access control with real API keys (SPEC §6), on every backend: 401s with
WWW-Authenticate, owner isolation everywhere, public vs private content, revocation, rate
limits, and the key never stored or logged."""

from __future__ import annotations

import asyncio
import logging
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import MetaData, select

from imagesvc.auth.keys import KeyService
from imagesvc.auth.ratelimit import RateLimiter
from tests.api import fetch_content, upload
from tests.conftest import bearer, serving
from tests.samples import jpeg


@pytest.fixture
async def alice(app: FastAPI) -> dict[str, str]:
    return await bearer(app, f"alice-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def bob(app: FastAPI) -> dict[str, str]:
    return await bearer(app, f"bob-{uuid.uuid4().hex[:8]}")


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith('Bearer realm="imagesvc"')
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearer",
        "Bearer not-a-key",
        "Bearer isk_0123456789abcdef_" + "A" * 43,  # well formed, unknown
        "Bearer isk_0123456789abcdef_" + "A" * 44,
    ],
)
async def test_every_v1_endpoint_needs_a_valid_key(
    anonymous: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    some_id = "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S"
    for method, path in [
        ("POST", "/v1/images"),
        ("GET", "/v1/images"),
        ("GET", f"/v1/images/{some_id}"),
        ("PATCH", f"/v1/images/{some_id}"),
        ("DELETE", f"/v1/images/{some_id}"),
    ]:
        response = await anonymous.request(method, path, headers=headers)
        assert_401(response)
    content = await anonymous.get(f"/v1/images/{some_id}/content", headers=headers)
    if authorization is None:
        assert content.status_code == 404  # no key: only public images, and there is none
    else:
        assert_401(content)  # a key that is sent must be valid
    assert (await anonymous.get("/healthz")).status_code == 200


async def test_owners_cannot_reach_each_others_images(
    anonymous: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    image = await upload(anonymous, headers=alice)
    missing_id = "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S"
    for method, path in [
        ("GET", "/v1/images/{}"),
        ("GET", "/v1/images/{}/content"),
        ("PATCH", "/v1/images/{}"),
        ("DELETE", "/v1/images/{}"),
    ]:
        theirs = await anonymous.request(
            method, path.format(image["id"]), headers=bob, json={} if method == "PATCH" else None
        )
        nothing = await anonymous.request(
            method, path.format(missing_id), headers=bob, json={} if method == "PATCH" else None
        )
        # Exactly like a missing image: same status, same body shape, same code.
        assert theirs.status_code == nothing.status_code == 404, (method, path)
        assert theirs.json().keys() == nothing.json().keys()
        assert theirs.json()["code"] == nothing.json()["code"]
        assert theirs.json()["detail"].replace(image["id"], missing_id) == nothing.json()["detail"]
    listed = (await anonymous.get("/v1/images", headers=bob)).json()
    assert listed["items"] == []
    # Still there for its owner, untouched.
    assert (await anonymous.get(f"/v1/images/{image['id']}", headers=alice)).json() == image
    assert [
        i["id"] for i in (await anonymous.get("/v1/images", headers=alice)).json()["items"]
    ] == [image["id"]]


async def test_public_content_needs_no_key_but_metadata_does(
    anonymous: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    private = await upload(anonymous, headers=alice)
    public = await upload(anonymous, headers=alice, visibility="public")

    assert (await anonymous.get(f"/v1/images/{private['id']}/content")).status_code == 404
    for headers in ({}, bob):  # anyone, with or without a key of their own
        got = await fetch_content(anonymous, public["id"], headers)
        assert got.status_code == 200
        assert got.content == jpeg()
    assert_401(await anonymous.get(f"/v1/images/{public['id']}"))
    assert (await anonymous.get(f"/v1/images/{public['id']}", headers=bob)).status_code == 404
    assert (await anonymous.delete(f"/v1/images/{public['id']}", headers=bob)).status_code == 404

    # Visibility follows PATCH both ways.
    await anonymous.patch(
        f"/v1/images/{private['id']}", json={"visibility": "public"}, headers=alice
    )
    assert (await fetch_content(anonymous, private["id"], {})).status_code == 200
    await anonymous.patch(
        f"/v1/images/{public['id']}", json={"visibility": "private"}, headers=alice
    )
    assert (await anonymous.get(f"/v1/images/{public['id']}/content")).status_code == 404


async def test_cache_control_follows_visibility(
    app: FastAPI, anonymous: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    public = await upload(anonymous, headers=alice, visibility="public")
    private = await upload(anonymous, headers=alice)
    got_public = await anonymous.get(f"/v1/images/{public['id']}/content")
    got_private = await anonymous.get(f"/v1/images/{private['id']}/content", headers=alice)
    assert got_public.headers["cache-control"].startswith("public, ")
    assert got_private.headers["cache-control"].startswith("private, ")


async def test_public_images_redirect_to_the_cdn_when_configured(
    app: FastAPI, anonymous: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    with serving(app, redirect=True, public_base_url="https://cdn.example.com"):
        public = await upload(anonymous, headers=alice, visibility="public")
        private = await upload(anonymous, headers=alice)
        response = await anonymous.get(f"/v1/images/{public['id']}/content")
        assert response.status_code == 302
        assert response.headers["location"].startswith("https://cdn.example.com/")
        assert response.headers["location"].endswith(f"img/{public['id']}/original")
        assert response.headers["cache-control"] == "public, max-age=3600"
        other = await anonymous.get(f"/v1/images/{private['id']}/content", headers=alice)
        assert not other.headers.get("location", "").startswith("https://cdn.example.com/")


async def test_revoked_key_is_refused_within_the_cache_bound(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    owner = f"carol-{uuid.uuid4().hex[:8]}"
    keys = app.state.runtime.keys
    created = await keys.create(owner)
    auth = {"Authorization": f"Bearer {created.key}"}
    keys.cache.ttl = 0.5
    try:
        assert (await anonymous.get("/v1/images", headers=auth)).status_code == 200
        # Another process (its own cache) revokes it: this one stops accepting it once its
        # cache entry is older than cache_seconds.
        elsewhere = KeyService(app.state.runtime.db)
        assert await elsewhere.revoke(created.id)
        await asyncio.sleep(0.6)
        assert_401(await anonymous.get("/v1/images", headers=auth))
    finally:
        keys.cache.ttl = 5.0
    assert not await elsewhere.revoke(created.id)  # already revoked


async def test_rate_limit_per_key(
    app: FastAPI, anonymous: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    app.state.runtime.rate_limiter = RateLimiter(per_minute=6)  # a burst of one, one per 10 s
    try:
        first = await anonymous.get("/v1/images", headers=alice)
        assert first.status_code == 200
        assert first.headers["ratelimit-limit"] == "1"
        assert first.headers["ratelimit-remaining"] == "0"
        assert 1 <= int(first.headers["ratelimit-reset"]) <= 10
        limited = await anonymous.get("/v1/images", headers=alice)
        assert limited.status_code == 429
        assert limited.json()["code"] == "too_many_requests"
        assert 1 <= int(limited.headers["retry-after"]) <= 10
        assert limited.headers["ratelimit-remaining"] == "0"
        assert limited.headers["ratelimit-reset"] == limited.headers["retry-after"]
        assert (await anonymous.get("/v1/images", headers=bob)).status_code == 200  # per key
        # Requests that take nothing from a budget say nothing about one.
        assert "ratelimit-limit" not in (await anonymous.get("/healthz")).headers
    finally:
        app.state.runtime.rate_limiter = None


async def test_key_is_in_no_table_and_no_log_line(
    app: FastAPI,
    anonymous: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await app.state.runtime.keys.create(f"dave-{uuid.uuid4().hex[:8]}")
    secret = created.key[len("isk_") + 17 :]
    auth = {"Authorization": f"Bearer {created.key}"}
    image = await upload(anonymous, headers=auth)
    await anonymous.get(f"/v1/images/{image['id']}", headers=auth)
    await anonymous.get("/v1/images", headers={"Authorization": f"Bearer {created.key}x"})
    assert created.key not in caplog.text
    assert secret not in caplog.text

    metadata = MetaData()
    async with app.state.runtime.db.engine.connect() as conn:
        await conn.run_sync(metadata.reflect)
        for table in metadata.sorted_tables:
            for row in (await conn.execute(select(table))).all():
                text = " ".join(str(value) for value in row)
                assert secret not in text, table.name


async def test_other_processes_changes_show_within_the_read_cache_bound(
    app: FastAPI, anonymous: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    from sqlalchemy import update

    from imagesvc.images.models import Image

    rows = app.state.runtime.images.rows
    public = await upload(anonymous, headers=alice, visibility="public")
    rows.ttl = 0.3
    try:
        assert (await fetch_content(anonymous, public["id"], {})).status_code == 200
        # Another process turns it private: this one learns within read_cache_seconds.
        async with app.state.runtime.db.engine.begin() as conn:
            await conn.execute(
                update(Image).where(Image.id == public["id"]).values(visibility="private")
            )
        await asyncio.sleep(0.35)
        assert (await anonymous.get(f"/v1/images/{public['id']}/content")).status_code == 404
    finally:
        rows.ttl = 1.0
