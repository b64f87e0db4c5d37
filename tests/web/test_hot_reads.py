"""The hot reads (web/hot_reads.py) answer exactly as FastAPI's routes do.

Every request below is sent twice to the same app: once through the whole stack (the hot
path), and once through FastAPI's own stack alone (its router and dependency solver),
inside the same request context. Status, body and the headers a client
acts on must be the same, for successes and for every error, on every backend.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagesvc.config import Settings
from imagesvc.web.context import RequestContextMiddleware
from tests.api import upload
from tests.conftest import serving
from tests.samples import jpeg

# Headers that differ per response by design.
_VOLATILE = {"x-request-id", "date", "server"}


def _max_age(cache_control: str) -> int:
    return int(cache_control.split("max-age=")[1].split(",")[0])


def framework_only(app: FastAPI) -> ASGIApp:
    """The app without the fast path: FastAPI's own middleware stack (error layer, router,
    dependency solver) inside the same request context."""
    inner = RequestContextMiddleware(FastAPI.build_middleware_stack(app))

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app  # as Starlette's __call__ does before its stack
        await inner(scope, receive, send)

    return asgi


async def both_ways(
    app: FastAPI, client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    """The hot path's answer (asked twice: computed, then replayed from the answer cache,
    which must be identical) and the framework's."""
    hot = await client.get(path, headers=headers)
    again = await client.get(path, headers=headers)
    assert_same(again, hot)
    # Starlette's error layer re-raises after answering (for the server's log): keep the
    # answer instead of the exception.
    transport = httpx.ASGITransport(app=framework_only(app), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=str(client.base_url)) as other:
        framework = await other.get(path, headers=headers)
    return hot, framework


def assert_same(hot: httpx.Response, framework: httpx.Response) -> None:
    assert hot.status_code == framework.status_code, (hot.text, framework.text)
    hot_headers = {k: v for k, v in hot.headers.items() if k not in _VOLATILE}
    framework_headers = {k: v for k, v in framework.headers.items() if k not in _VOLATILE}
    if hot.status_code == 302:  # a redirect may be cached for what is left of its signature
        hot_age = _max_age(hot_headers.pop("cache-control"))
        assert 0 <= hot_age - _max_age(framework_headers.pop("cache-control")) <= 1
    assert hot_headers == framework_headers
    if hot.headers.get("content-type", "").endswith("json"):
        hot_body, framework_body = hot.json(), framework.json()
        if hot.headers["content-type"] == "application/problem+json":  # each has its own id
            assert hot_body.pop("request_id") == hot.headers["x-request-id"]
            assert framework_body.pop("request_id") == framework.headers["x-request-id"]
        assert hot_body == framework_body
    else:
        assert hot.content == framework.content


async def test_hot_reads_answer_like_the_framework(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    alice = await app.state.runtime.keys.create(f"alice-{uuid.uuid4().hex[:8]}")
    bob = await app.state.runtime.keys.create(f"bob-{uuid.uuid4().hex[:8]}")
    as_alice = {"Authorization": f"Bearer {alice.key}"}
    as_bob = {"Authorization": f"Bearer {bob.key}"}
    data = jpeg((64, 48))

    private = (await upload(anonymous, data, headers=as_alice))["id"]
    public = (await upload(anonymous, data, headers=as_alice, visibility="public"))["id"]
    missing = "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S"
    cases: list[tuple[str, dict[str, str], int]] = [
        (f"/v1/images/{private}", as_alice, 200),
        (f"/v1/images/{private}", as_bob, 404),  # another owner's: like a missing one
        (f"/v1/images/{private}", {}, 401),
        (f"/v1/images/{private}", {"Authorization": "Bearer isk_nope"}, 401),
        (f"/v1/images/{public}", {}, 401),  # metadata always needs the owner's key
        (f"/v1/images/{missing}", as_alice, 404),
        (f"/v1/images/{private}/content", as_alice, -1),  # 302 (S3) or 200 (local)
        (f"/v1/images/{private}/content", as_bob, 404),
        (f"/v1/images/{private}/content", {}, 404),
        (f"/v1/images/{private}/content", {"Authorization": "Basic eDp5"}, 401),
        (f"/v1/images/{public}/content", {}, -1),
        (f"/v1/images/{missing}/content", as_alice, 404),
        ("/v1/images/" + "x" * 65, as_alice, 422),  # longer than an id may be: FastAPI's
    ]
    for path, headers, status in cases:
        hot, framework = await both_ways(app, anonymous, path, headers)
        assert_same(hot, framework)
        if status == -1:
            assert hot.status_code in (200, 302)
        else:
            assert hot.status_code == status, (path, hot.text)
    metadata = (await anonymous.get(f"/v1/images/{private}", headers=as_alice)).json()
    assert metadata["id"] == private
    assert metadata["byte_size"] == len(data)


async def test_hot_content_honours_conditions_in_proxy_mode(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    key = await app.state.runtime.keys.create(f"carol-{uuid.uuid4().hex[:8]}")
    auth = {"Authorization": f"Bearer {key.key}"}
    data = jpeg((80, 60))
    created = await anonymous.post(
        "/v1/images", content=data, headers={**auth, "Content-Type": "image/jpeg"}
    )
    image_id, etag = created.json()["id"], None
    with serving(app, redirect=False):
        path = f"/v1/images/{image_id}/content"
        hot, framework = await both_ways(app, anonymous, path, auth)
        assert_same(hot, framework)
        assert hot.content == data
        etag = hot.headers["etag"]
        for headers, status in [
            ({"If-None-Match": etag}, 304),
            ({"Range": "bytes=0-9"}, 206),
            ({"Range": "bytes=-5"}, 206),
            ({"Range": f"bytes={len(data)}-"}, 416),
            ({"Range": "bytes=0-9", "If-Range": '"stale"'}, 200),
        ]:
            hot, framework = await both_ways(app, anonymous, path, {**auth, **headers})
            assert_same(hot, framework)
            assert hot.status_code == status, (headers, hot.text)


async def test_kept_answers_never_outlive_this_processs_changes(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    """A replayed answer is dropped the moment this process changes what it said: a
    visibility change, a delete, a revoked key. And a replay still takes a rate-limit token."""
    from imagesvc.auth.ratelimit import RateLimiter

    owner = await app.state.runtime.keys.create(f"dave-{uuid.uuid4().hex[:8]}")
    auth = {"Authorization": f"Bearer {owner.key}"}
    created = await anonymous.post(
        "/v1/images",
        content=jpeg((40, 30)),
        params={"visibility": "public"},
        headers={**auth, "Content-Type": "image/jpeg"},
    )
    image_id = created.json()["id"]
    content, metadata = f"/v1/images/{image_id}/content", f"/v1/images/{image_id}"

    for _ in range(2):  # computed, then replayed
        assert (await anonymous.get(content)).status_code in (200, 302)  # public: no key needed
        assert (await anonymous.get(metadata, headers=auth)).json()["visibility"] == "public"
    # A key that is sent must be valid, even an empty one: never the anonymous answer.
    for empty in ("", " "):
        assert (await anonymous.get(content, headers={"Authorization": empty})).status_code == 401
    # Any spelling the key check accepts gets the same answer, kept or not.
    lower = {"Authorization": "bearer  " + owner.key}
    assert (await anonymous.get(metadata, headers=lower)).json()["id"] == image_id
    patched = await anonymous.patch(metadata, json={"visibility": "private"}, headers=auth)
    assert patched.status_code == 200
    assert (await anonymous.get(content)).status_code == 404
    assert (await anonymous.get(metadata, headers=auth)).json()["visibility"] == "private"

    app.state.runtime.rate_limiter = RateLimiter(per_minute=6)  # a burst of one, one per 10 s
    try:
        replayed = await anonymous.get(metadata, headers=auth)
        assert replayed.status_code == 200
        assert replayed.headers["ratelimit-remaining"] == "0"
        limited = await anonymous.get(metadata, headers=auth)
        assert limited.status_code == 429
        assert limited.headers["ratelimit-limit"] == "1"
        assert limited.headers["content-type"] == "application/problem+json"
    finally:
        app.state.runtime.rate_limiter = None

    assert (await anonymous.get(metadata, headers=auth)).status_code == 200
    assert await app.state.runtime.keys.revoke(owner.id)
    assert (await anonymous.get(metadata, headers=auth)).status_code == 401

    other = await app.state.runtime.keys.create(f"erin-{uuid.uuid4().hex[:8]}")
    other_auth = {"Authorization": f"Bearer {other.key}"}
    created = await anonymous.post(
        "/v1/images", content=jpeg((40, 30)), headers={**other_auth, "Content-Type": "image/jpeg"}
    )
    image_id = created.json()["id"]
    assert (await anonymous.get(f"/v1/images/{image_id}", headers=other_auth)).status_code == 200
    assert (await anonymous.delete(f"/v1/images/{image_id}", headers=other_auth)).status_code == 204
    assert (await anonymous.get(f"/v1/images/{image_id}", headers=other_auth)).status_code == 404
    assert (
        await anonymous.get(f"/v1/images/{image_id}/content", headers=other_auth)
    ).status_code == 404


def test_a_dependency_added_to_a_hot_route_fails_loudly() -> None:
    """The hot path calls the endpoints with today's dependencies; one added later (to the
    endpoint, its route or its router) must not be skipped silently."""
    from fastapi import Depends

    from imagesvc.auth.dependencies import OwnerDep
    from imagesvc.images import endpoints
    from imagesvc.web import hot_reads

    async def extra() -> None:
        pass

    route = hot_reads._METADATA
    for dependencies in (route.dependencies, endpoints.router.dependencies):
        dependencies.append(Depends(extra))
        try:
            with pytest.raises(RuntimeError, match="hot_reads"):
                hot_reads._check_endpoints()
        finally:
            dependencies.pop()

    async def get_image(image_id: str, service: Any, owner: Any, more: Any) -> None:
        pass

    # As FastAPI would read them: the real dependencies, and one more parameter.
    get_image.__annotations__ = {
        "image_id": str,
        "service": endpoints.ImagesDep,
        "owner": OwnerDep,
        "more": int,
    }

    real = route.endpoint
    route.endpoint = get_image
    try:
        with pytest.raises(RuntimeError, match="out of date"):
            hot_reads._check_endpoints()
    finally:
        route.endpoint = real
    hot_reads._check_endpoints()


def test_the_hot_routers_are_included_without_extra_settings() -> None:
    """hot_reads checks the routes' own dependencies; dependencies or a prefix given to
    `include_router` would be skipped by it too, so create_app must include plainly."""
    from imagesvc.app import create_app
    from imagesvc.config import load_settings
    from imagesvc.images.endpoints import router as images
    from imagesvc.serving.endpoints import router as content

    app = create_app(load_settings())
    for router, path in (
        (images, "/v1/images/{image_id}"),
        (content, "/v1/images/{image_id}/content"),
    ):
        included = [r for r in app.router.routes if getattr(r, "original_router", None) is router]
        if included:  # FastAPI >= 0.16x keeps an include as one route with its context
            context = included[0].include_context  # type: ignore[attr-defined]
            assert not context.dependencies
            assert not context.prefix
        else:  # older FastAPI copies the routes
            assert any(getattr(r, "path", "") == path for r in app.router.routes)


async def test_an_unexpected_error_is_the_same_500_problem_on_every_path(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot reads sit outside Starlette's error layer: they must still answer a bug with
    the app's problem+json 500 (no trace, the request id once), as every other route does,
    wherever in the hot path it happens."""
    key = await app.state.runtime.keys.create(f"carol-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {key.key}"}

    async def broken(**_: object) -> None:
        raise RuntimeError("boom: internal detail")

    def broken_lookup(_: str) -> None:
        raise RuntimeError("boom: internal detail")

    runtime = app.state.runtime

    # Starlette's error layer re-raises after answering (for the server's log): keep the
    # answer instead of the exception.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with monkeypatch.context() as patch:
            for name in ("get", "update"):
                patch.setattr(runtime.images, name, broken)
            patch.setattr(runtime.content, "image_content", broken)
            answers = []
            for path in ("/v1/images/img_nope", "/v1/images/img_nope/content"):
                hot, framework = await both_ways(app, client, path, headers)
                assert_same(hot, framework)
                answers += [hot, framework]
            answers.append(
                await client.patch(
                    "/v1/images/img_nope", json={"visibility": "public"}, headers=headers
                )
            )
        with monkeypatch.context() as patch:  # before the endpoint is even called
            patch.setattr(runtime.images.rows, "expires_at", broken_lookup)
            answers.append(await client.get("/v1/images/img_nope", headers=headers))
    for response in answers:
        assert response.status_code == 500, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "internal_error"
        assert "boom" not in response.text
        assert response.headers.get_list("x-request-id") == [response.json()["request_id"]]


async def test_middleware_an_embedding_app_adds_wraps_the_hot_reads_too(
    settings: Settings,
) -> None:
    from imagesvc.app import create_app

    class Tag:
        def __init__(self, inner: ASGIApp) -> None:
            self.inner = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def tagging(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), (b"x-embedded", b"yes")]
                await send(message)

            await self.inner(scope, receive, tagging)

    embedded = create_app(settings)
    embedded.add_middleware(Tag)
    async with embedded.router.lifespan_context(embedded):
        key = await embedded.state.runtime.keys.create(f"dave-{uuid.uuid4().hex[:8]}")
        transport = httpx.ASGITransport(app=embedded)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for path in ("/v1/images/img_nope", "/v1/images/img_nope/content", "/healthz"):
                response = await client.get(path, headers={"Authorization": f"Bearer {key.key}"})
                assert response.headers.get("x-embedded") == "yes", (path, response.status_code)


async def test_signed_links_and_downloads_answer_like_the_framework(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    """Signed content links take the hot path (and its answer cache): valid, tampered,
    expired, with a download, in both serving modes, and once their image is gone."""
    import time

    key = await app.state.runtime.keys.create(f"frank-{uuid.uuid4().hex[:8]}")
    auth = {"Authorization": f"Bearer {key.key}"}
    for redirect in (True, False):
        with serving(app, redirect=redirect):
            image_id = (await upload(anonymous, jpeg((64, 48)), headers=auth))["id"]
            minted = await anonymous.post(f"/v1/images/{image_id}/links", json={}, headers=auth)
            link = minted.json()["url"]
            download = (
                await anonymous.post(
                    f"/v1/images/{image_id}/links", json={"download": True}, headers=auth
                )
            ).json()["url"]
            signer = await app.state.runtime.links.keys.signer()
            path = f"/v1/images/{image_id}/content"
            expired = signer.sign(path, {"exp": str(int(time.time()) - 1)})
            cases: list[tuple[str, dict[str, str], int]] = [
                (link, {}, -1),
                (link, auth, -1),
                (download, {}, -1),
                (f"{path}?download=1", auth, -1),
                (link.replace("exp=", "exp=1"), {}, 403),
                (link[:-1], {}, 403),
                (expired, {}, 403),
                (link, {"Authorization": "Bearer nope"}, 401),
                (f"/v1/images/{image_id}?links=64x64", auth, 200),  # FastAPI's either way
            ]
            for url, headers, status in cases:
                hot, framework = await both_ways(app, anonymous, url, headers)
                assert_same(hot, framework)
                if status == -1:
                    assert hot.status_code in (200, 302), (url, hot.text)
                else:
                    assert hot.status_code == status, (url, hot.text)
            assert (
                await anonymous.delete(path.removesuffix("/content"), headers=auth)
            ).status_code == 204
            hot, framework = await both_ways(app, anonymous, link, {})
            assert_same(hot, framework)
            assert hot.status_code == 404
