"""The two hottest reads, `GET /v1/images/{id}/content` and `GET /v1/images/{id}`, called
without FastAPI's router and dependency solver.

Profiling a cached redirect showed our own work (key check, cached row, cached signed URL)
at a few percent of the request; route matching, dependency solving and parameter
validation were more than half of it. This middleware matches the two paths itself and calls
the same endpoint functions with the same dependencies (`optional_owner`, `current_owner`,
`request_conditions`), so the auth, rate-limit, serving and error rules stay in one place.
A `ProblemError` becomes the same problem+json through the same handler; anything this
middleware does not recognise (other methods, other paths, ids FastAPI would reject as too
long, a mounted `root_path`) goes to FastAPI untouched, and so does everything while
dependency overrides (a testing feature) are set, since only FastAPI applies them.

It sits inside RequestContextMiddleware, so request ids, log lines and metrics are the same
as for every other route. tests/test_hot_reads.py checks that both paths answer alike.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from imagesvc.auth.dependencies import current_owner, optional_owner
from imagesvc.errors import ProblemError, handle_problem
from imagesvc.images.endpoints import get_image, get_image_content, router
from imagesvc.images.http_content import request_conditions

# The id segment as FastAPI's path parameter accepts it (max_length=64); longer ones are
# left to FastAPI, which answers 422.
_PATH = re.compile(r"/v1/images/([^/]{1,64})(/content)?")
_ROUTES = {
    route.endpoint: route
    for route in router.routes
    if isinstance(route, APIRoute) and route.endpoint in (get_image, get_image_content)
}


class HotReads:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            match = _PATH.fullmatch(scope["path"])
        app: FastAPI | None = scope.get("app")
        if match is None or app is None or app.dependency_overrides:
            await self.app(scope, receive, send)
            return
        image_id, content = match[1], match[2] is not None
        # Logs and metrics label requests by route template, as FastAPI's router would.
        scope["route"] = _ROUTES[get_image_content if content else get_image]
        request = Request(scope, receive)
        service = app.state.images
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
            response = await handle_problem(request, exc)
        await response(scope, receive, send)
