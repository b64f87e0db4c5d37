"""The object-store port: what the domain needs from storage, and nothing of any SDK.

Adapters (S3, local directory) implement `ObjectStore`. They translate their own failures into
the two exceptions below at their edge, so `botocore` (or `OSError`) never reaches the domain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from imagesvc.errors import PayloadTooLarge, ServiceUnavailable


class StorageUnavailable(ServiceUnavailable):
    """The store could not be reached or failed in a way a retry later may fix."""

    code = "storage_unavailable"

    def __init__(self, detail: str = "the object store is unavailable; retry shortly") -> None:
        super().__init__(detail, retry_after=5)


class ObjectMissing(Exception):
    """The key does not exist in the store (a domain-level 404 or a dangling row)."""


class PartsMismatch(Exception):
    """Completing a multipart upload named parts the store does not hold as named (a part
    is missing, or was overwritten since its ETag was recorded)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class SignedUrl:
    url: str
    valid_for: float  # seconds from now


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request a client may send straight to the store, with exactly these headers."""

    url: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """An unfinished write: an S3 multipart upload, or a local temp file."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range, already validated against the object's size."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class ObjectStream:
    """Bytes of one object being read; always `aclose()` it (the body holds a connection)."""

    def __init__(self, chunks: AsyncIterator[bytes], close: Callable[[], Awaitable[None]]) -> None:
        self._chunks = chunks
        self._close = close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        await self._close()


class ObjectWriter(Protocol):
    """One object being written. Nothing is visible under the key before `complete()`."""

    async def write(self, data: bytes) -> None: ...

    async def complete(self) -> int | None:
        """Make the object durable under its key; raises StorageUnavailable on failure.
        Returns the byte count the store confirmed for exactly this write (a single
        request with Content-Length; the sizes it lists for a multipart upload's parts; an
        fsynced file), or None when only a HEAD can tell."""

    async def abort(self) -> None:
        """Discard everything written so far (open multipart upload included). Idempotent."""


class PartWriter(Protocol):
    """One part of a multipart upload, streamed while its bytes arrive: exactly the size it
    was opened with, then `finish()`. Until then the part is not stored under its number
    (an earlier upload of that number, if any, stays)."""

    async def write(self, data: bytes) -> None:
        """Raises StorageUnavailable if the store gave up on the request, ValueError past
        the declared size."""

    async def finish(self) -> str:
        """Wait until the store holds the part; returns its ETag. ValueError if fewer bytes
        than declared were written; ObjectMissing when the upload is gone."""
        ...

    async def abort(self) -> None:
        """Give the part up (the request is cut off before its declared length, or the
        temp file removed). Idempotent; never raises a store failure."""


class ObjectStore(Protocol):
    async def start(self) -> None:
        """Open clients / create directories; called once by the app lifespan."""

    async def close(self) -> None:
        """Release clients and connections; the app lifespan's last call."""

    async def ensure_bucket(self) -> bool:
        """Create the bucket (or directory) when missing; True if it was created."""

    async def open_write(
        self, key: str, *, content_type: str, size: int | None = None
    ) -> ObjectWriter:
        """`size`: the exact byte count that will be written, when known in advance (a raw
        upload's Content-Length). The S3 adapter then streams an object that fits in one
        part straight into a single PutObject instead of buffering it."""
        ...

    async def open_read(self, key: str, byte_range: ByteRange | None = None) -> ObjectStream:
        """Raises ObjectMissing if the key does not exist."""

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with prefix; returns how many were deleted."""

    def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with prefix, in pages fetched lazily."""
        ...

    async def delete_keys(self, keys: Sequence[str]) -> None:
        """Delete these objects; missing ones are not an error."""

    def list_uploads(self, prefix: str) -> AsyncIterator[UploadInfo]:
        """Unfinished writes under prefix (for the reconciler)."""
        ...

    async def abort_upload(self, upload: UploadInfo) -> None:
        """Discard an unfinished write; one already gone is not an error."""

    async def signed_url(
        self, key: str, *, ttl: int, content_disposition: str | None = None
    ) -> SignedUrl | None:
        """A time-limited GET URL, or None when this store can only be read through us.
        With `content_disposition`, the store answers the URL with that header (S3's
        `response-content-disposition`), and the value is covered by the signature."""

    async def signed_put(
        self, key: str, *, content_length: int, content_type: str, ttl: int
    ) -> SignedRequest | None:
        """A time-limited PUT of exactly `content_length` bytes of `content_type` to `key`,
        for a client to send itself (the length and type are signed where the store checks
        signatures; a store may still accept anything, so what arrives must be checked).
        None when this store can only be written through us (the local backend)."""

    async def copy(self, source: str, destination: str, *, content_type: str) -> None:
        """Copy an object inside the store (no bytes pass through us), replacing
        `destination`; the copy keeps `content_type` where the store keeps one. `source ==
        destination` only changes the type. Raises ObjectMissing if `source` is missing."""

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the store (and its bucket) answers."""

    # --- resumable uploads: writes that outlive one request (tus, uploads/tus/) --------------

    async def put_object(self, key: str, body: bytes, *, content_type: str) -> None:
        """Store `body` under `key` in one request (durable when this returns)."""

    async def create_multipart(self, key: str, *, content_type: str) -> str:
        """Open a multipart upload of `key`; returns its id, valid across processes."""
        ...

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        """Store part `number` (1..10000; all but the last at least 5 MiB) of the upload;
        a part uploaded again under the same number replaces the earlier one. Returns the
        part's ETag. Raises ObjectMissing when the upload is gone (aborted, completed)."""
        ...

    async def open_part(self, key: str, upload_id: str, number: int, size: int) -> PartWriter:
        """Like `upload_part`, with the part's bytes written while they arrive (`size` is
        exact and known in advance): the part is stored when `finish()` returns, replacing
        an earlier upload of `number`. A streamed S3 request cannot be rewound, so it is not
        retried once its body started: a failure is the caller's to repeat."""
        ...

    async def complete_multipart(
        self, key: str, upload_id: str, etags: Sequence[str]
    ) -> int | None:
        """Assemble parts 1..len(etags), in order, into `key`; parts uploaded but not named
        are dropped. Returns the object's size as the store tells it (the sizes it lists
        for the named parts, the bytes assembled), or None when it did not (then only a
        HEAD can). Raises ObjectMissing (no such upload) or PartsMismatch."""

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Discard the upload and its parts; one already gone is not an error."""


async def read_object(store: ObjectStore, key: str, *, size: int, limit: int) -> bytes:
    """An object's bytes, whole (decoders read from memory), for objects of at most `limit`
    bytes: `size` is what the row says the object holds. Raises ObjectMissing."""
    if size > limit:
        raise PayloadTooLarge(f"images over {limit} bytes are not decoded")
    stream = await store.open_read(key)
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()
