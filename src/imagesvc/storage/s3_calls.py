"""Calls to S3, and what their failures mean: the one place botocore's and aiohttp's errors
become the port's `StorageUnavailable` / `ObjectMissing` / `PartsMismatch`. Only the S3
adapter (s3.py, s3_writer.py, this module) imports aioboto3/botocore."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from imagesvc.storage.port import ObjectMissing, PartsMismatch, StorageUnavailable

log = logging.getLogger("imagesvc.storage.s3")

T = TypeVar("T")
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
# CompleteMultipartUpload naming a part the store does not hold as named.
PARTS_CODES = frozenset({"InvalidPart", "InvalidPartOrder"})

# A store that stops answering or cuts a body short: botocore's own errors, socket errors,
# and aiohttp's (a response body cut short raises ClientPayloadError, not an OSError).
TRANSPORT_ERRORS = (TimeoutError, BotoCoreError, OSError, aiohttp.ClientError)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def call(what: str, op: Awaitable[T]) -> T:
    """Await one S3 call, translating store failures into the port's exceptions."""
    try:
        return await op
    except ClientError as exc:
        code = error_code(exc)
        if code in MISSING_CODES:
            raise ObjectMissing(what) from None
        if code in PARTS_CODES:
            raise PartsMismatch(what) from None
        log.warning("s3 %s failed: %s", what, code or "unknown error")
        raise StorageUnavailable() from None
    except TRANSPORT_ERRORS as exc:
        log.warning("s3 %s failed: %s", what, type(exc).__name__)
        raise StorageUnavailable() from None


async def best_effort(cleanup: Callable[[], Awaitable[object]]) -> None:
    """Run a clean-up call; failures are logged, never raised (gc finishes the job)."""
    try:
        await cleanup()
    except (ClientError, *TRANSPORT_ERRORS) as exc:
        log.warning("s3 clean-up call failed, gc will retry: %s", type(exc).__name__)
