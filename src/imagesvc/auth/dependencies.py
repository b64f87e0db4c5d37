"""FastAPI dependencies: who is calling (the owner every query is scoped to).

Each is one `async def` reading the request directly: FastAPI runs plain `def` dependencies
in a worker thread, and every sub-dependency and declared parameter costs validation work
on every request (measured on the hot `/content` path). The bearer scheme is declared in
the OpenAPI document by openapi.py instead of through `fastapi.security`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from imagesvc.auth.keys import KeyService
from imagesvc.auth.ratelimit import RateLimiter


async def current_owner(request: Request) -> str:
    """The caller's owner, from a valid API key; 401 otherwise."""
    keys: KeyService = request.app.state.keys
    principal = await keys.authenticate(request.headers.get("authorization"))
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        limiter.check(principal.key_id)
    request.state.owner = principal.owner
    return principal.owner


async def optional_owner(request: Request) -> str | None:
    """For reads that public images allow without a key: None when no key is sent. A key
    that is sent must be valid (a bad key is a 401, not silently anonymous)."""
    if "authorization" not in request.headers:
        return None
    return await current_owner(request)


OwnerDep = Annotated[str, Depends(current_owner)]
ViewerDep = Annotated[str | None, Depends(optional_owner)]
