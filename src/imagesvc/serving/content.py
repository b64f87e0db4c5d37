"""Serving stored bytes (an original or a variant): redirect, or proxy with ETag, Range and
conditional requests. One place, so `/content` and variants behave the same."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from imagesvc.errors import NotFound, RangeNotSatisfiable, ServiceUnavailable
from imagesvc.serving.disposition import content_disposition
from imagesvc.storage.port import ByteRange, ObjectMissing, ObjectStore, ObjectStream

log = logging.getLogger(__name__)
# What a redirect's Location may carry unencoded (Starlette's RedirectResponse uses the same).
_URL_SAFE = ":/%#?=@[]!$&'()*+,;"


@dataclass(frozen=True, slots=True)
class ServeOptions:
    redirect: bool
    signed_url_ttl: int
    # A CDN in front of the bucket: public images redirect there instead of to a signature.
    public_base_url: str | None = None


@dataclass(frozen=True, slots=True)
class Blob:
    """What serving needs to know about one stored object."""

    storage_key: str
    sha256: str
    byte_size: int
    content_type: str
    public: bool
    # What a download is called (serving/disposition.py: the filename, else `<id>.<ext>`).
    name: str

    @property
    def etag(self) -> str:
        # Strong, from the content: identical across backends and stable forever.
        return f'"{self.sha256}"'


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """A parsed single `Range: bytes=` spec: first-last, first- (last None) or -suffix."""

    first: int | None
    last: int | None

    def resolve(self, size: int) -> ByteRange:
        # RFC 9110 §15.5.17: a 416 says how long the representation is.
        unsatisfiable = {"Content-Range": f"bytes */{size}"}
        if self.first is None:
            if not self.last:
                raise RangeNotSatisfiable("the requested range is empty", headers=unsatisfiable)
            return ByteRange(max(0, size - self.last), size - 1)
        if self.first >= size:
            raise RangeNotSatisfiable(
                "the requested range starts past the end of the image", headers=unsatisfiable
            )
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return ByteRange(self.first, last)


@dataclass(frozen=True, slots=True)
class Conditions:
    byte_range: RangeRequest | None = None
    if_none_match: str | None = None
    if_range: str | None = None


@dataclass(frozen=True, slots=True)
class LinkGrant:
    """A verified signed link (serving/links.py): it stands in for the owner's key, for
    the resource and options it was signed for, until `expires_at` (unix seconds)."""

    expires_at: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """How the bytes are asked for, beyond conditions: as a download (`?download=1`),
    headers only (HEAD: no object is opened), through a signed link."""

    download: bool = False
    head: bool = False
    grant: LinkGrant | None = None


PLAIN = Delivery()


@dataclass(frozen=True, slots=True)
class Redirect:
    url: str
    blob: Blob
    cacheable_for: int  # seconds a client may reuse this redirect


@dataclass(frozen=True, slots=True)
class NotModified:
    blob: Blob


@dataclass(frozen=True, slots=True)
class Bytes:
    blob: Blob
    stream: ObjectStream | None  # None for HEAD: the headers of the bytes, not the bytes
    byte_range: ByteRange | None
    download: bool = False


Content = Redirect | NotModified | Bytes


def etag_matches(if_none_match: str | None, blob: Blob) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or blob.etag in tags


async def serve(
    store: ObjectStore,
    options: ServeOptions,
    blob: Blob,
    conditions: Conditions,
    *,
    still_there: Callable[[], Awaitable[bool]],
    delivery: Delivery = PLAIN,
) -> Content:
    """`still_there` re-checks the row when the object is missing: a delete that raced
    this read makes it a 404; otherwise the store lost data and it is a 503."""
    if etag_matches(conditions.if_none_match, blob):
        return NotModified(blob)
    byte_range = conditions.byte_range
    if conditions.if_range is not None and conditions.if_range.strip() != blob.etag:
        byte_range = None  # the client's partial copy is stale: send it all
    if options.redirect:
        redirect = await _redirect(store, options, blob, delivery.download)
        if redirect is not None:
            return redirect
    resolved = byte_range.resolve(blob.byte_size) if byte_range else None
    if delivery.head:
        # What GET would send, from the row alone: the object is not opened. (A row whose
        # object vanished is found by the GET that follows, as the row cache allows.)
        return Bytes(blob, None, resolved, delivery.download)
    try:
        stream = await store.open_read(blob.storage_key, resolved)
    except ObjectMissing:
        if not await still_there():
            raise NotFound("no such image") from None
        log.error("object %s of a ready row is missing", blob.storage_key)
        raise ServiceUnavailable("the image's bytes are unavailable; retry shortly") from None
    return Bytes(blob, stream, resolved, delivery.download)


async def _redirect(
    store: ObjectStore, options: ServeOptions, blob: Blob, download: bool
) -> Redirect | None:
    if blob.public and options.public_base_url and not download:
        # The CDN URL of a key never changes; an hour bounds how long a redirect outlives
        # a switch back to private in shared caches.
        url = quote(f"{options.public_base_url}/{blob.storage_key}", safe=_URL_SAFE)
        return Redirect(url, blob, 3600)
    # A download's name is baked into the signed URL (`response-content-disposition`): the
    # store sends it, so the browser saves under the image's name, not the storage key.
    # (Not via the CDN: its URL cannot carry it.)
    disposition = content_disposition("attachment", blob.name) if download else None
    signed = await store.signed_url(  # already encoded
        blob.storage_key, ttl=options.signed_url_ttl, content_disposition=disposition
    )
    if signed is None:
        return None
    # Reusable only while the signed URL is comfortably valid.
    return Redirect(signed.url, blob, cacheable_for=int(signed.valid_for // 2))
