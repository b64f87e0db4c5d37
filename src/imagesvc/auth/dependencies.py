"""FastAPI dependencies: who is calling (the owner every query is scoped to).

Each is one `async def` reading the request directly: FastAPI runs plain `def` dependencies
in a worker thread, and every sub-dependency and declared parameter costs validation work
on every request (measured on the hot `/content` path). The bearer scheme is declared in
the OpenAPI document by openapi.py instead of through `fastapi.security`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from starlette.types import Scope

from imagesvc.auth.ratelimit import TooManyRequests

if TYPE_CHECKING:
    from imagesvc.runtime import Runtime


def _authorization(scope: Scope) -> str | None:
    # One pass over the raw headers (ASGI names are lower-case bytes): cheaper than
    # building Starlette's Headers view for the one header we need.
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


async def _owner_of(scope: Scope, authorization: str | None) -> str:
    runtime: Runtime = scope["app"].state.runtime
    principal = await runtime.keys.authenticate(authorization)
    state = scope.setdefault("state", {})
    limiter = runtime.rate_limiter
    if limiter is not None:
        quota = await limiter.take(principal.key_id)
        if quota is not None:
            state["ratelimit"] = quota  # its headers go on the answer (web/context.py)
            if not quota.allowed:
                raise TooManyRequests(quota.retry_after)
    state["owner"] = principal.owner  # for the request log line
    state["key_id"] = principal.key_id  # for hot_reads' answer cache (rate limit on reuse)
    return principal.owner


async def current_owner(request: Request) -> str:
    """The caller's owner, from a valid API key; 401 otherwise."""
    return await _owner_of(request.scope, _authorization(request.scope))


async def optional_owner(request: Request) -> str | None:
    """For reads that public images allow without a key: None when no key is sent. A key
    that is sent must be valid (a bad key is a 401, not silently anonymous)."""
    authorization = _authorization(request.scope)
    if authorization is None:
        return None
    return await _owner_of(request.scope, authorization)


OwnerDep = Annotated[str, Depends(current_owner)]
ViewerDep = Annotated[str | None, Depends(optional_owner)]
