"""CORS (SPEC §9): browsers on other origins may call the API, and read its errors.

Not Starlette's CORSMiddleware: SPEC §9 wants a refused preflight to be a 403 problem (it
answers a plain-text 400), the full method and header lists whatever the preflight asks
for, and nothing at all for a request without `Origin`. It sits just inside the request
context (web/stack.py), outside the hot reads and FastAPI's error layer, so every response
to an allowed origin carries `Access-Control-Allow-Origin` and the exposed headers: 401s
from auth, 413/415 from uploads, 429s, 503s and 500s included. Without them the browser
would report a bare network error exactly when the problem body matters. Preflights are
answered here, before authentication, the router or the hot reads run.

Cost: a request without `Origin` (every server-to-server call, every `<img>` of the same
origin) is one pass over the header names and a direct call of the next layer
(bench/cors_overhead.py measures it). The layer is not installed at all while
`IMAGESVC_CORS_ORIGINS` is unset.

`Access-Control-Allow-Credentials` is never sent: keys travel in `Authorization`, never in
cookies. With a list of origins the allowed one is echoed with `Vary: Origin`; with `*` the
answer is `*` for everyone, so shared caches need not vary.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagesvc.errors import problem_response

# SPEC §9's list, and PUT: the local backend's direct uploads (PUT /v1/direct-uploads/...,
# SPEC §11) are sent by pages too.
METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# What our API and the tus endpoints of SPEC §10 read from a request.
ALLOW_HEADERS = ", ".join(
    (
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
    )
)
# What a script may read from our responses (beyond the CORS-safelisted ones).
EXPOSE_HEADERS = ", ".join(
    (
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
        # Beyond SPEC §9: the rate limit's budget (SPEC §12), so a page can pace itself.
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    )
)


class CorsMiddleware:
    def __init__(self, app: ASGIApp, *, origins: Sequence[str], max_age: int) -> None:
        self.app = app
        self.any_origin = tuple(origins) == ("*",)
        self.origins = frozenset(origin.encode("latin-1") for origin in origins)
        self.expose = EXPOSE_HEADERS.encode()
        self.preflight_headers = [
            (b"access-control-allow-methods", METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.lower().encode()),
            (b"access-control-max-age", str(max_age).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin: bytes | None = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = True
        if origin is None:  # not a cross-origin request from a browser: nothing to add
            await self.app(scope, receive, send)
            return
        allowed = self.any_origin or origin.lower() in self.origins
        if preflight and scope["method"] == "OPTIONS":
            await self._preflight(scope, receive, send, origin, allowed)
            return
        if not allowed:
            # No Access-Control-Allow-Origin: the browser keeps the response from the page.
            await self.app(scope, receive, self._varying(send))
            return
        await self.app(scope, receive, self._allowing(send, origin))

    def _origin_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin)]

    def _allowing(self, send: Send, origin: bytes) -> Send:
        added = [*self._origin_headers(origin), (b"access-control-expose-headers", self.expose)]
        vary = not self.any_origin

        async def send_allowed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if vary:
                    headers = _with_vary_origin(headers)
                message["headers"] = headers + added
            await send(message)

        return send_allowed

    def _varying(self, send: Send) -> Send:
        if self.any_origin:
            return send

        async def send_varying(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_vary_origin(list(message.get("headers", ())))
            await send(message)

        return send_varying

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, origin: bytes, allowed: bool
    ) -> None:
        if not allowed:
            response = problem_response(
                Request(scope, receive),
                status=403,
                code="origin_not_allowed",
                title="Origin not allowed",
                detail="this origin is not in IMAGESVC_CORS_ORIGINS",
                headers={} if self.any_origin else {"Vary": "Origin"},
            )
            await response(scope, receive, send)
            return
        headers = [*self._origin_headers(origin), *self.preflight_headers]
        if not self.any_origin:
            headers.append((b"vary", b"Origin"))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _with_vary_origin(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response's headers with `Origin` added to its `Vary` (kept as one header)."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            if b"origin" not in value.lower():
                headers[index] = (name, value + b", Origin")
            return headers
    headers.append((b"vary", b"Origin"))
    return headers
