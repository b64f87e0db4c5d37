"""HTTP side of serving bytes, shared by `/content` and variants: request conditions in,
302 / 304 / 200 / 206 out."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from imagesvc.errors import InvalidParameter
from imagesvc.openapi import BINARY
from imagesvc.serving.content import (
    PLAIN,
    Blob,
    Bytes,
    Conditions,
    Content,
    Delivery,
    LinkGrant,
    NotModified,
    RangeRequest,
    Redirect,
)
from imagesvc.serving.disposition import content_disposition
from imagesvc.serving.links import LINK_MARKERS, LinkService
from imagesvc.storage.port import ObjectStream

# The bytes behind an id never change (a new upload is a new id): clients may keep them.
ONE_YEAR = 31536000
# The bytes come as their own image type; `application/octet-stream` is listed too because
# client generators (openapi-python-client) only turn that one into a file/bytes result.
_BYTES = {"image/*": BINARY, "application/octet-stream": BINARY}
CONTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The image bytes.", "content": _BYTES},
    206: {"description": "The requested byte range.", "content": _BYTES},
    302: {"description": "Redirect to a short-lived signed URL of the bytes."},
    304: {"description": "The client's copy (If-None-Match) is current."},
}

# 18 digits: positions beyond any real object, and never Python's int-parsing limit.
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})", re.ASCII)


def parse_range(header: str | None) -> RangeRequest | None:
    """One `bytes=first-last | first- | -suffix` range; anything else is ignored (RFC 9110
    lets a server answer 200 with the whole content instead of multiple ranges)."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or not any(match.groups()):
        return None
    first = int(match[1]) if match[1] else None
    last = int(match[2]) if match[2] else None
    if first is not None and last is not None and last < first:
        return None
    return RangeRequest(first, last)


_NO_CONDITIONS = Conditions()
# Raw (ASGI) names of the headers that make a content request conditional.
CONDITION_NAMES = (b"range", b"if-none-match", b"if-range")


async def request_conditions(request: Request) -> Conditions:
    # Read straight from the raw headers, in one pass: three declared Header parameters
    # cost FastAPI more per request than the rest of a cached redirect (they are
    # documented by CONDITION_HEADERS instead), and most requests send none of them.
    found: dict[bytes, str] = {}
    for name, value in request.scope["headers"]:
        if name in CONDITION_NAMES and name not in found:
            found[name] = value.decode("latin-1")
    if not found:
        return _NO_CONDITIONS
    return Conditions(
        parse_range(found.get(b"range")), found.get(b"if-none-match"), found.get(b"if-range")
    )


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


CONDITION_HEADERS = [
    _header("Range", "One `bytes=first-last`, `first-` or `-suffix` range (proxy mode)."),
    _header("If-Range", "Only honour `Range` if this is still the current ETag."),
    _header("If-None-Match", "ETags the client has; 304 if the current one is among them."),
]


ConditionsDep = Annotated[Conditions, Depends(request_conditions)]

_HEAD = Delivery(head=True)
_TRUE, _FALSE = frozenset({"1", "true"}), frozenset({"0", "false", ""})


def _download(query: bytes) -> bool:
    if b"download=" not in query:
        return False
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name == "download":
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            raise InvalidParameter("download: must be 1 (a download) or 0")
    return False


async def request_delivery(request: Request) -> Delivery:
    """`?download=`, HEAD, and a signed link's grant (serving/links.py), read straight from
    the scope like the conditions: most requests have no query string at all."""
    scope = request.scope
    head = scope["method"] == "HEAD"
    query: bytes = scope["query_string"]
    if not query:
        return _HEAD if head else PLAIN
    grant = None
    if any(marker in query for marker in LINK_MARKERS):
        signer = await scope["app"].state.runtime.links.keys.signer()
        # The raw path as sent (ASGI's `path` is percent-decoded), without the query.
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        grant = signer.verify(
            raw_path.decode("latin-1"),
            query.decode("latin-1"),
            variant="spec" in scope.get("path_params", {}),
        )
    return Delivery(download=_download(query), head=head, grant=grant)


DeliveryDep = Annotated[Delivery, Depends(request_delivery)]


async def get_link_service(request: Request) -> LinkService:
    service: LinkService = request.app.state.runtime.links
    return service


LinksDep = Annotated[LinkService, Depends(get_link_service)]

_QUERY = {"in": "query", "required": False}
DELIVERY_PARAMETERS = [
    {
        **_QUERY,
        "name": "download",
        "description": "`1`: `Content-Disposition: attachment` with the image's filename "
        "(proxied, or baked into the signed store URL of a redirect).",
        "schema": {"type": "string", "enum": ["0", "1"]},
    },
    {
        **_QUERY,
        "name": "exp",
        "description": "Signed links only (`createImageLink`): expiry, unix seconds.",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
    },
    {
        **_QUERY,
        "name": "sig",
        "description": "Signed links only: the signature, always the last parameter. A link "
        "works without a key until `exp`, for exactly its path and query (403 otherwise).",
        "schema": {"type": "string"},
    },
]
# HEAD answers what GET would, without a body.
HEAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The headers GET would send (`Content-Length`, `ETag`...), no body."},
    206: {"description": "The headers of the requested byte range, no body."},
    302: {"description": "Redirect to a short-lived signed URL of the bytes."},
    304: {"description": "The client's copy (If-None-Match) is current."},
}


# How long a shared cache (CDN) may keep public bytes: the bound on how long a switch to
# private or a delete can lag there, the same as for redirects to IMAGESVC_PUBLIC_BASE_URL.
PUBLIC_MAX_AGE = 3600


def cache_control(blob: Blob, max_age: int = ONE_YEAR, grant: LinkGrant | None = None) -> str:
    """Private bytes: only the client's own cache, for good (an id's bytes never change).
    Public bytes may sit in shared caches, but only for an hour. A signed link's answer is
    the same for whoever holds the URL: shared caches may keep it until the link expires,
    an hour at most (the bound on how long a delete lags there)."""
    if grant is not None:
        left = max(0, grant.expires_at - int(time.time()))
        return f"public, max-age={min(max_age, left, PUBLIC_MAX_AGE)}"
    if blob.public:
        return f"public, max-age={min(max_age, PUBLIC_MAX_AGE)}"
    immutable = ", immutable" if max_age == ONE_YEAR else ""
    return f"private, max-age={max_age}{immutable}"


def content_response(
    result: Content, *, vary_accept: bool = False, delivery: Delivery = PLAIN
) -> Response:
    headers = {"ETag": result.blob.etag}
    if vary_accept:
        headers["Vary"] = "Accept"
    grant = delivery.grant
    if isinstance(result, Redirect):
        headers["Cache-Control"] = cache_control(result.blob, result.cacheable_for, grant)
        # Not RedirectResponse: it percent-encodes the URL again on every request, and
        # serving.py hands out URLs that are encoded already.
        headers["Location"] = result.url
        return Response(status_code=302, headers=headers)
    headers["Cache-Control"] = cache_control(result.blob, grant=grant)
    if isinstance(result, NotModified):
        return Response(status_code=304, headers=headers)
    return _bytes_response(result, headers)


def _bytes_response(result: Bytes, headers: dict[str, str]) -> Response:
    blob, byte_range = result.blob, result.byte_range
    headers["Accept-Ranges"] = "bytes"
    # Our bytes are an image of the type we detected; never let a browser guess otherwise.
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Content-Disposition"] = content_disposition(
        "attachment" if result.download else "inline", blob.name
    )
    if byte_range is None:
        headers["Content-Length"] = str(blob.byte_size)
        status = 200
    else:
        headers["Content-Length"] = str(byte_range.length)
        headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{blob.byte_size}"
        status = 206
    if result.stream is None:  # HEAD: the headers only, and no object was opened
        return Response(status_code=status, headers=headers, media_type=blob.content_type)
    return _ObjectResponse(
        result.stream, status_code=status, headers=headers, media_type=blob.content_type
    )


class _ObjectResponse(StreamingResponse):
    """Streams an object and always closes it (releasing the S3 connection or the file),
    even when the client is gone before the first byte is sent."""

    def __init__(self, stream: ObjectStream, **kwargs: Any) -> None:
        super().__init__(aiter(stream), **kwargs)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.stream.aclose()
