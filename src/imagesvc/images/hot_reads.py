"""The two hottest reads, `GET /v1/images/{id}/content` and `GET /v1/images/{id}`, called
without FastAPI's router and dependency solver, and their answers reused for a moment.

Profiling a cached redirect showed our own work (key check, cached row, cached signed URL)
at a few percent of the request; route matching, dependency solving and parameter
validation were more than half of it. This middleware matches the two paths itself and calls
the same endpoint functions with the same dependencies (`optional_owner`, `current_owner`,
`request_conditions`), so the auth, rate-limit, serving and error rules stay in one place.
A `ProblemError` becomes the same problem+json through the same handler; anything this
middleware does not recognise (other methods, other paths, ids FastAPI would reject as too
long, a mounted `root_path`) goes to FastAPI untouched, and so does everything while
dependency overrides (a testing feature) or app-wide dependencies are set, since only
FastAPI applies them. The routes' own dependencies are checked at import (_check_routes).

Answer cache: a 200 (metadata) or 302 (redirect) computed here is kept for
`read_cache_seconds` (the row cache's bound, default 1 s; 0 turns both off) and replayed to
the same credentials, so a busy image costs a dictionary lookup instead of the key check, the
row lookup and building the response. Replays still take a rate-limit token. Requests with
`Range`, `If-None-Match` or `If-Range` are always computed. This process's own changes
(PATCH, DELETE, a key revocation) drop every kept answer at once, through the services'
generation counters; other processes' changes show within the bound, exactly as with the
row cache. Entries are keyed by a SHA-256 of the Authorization header, never the key itself.

It sits inside RequestContextMiddleware, so request ids, log lines and metrics are the same
as for every other route, and both sit outside FastAPI's own middleware (app._ImagesvcAPI):
an unexpected error here gets the app's 500 problem from `errors.handle_unexpected`, as
Starlette's error layer would give it. tests/test_hot_reads.py checks that both paths
answer alike.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from imagesvc.auth.dependencies import current_owner, optional_owner
from imagesvc.auth.keys import KEY_PATTERN, KeyService
from imagesvc.auth.ratelimit import RateLimiter
from imagesvc.errors import ProblemError, handle_problem, handle_unexpected
from imagesvc.images.endpoints import get_image, get_image_content, router
from imagesvc.images.http_content import CONDITION_NAMES, request_conditions
from imagesvc.images.service import ImageService

# The id segment as FastAPI's path parameter accepts it (max_length=64); longer ones are
# left to FastAPI, which answers 422.
_PATH = re.compile(r"/v1/images/([^/]{1,64})(/content)?")
_ROUTES = {
    route.endpoint: route
    for route in router.routes
    if isinstance(route, APIRoute) and route.endpoint in (get_image, get_image_content)
}


def _check_routes() -> None:
    """This middleware calls the endpoints with the dependencies they declare today. A
    dependency added later (to a route, to the router) would be skipped here, silently:
    fail at import instead, so whoever adds one updates this file too."""
    expected: list[tuple[Callable[..., Any], list[str]]] = [
        (get_image, ["get_service", "current_owner"]),
        (get_image_content, ["get_service", "optional_owner", "request_conditions"]),
    ]
    for endpoint, names in expected:
        route = _ROUTES[endpoint]
        declared = [d.call.__name__ for d in route.dependant.dependencies if d.call]
        params = route.dependant
        other_params = params.query_params + params.header_params + params.cookie_params
        if declared != names or route.dependencies or router.dependencies or other_params:
            raise RuntimeError(f"hot_reads.py is out of date with {route.path}: {declared}")


_check_routes()
_CANONICAL_BEARER = re.compile(b"Bearer " + KEY_PATTERN.pattern.encode())
_MAX_ANSWERS = 10_000


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    owner: str | None
    key_id: str | None
    generations: tuple[int, int]  # (images, keys) when it was computed
    expires: float  # time.monotonic()


class HotReads:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._answers: dict[tuple[str, bool, bytes | None], _Answer] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            match = _PATH.fullmatch(scope["path"])
        app: FastAPI | None = scope.get("app")
        if match is None or app is None or app.dependency_overrides or app.router.dependencies:
            await self.app(scope, receive, send)
            return
        image_id, content = match[1], match[2] is not None
        # Logs and metrics label requests by route template, as FastAPI's router would.
        scope["route"] = _ROUTES[get_image_content if content else get_image]
        answer: _Answer | Response
        try:
            answer = await self._answer(scope, receive, app, image_id, content)
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

    async def _answer(
        self, scope: Scope, receive: Receive, app: FastAPI, image_id: str, content: bool
    ) -> _Answer | Response:
        """A kept answer to replay, or the response computed by the endpoint (a problem
        response for a ProblemError)."""
        # The dictionary behind app.state: State's __getattr__ costs ~0.8 µs per lookup.
        state: dict[str, Any] = app.state._state
        service: ImageService = state["images"]
        keys: KeyService = state["keys"]
        key = self._key(scope, image_id, content)
        if key is not None:
            kept = self._replayable(key, service, keys, state["rate_limiter"])
            if kept is not None:
                return kept
        generations = (service.generation, keys.generation)
        # What the caches held before: if it was still fresh, that is what this answer is
        # computed from, even if another request reloads it meanwhile.
        started, row_before = time.monotonic(), service.cached_since(image_id)
        request = Request(scope, receive)
        response: Response
        try:
            if content:
                viewer = await optional_owner(request)
                conditions = await request_conditions(request)
                response = await get_image_content(image_id, service, viewer, conditions)
            else:
                owner = await current_owner(request)
                image = await get_image(image_id, service, owner)
                # What FastAPI sends for a response model: pydantic's JSON, by alias.
                response = Response(
                    image.model_dump_json(by_alias=True), media_type="application/json"
                )
        except ProblemError as exc:
            return await handle_problem(request, exc)
        if key is not None and response.status_code in (200, 302):
            fresh = row_before is not None and started - row_before < service.read_cache_seconds
            row_since = row_before if fresh else service.cached_since(image_id)
            self._keep(scope, key, response, generations, row_since, service, keys)
        return response

    @staticmethod
    def _key(scope: Scope, image_id: str, content: bool) -> tuple[str, bool, bytes | None] | None:
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
        if authorization is None:
            return image_id, content, None
        if not _CANONICAL_BEARER.fullmatch(authorization):
            return None
        return image_id, content, hashlib.sha256(authorization).digest()

    def _keep(
        self,
        scope: Scope,
        key: tuple[str, bool, bytes | None],
        response: Response,
        generations: tuple[int, int],
        row_since: float | None,
        service: ImageService,
        keys: KeyService,
    ) -> None:
        if type(response) is not Response:  # proxied bytes stream: never kept
            return
        # An answer is only as fresh as what it was computed from: it expires when the
        # cached row (or the cached key) it used would have been read again. (A key entry
        # refreshed meanwhile can only be newer; the row's bound still caps the answer.)
        if row_since is None or service.read_cache_seconds <= 0:
            return
        expires = row_since + service.read_cache_seconds
        state = scope.get("state", {})
        key_id = state.get("key_id")
        if key_id is not None:
            key_since = keys.cached_since(key_id)
            if key_since is None:
                return
            expires = min(expires, key_since + keys.cache_seconds)
        if expires <= time.monotonic():
            return
        while len(self._answers) >= _MAX_ANSWERS:
            del self._answers[next(iter(self._answers))]  # the oldest
        self._answers[key] = _Answer(
            status=response.status_code,
            headers=tuple(response.raw_headers),
            body=bytes(response.body),
            owner=state.get("owner"),
            key_id=key_id,
            generations=generations,
            expires=expires,
        )

    def _replayable(
        self,
        key: tuple[str, bool, bytes | None],
        service: ImageService,
        keys: KeyService,
        limiter: RateLimiter | None,
    ) -> _Answer | None:
        answer = self._answers.get(key)
        if answer is None:
            return None
        if answer.expires <= time.monotonic() or answer.generations != (
            service.generation,
            keys.generation,
        ):
            self._answers.pop(key, None)
            return None
        if limiter is not None and answer.key_id is not None:
            try:
                limiter.check(answer.key_id)
            except ProblemError:
                return None  # the full path answers the 429, with the same limiter
        return answer
