"""The two hottest reads, `GET /v1/images/{id}/content` and `GET /v1/images/{id}`, called
without FastAPI's router and dependency solver, and their answers reused for a moment.

Profiling a cached redirect showed our own work (key check, cached row, cached signed URL)
at a few percent of the request; route matching, dependency solving and parameter
validation were more than half of it. This middleware asks the two routes themselves
whether they match (`Route.matches`: the route table is the one source of the paths), and
calls the same endpoint functions with the same dependency functions (`optional_owner`,
`current_owner`, `request_conditions`) and the services the routes' own dependencies
return, so the auth, rate-limit, serving and error rules stay in one place. A
`ProblemError` becomes the same problem+json through the same handler; anything this
middleware does not recognise (other methods, other paths, ids longer than the route
accepts) goes to FastAPI untouched, and so does everything while dependency overrides or
app-wide dependencies are set, since only FastAPI applies them. The endpoints' signatures
are checked at import (_check_endpoints).

Answer cache: a 200 (metadata) or 302 (redirect) computed here is kept and replayed to the
same credentials, so a busy image costs a dictionary lookup instead of the key check, the
row lookup and building the response. An answer is only as fresh as what it was computed
from: it expires when the cached row (ImageService.rows) or the cached key
(KeyService.cache) it used expires, and is dropped as soon as either cache changes
generation (this process's PATCH, DELETE or key revocation). Replays still take a
rate-limit token. Requests with `Range`, `If-None-Match` or `If-Range` are always computed.
Entries are keyed by the raw query string and a SHA-256 of the Authorization header, never
the key itself. Signed content links (`?exp=&sig=`, serving/links.py) take this path too,
through the same `request_delivery` dependency as the route, and their kept answers expire
with the link. HEAD, and metadata requests with a query (`?links=`), go to FastAPI.

It sits inside the request context (web/context.py), so request ids, log lines and metrics
are the same as for every other route, and both sit outside FastAPI's own middleware
(web/stack.py): an unexpected error here gets the app's 500 problem from
`errors.handle_unexpected`, as Starlette's error layer would give it.
tests/web/test_hot_reads.py checks that both paths answer alike.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response, params
from fastapi.routing import APIRoute, APIRouter
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from imagesvc.auth.dependencies import current_owner, optional_owner
from imagesvc.auth.keys import KEY_PATTERN
from imagesvc.cache import FOREVER, TtlCache
from imagesvc.errors import ProblemError, handle_problem, handle_unexpected
from imagesvc.images import endpoints as image_endpoints
from imagesvc.images.schemas import IMAGE_ID_MAX_LENGTH
from imagesvc.runtime import Runtime
from imagesvc.serving import endpoints as content_endpoints
from imagesvc.serving.http import (
    CONDITION_NAMES,
    get_link_service,
    request_conditions,
    request_delivery,
)

_CANONICAL_BEARER = re.compile(b"Bearer " + KEY_PATTERN.pattern.encode())
_MAX_ANSWERS = 10_000
# Longer query strings are answered but not kept: no client spreads itself over entries.
_MAX_KEPT_QUERY = 512
# (image id, content?, raw query string, sha256 of Authorization)
AnswerKey = tuple[str, bool, bytes, bytes | None]


def _route(router: APIRouter, endpoint: Callable[..., Any]) -> APIRoute:
    for route in router.routes:
        if isinstance(route, APIRoute) and route.endpoint is endpoint:
            return route
    raise RuntimeError(f"no route for {endpoint.__name__}")


_METADATA = _route(image_endpoints.router, image_endpoints.get_image)
_CONTENT = _route(content_endpoints.router, content_endpoints.get_image_content)


def _dependencies(endpoint: Callable[..., Any]) -> list[tuple[str, Any]]:
    """Each parameter of an endpoint with the dependency function it declares (None for
    a plain parameter), as FastAPI reads them: from `Annotated[..., Depends(f)]`."""
    hints = typing.get_type_hints(endpoint, include_extras=True)
    declared = []
    for name in inspect.signature(endpoint).parameters:
        metadata = getattr(hints.get(name), "__metadata__", ())
        depends = [m.dependency for m in metadata if isinstance(m, params.Depends)]
        declared.append((name, depends[0] if depends else None))
    return declared


def _check_endpoints() -> None:
    """This middleware calls the endpoints with the dependencies they declare today. A
    dependency added later (to a route, to its router) would be skipped here, silently:
    fail at import instead, so whoever adds one updates this file too."""
    expected = [
        (
            _METADATA,
            [
                ("image_id", None),
                ("service", image_endpoints.get_images),
                ("owner", current_owner),
                ("link_service", get_link_service),
                ("links", None),  # a query parameter: such requests go to FastAPI
            ],
        ),
        (
            _CONTENT,
            [
                ("image_id", None),
                ("service", content_endpoints.get_content),
                ("viewer", optional_owner),
                ("conditions", request_conditions),
                ("delivery", request_delivery),
            ],
        ),
    ]
    for route, declared in expected:
        try:
            actual = _dependencies(route.endpoint)
        except NameError:  # an annotation we cannot even resolve: not what we call
            actual = []
        if actual != declared or route.dependencies:
            raise RuntimeError(f"web/hot_reads.py is out of date with {route.path}")
    for router in (image_endpoints.router, content_endpoints.router):
        if router.dependencies:
            raise RuntimeError("web/hot_reads.py does not apply router dependencies")


_check_endpoints()


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    owner: str | None
    key_id: str | None
    generations: tuple[int, int]  # (image rows, keys) when it was computed


class HotReads:
    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        # Per-entry expiry (the row's and the key's), so no TTL of its own.
        self.answers: TtlCache[AnswerKey, _Answer] = TtlCache(FOREVER, _MAX_ANSWERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app: FastAPI | None = scope.get("app")
        route = None
        if app is not None and not app.dependency_overrides and not app.router.dependencies:
            route = self._matching_route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        image_id, content = scope["path_params"]["image_id"], route is _CONTENT
        answer: _Answer | Response
        try:
            answer = await self._answer(scope, receive, image_id, content)
        except Exception as exc:  # this middleware sits outside Starlette's error layer
            answer = await handle_unexpected(Request(scope, receive), exc)
        # Sent outside the `try`: an error once the response has started is the server's to
        # log (it cannot become a second response).
        if isinstance(answer, Response):
            await answer(scope, receive, send)
            return
        scope.setdefault("state", {})["owner"] = answer.owner
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
        )
        await send({"type": "http.response.body", "body": answer.body})

    @staticmethod
    def _matching_route(scope: Scope) -> APIRoute | None:
        """One of the two routes, when it is the route FastAPI would pick for this request
        and its id is one FastAPI would accept (longer ones are its 422 to give). Sets the
        route and path parameters in the scope, as FastAPI's router would (logs and
        metrics label requests by route template)."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return None  # HEAD too: FastAPI's HEAD routes answer it, from the same endpoint
        for route in (_CONTENT, _METADATA):
            match, child = route.matches(scope)
            if match is Match.FULL:
                if route is _METADATA and scope["query_string"]:
                    return None  # `?links=` and whatever else: FastAPI parses queries
                if len(child["path_params"]["image_id"]) > IMAGE_ID_MAX_LENGTH:
                    return None
                scope.update(child)
                scope["route"] = route
                return route
        return None

    async def _answer(
        self, scope: Scope, receive: Receive, image_id: str, content: bool
    ) -> _Answer | Response:
        """A kept answer to replay, or the response computed by the endpoint (a problem
        response for a ProblemError)."""
        runtime = self.runtime
        rows, keys = runtime.images.rows, runtime.keys.cache
        key = self._key(scope, image_id, content)
        if key is not None:
            kept = self._replayable(key, (rows.generation, keys.generation))
            if kept is not None and await self._counted(scope, kept):
                return kept
        generations = (rows.generation, keys.generation)
        # What the row cache held before: if it was fresh, this answer is computed from it,
        # even if another request reloads it meanwhile.
        row_expires = rows.expires_at(image_id)
        request = Request(scope, receive)
        response: Response
        link_expires: float | None = None
        try:
            if content:
                viewer = await optional_owner(request)
                conditions = await request_conditions(request)
                delivery = await request_delivery(request)
                if delivery.grant is not None:
                    # A signed link's answer is kept no longer than the link is valid.
                    left = delivery.grant.expires_at - time.time()
                    link_expires = time.monotonic() + left
                response = await content_endpoints.get_image_content(
                    image_id, runtime.content, viewer, conditions, delivery
                )
            else:
                owner = await current_owner(request)
                response = await image_endpoints.get_image(
                    image_id, runtime.images, owner, runtime.links
                )
        except ProblemError as exc:
            return await handle_problem(request, exc)
        if key is not None and response.status_code in (200, 302):
            self._keep(scope, key, response, generations, row_expires, link_expires)
        return response

    @staticmethod
    def _key(scope: Scope, image_id: str, content: bool) -> AnswerKey | None:
        """The answer's identity (image, route, credentials), or None when the answer must
        be computed: a conditional request, or credentials not in the one canonical form
        (`Bearer <key>`, once), so that no client can spread one key over many entries."""
        authorization: bytes | None = None
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        for name, value in headers:
            if name == b"authorization":
                if authorization is not None:
                    return None
                authorization = value
            elif name in CONDITION_NAMES:
                return None
        query: bytes = scope["query_string"]
        if len(query) > _MAX_KEPT_QUERY:
            return None
        if authorization is None:
            return image_id, content, query, None
        if not _CANONICAL_BEARER.fullmatch(authorization):
            return None
        return image_id, content, query, hashlib.sha256(authorization).digest()

    def _keep(
        self,
        scope: Scope,
        key: AnswerKey,
        response: Response,
        generations: tuple[int, int],
        row_expires: float | None,
        link_expires: float | None = None,
    ) -> None:
        if type(response) is not Response:  # proxied bytes stream: never kept
            return
        runtime = self.runtime
        if row_expires is None:
            row_expires = runtime.images.rows.expires_at(key[0])
        if row_expires is None:  # not cached (read cache off): neither is the answer
            return
        expires = row_expires if link_expires is None else min(row_expires, link_expires)
        state = scope.get("state", {})
        key_id = state.get("key_id")
        if key_id is not None:
            key_expires = runtime.keys.cache.expires_at(key_id)
            if key_expires is None:
                return
            # A key entry refreshed meanwhile can only be newer; the row still caps it.
            expires = min(expires, key_expires)
        self.answers.put(
            key,
            _Answer(
                status=response.status_code,
                headers=tuple(response.raw_headers),
                body=bytes(response.body),
                owner=state.get("owner"),
                key_id=key_id,
                generations=generations,
            ),
            expires=expires,
        )

    def _replayable(self, key: AnswerKey, generations: tuple[int, int]) -> _Answer | None:
        answer = self.answers.get(key)
        if answer is None:
            return None
        if answer.generations != generations:
            self.answers.discard(key)
            return None
        return answer

    async def _counted(self, scope: Scope, answer: _Answer) -> bool:
        """A replay takes a rate-limit token too; False: over the limit, and the full
        path answers the 429 (with the same limiter)."""
        limiter = self.runtime.rate_limiter
        if limiter is None or answer.key_id is None:
            return True
        quota = await limiter.take(answer.key_id)
        if quota is None:
            return True  # the shared store is down: served uncounted
        if not quota.allowed:
            return False
        scope.setdefault("state", {})["ratelimit"] = quota
        return True
