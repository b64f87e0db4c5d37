"""FastAPI dependencies: who is calling (the owner every query is scoped to)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imagesvc.auth.keys import KeyService
from imagesvc.auth.ratelimit import RateLimiter

# Declares the scheme in the OpenAPI document (so generated SDKs send the header); the
# checking is ours, so that every failure is a problem+json 401 with WWW-Authenticate.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `imagesvc keys create --owner NAME`: `Bearer isk_...`.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


# Every dependency is `async def`: FastAPI runs plain `def` dependencies in a worker thread,
# a thread hop per dependency per request (measured: the largest cost of a cached GET).
async def get_keys(request: Request) -> KeyService:
    keys: KeyService = request.app.state.keys
    return keys


async def current_owner(
    request: Request, _: Credentials, keys: Annotated[KeyService, Depends(get_keys)]
) -> str:
    """The caller's owner, from a valid API key; 401 otherwise."""
    principal = await keys.authenticate(request.headers.get("authorization"))
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        limiter.check(principal.key_id)
    request.state.owner = principal.owner
    return principal.owner


async def optional_owner(
    request: Request, credentials: Credentials, keys: Annotated[KeyService, Depends(get_keys)]
) -> str | None:
    """For reads that public images allow without a key: None when no key is sent. A key
    that is sent must be valid (a bad key is a 401, not silently anonymous)."""
    if "authorization" not in request.headers:
        return None
    return await current_owner(request, credentials, keys)


OwnerDep = Annotated[str, Depends(current_owner)]
ViewerDep = Annotated[str | None, Depends(optional_owner)]
