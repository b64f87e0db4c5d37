"""CORS (SPEC §9), header by header, on every backend: preflights answered before auth,
and every answer to an allowed origin readable by the page, errors and 500s included (the
hot reads too, computed and replayed); nothing for other origins or without `Origin`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from imagesvc.auth.ratelimit import RateLimiter
from imagesvc.config import Settings
from imagesvc.db import DatabaseUnavailable
from tests.api import post_form
from tests.conftest import app_with
from tests.samples import PDF, jpeg, png_claiming

ORIGIN = "http://app.example.test:3000"
SECOND = "https://second.example.test"
OTHER = "http://evil.example.test"
METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "X-Filename",
    "X-Request-ID",
    "Range",
    "If-None-Match",
    "If-Range",
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Checksum",
    "X-HTTP-Method-Override",
]
EXPOSED = [
    "Location",
    "ETag",
    "X-Request-ID",
    "Retry-After",
    "Idempotent-Replayed",
    "Content-Range",
    "Accept-Ranges",
    "Content-Disposition",
    "Image-Id",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
]


@pytest.fixture(scope="module")
async def cors_app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with app_with(settings, cors_origins=f"{ORIGIN}, {SECOND}") as app:
        yield app


@pytest.fixture
async def browser(cors_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A page's fetch(): sends its Origin, and a real key of a fresh owner."""
    created = await cors_app.state.runtime.keys.create(f"page-{uuid.uuid4().hex[:8]}")
    # Starlette's error layer re-raises after answering a 500: keep the answer.
    transport = httpx.ASGITransport(app=cors_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://api.example.test",
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {created.key}"},
    ) as client:
        yield client


def assert_readable(response: httpx.Response, origin: str = ORIGIN) -> None:
    """What the browser needs to hand the response (and the named headers) to the page."""
    where = (response.request.method, str(response.request.url), response.status_code)
    assert response.headers.get("access-control-allow-origin") == origin, where
    exposed = [
        name.strip() for name in response.headers["access-control-expose-headers"].split(",")
    ]
    assert exposed == EXPOSED, where
    assert "access-control-allow-credentials" not in response.headers, where
    assert "origin" in response.headers.get("vary", "").lower(), where
    assert len(response.headers.get_list("access-control-allow-origin")) == 1, where


def assert_not_readable(response: httpx.Response) -> None:
    for name in ("access-control-allow-origin", "access-control-expose-headers"):
        assert name not in response.headers, (response.request.url, response.status_code)


async def test_a_preflight_from_an_allowed_origin_is_answered_before_auth(
    browser: httpx.AsyncClient,
) -> None:
    for path, method in [
        ("/v1/images", "POST"),
        ("/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S", "PATCH"),
        ("/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S/content", "GET"),  # a hot read
        ("/v1/uploads", "POST"),  # tus (SPEC §10): whoever serves it, the preflight is ours
        ("/v1/uploads/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S", "PATCH"),
    ]:
        response = await browser.options(
            path,
            headers={
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization, idempotency-key, upload-offset",
                "Authorization": "",  # a preflight never carries credentials
            },
        )
        assert response.status_code == 204, (path, response.text)
        assert response.content == b""
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert response.headers["access-control-allow-methods"] == METHODS
        allowed = response.headers["access-control-allow-headers"].split(", ")
        assert allowed == [name.lower() for name in REQUEST_HEADERS]
        assert response.headers["access-control-max-age"] == "7200"
        assert "access-control-allow-credentials" not in response.headers
        assert response.headers["vary"] == "Origin"
        assert response.headers["x-request-id"]
    second = await browser.options(
        "/v1/images", headers={"Origin": SECOND, "Access-Control-Request-Method": "DELETE"}
    )
    assert second.status_code == 204
    assert second.headers["access-control-allow-origin"] == SECOND


async def test_a_preflight_from_another_origin_is_a_403_problem(browser: httpx.AsyncClient) -> None:
    for origin in (OTHER, "null", ORIGIN + ".evil.test", "http://app.example.test:3001"):
        response = await browser.options(
            "/v1/images", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert response.status_code == 403, origin
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == "origin_not_allowed"
        assert problem["request_id"] == response.headers["x-request-id"]
        assert_not_readable(response)


async def test_every_answer_to_an_allowed_origin_is_readable_errors_included(
    cors_app: FastAPI, browser: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = cors_app.state.runtime
    created = await post_form(browser, jpeg((64, 48)))
    assert created.status_code == 201
    assert_readable(created)
    image_id = created.json()["id"]
    assert created.headers["location"] == f"/v1/images/{image_id}"

    answers: list[tuple[httpx.Response, int | tuple[int, ...]]] = []

    async def check(status: int | tuple[int, ...], method: str, path: str, **kw: Any) -> None:
        answers.append((await browser.request(method, path, **kw), status))

    for _ in range(2):  # the hot reads: computed, then replayed
        await check(200, "GET", f"/v1/images/{image_id}")
        await check((200, 302), "GET", f"/v1/images/{image_id}/content")
    await check((200, 302), "HEAD", f"/v1/images/{image_id}/content")
    await check((200, 302), "GET", f"/v1/images/{image_id}/variants/32x32")
    await check(200, "GET", "/v1/images", params={"limit": 5})
    await check(200, "PATCH", f"/v1/images/{image_id}", json={"visibility": "public"})
    await check(200, "POST", f"/v1/images/{image_id}/links", json={})
    await check(401, "GET", "/v1/images", headers={"Authorization": ""})
    await check(401, "GET", f"/v1/images/{image_id}", headers={"Authorization": "Bearer nope"})
    await check(403, "GET", f"/v1/images/{image_id}/content", params={"exp": "1", "sig": "x"})
    await check(404, "GET", "/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S")
    await check(404, "GET", "/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S/content")
    await check(404, "GET", "/v2/nothing")
    await check(405, "PUT", "/v1/images")
    await check(
        413, "POST", "/v1/images", content=png_claiming(20_000, 20_000),
        headers={"Content-Type": "image/png"},
    )  # fmt: skip
    await check(415, "POST", "/v1/images", content=PDF, headers={"Content-Type": "image/jpeg"})
    await check(415, "POST", "/v1/images", content=b"hi", headers={"Content-Type": "text/plain"})
    await check(422, "GET", "/v1/images", params={"limit": 0})

    runtime.rate_limiter = RateLimiter(per_minute=6)  # a burst of one
    try:
        await check(200, "GET", f"/v1/images/{image_id}")
        await check(429, "GET", f"/v1/images/{image_id}")
    finally:
        runtime.rate_limiter = None

    async def database_down(*_: object, **__: object) -> None:
        raise DatabaseUnavailable()

    with monkeypatch.context() as patch:
        patch.setattr(runtime.db, "read", database_down)
        patch.setattr(runtime.db, "fetch_one", database_down)
        await check(503, "GET", "/v1/images")  # through FastAPI
        await check(503, "GET", "/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1T/content")  # hot

    async def broken(**_: object) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        for name in ("get", "update", "list"):
            patch.setattr(runtime.images, name, broken)
        await check(500, "GET", "/v1/images/img_nope")  # the hot reads' own 500
        await check(500, "PATCH", "/v1/images/img_nope", json={"visibility": "public"})
        await check(500, "GET", "/v1/images")  # FastAPI's error layer

    for response, status in answers:
        expected = status if isinstance(status, tuple) else (status,)
        assert response.status_code in expected, (response.request.url, response.text)
        assert_readable(response)
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            if response.request.method != "HEAD":
                assert response.json()["request_id"] == response.headers["x-request-id"]
    retry = [r for r, _ in answers if r.status_code in (429, 503)]
    assert retry
    assert all("retry-after" in r.headers for r in retry)


async def test_an_origin_not_allowed_gets_the_answer_but_no_cors_headers(
    browser: httpx.AsyncClient,
) -> None:
    created = await post_form(browser, jpeg(), headers={"Origin": OTHER})
    assert created.status_code == 201
    assert_not_readable(created)
    image_id = created.json()["id"]
    for _ in range(2):
        for path in (f"/v1/images/{image_id}", f"/v1/images/{image_id}/content", "/v1/images/x"):
            response = await browser.get(path, headers={"Origin": OTHER})
            assert response.status_code in (200, 302, 404)
            assert_not_readable(response)
            assert response.headers["vary"].lower().endswith("origin")
    unauthorized = await browser.get("/v1/images", headers={"Origin": OTHER, "Authorization": ""})
    assert unauthorized.status_code == 401
    assert_not_readable(unauthorized)


async def test_requests_without_origin_get_nothing_added(browser: httpx.AsyncClient) -> None:
    del browser.headers["Origin"]
    created = await post_form(browser, jpeg())
    image_id = created.json()["id"]
    for path in (f"/v1/images/{image_id}", f"/v1/images/{image_id}/content", "/v1/images"):
        response = await browser.get(path)
        assert response.status_code in (200, 302)
        assert not [name for name in response.headers if name.startswith("access-control-")]
        assert "origin" not in response.headers.get("vary", "").lower()
    # Not a preflight (no Access-Control-Request-Method): the route's own OPTIONS answer.
    assert (await browser.options("/v1/images")).status_code == 405


async def test_any_origin_is_answered_with_a_star(settings: Settings) -> None:
    async with app_with(settings, cors_origins="*") as app:
        key = await app.state.runtime.keys.create(f"star-{uuid.uuid4().hex[:8]}")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            preflight = await client.options(
                "/v1/images", headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"}
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == "*"
            assert "vary" not in preflight.headers
            listed = await client.get(
                "/v1/images", headers={"Origin": OTHER, "Authorization": f"Bearer {key.key}"}
            )
            assert listed.status_code == 200
            assert listed.headers["access-control-allow-origin"] == "*"
            assert "origin" not in listed.headers.get("vary", "").lower()
            unauthorized = await client.get("/v1/images", headers={"Origin": SECOND})
            assert unauthorized.status_code == 401
            assert unauthorized.headers["access-control-allow-origin"] == "*"


async def test_without_cors_origins_nothing_is_sent(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/v1/images", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405  # no CORS layer at all: the router's answer
    assert_not_readable(preflight)
    listed = await client.get("/v1/images", headers={"Origin": ORIGIN})
    assert listed.status_code == 200
    assert_not_readable(listed)
