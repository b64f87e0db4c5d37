"""The image lifecycle: create (see ingest.py), read, list, update, serve and delete.

Delete protocol: the row goes `ready -> deleting` (the image disappears for clients at once,
and of two concurrent deletes exactly one wins), then the objects are deleted, then the row.
A crash or a store failure in between leaves a `deleting` row that `imagesvc gc` finishes,
so no `ready` row ever points at a missing object.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagesvc.db import transaction, utcnow
from imagesvc.errors import InvalidParameter, NotFound, RangeNotSatisfiable, ServiceUnavailable
from imagesvc.images.filenames import sanitise_filename
from imagesvc.images.idempotency import Created, IdempotentUploads
from imagesvc.images.ingest import Ingest, UploadLimits, UploadRequest, parse_visibility
from imagesvc.images.models import Image, ImageStatus, Visibility
from imagesvc.images.repository import ImageRepository
from imagesvc.storage.port import ByteRange, ObjectMissing, ObjectStore, ObjectStream

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    redirect: bool
    signed_url_ttl: int
    # A CDN in front of the bucket: public images redirect there instead of to a signature.
    public_base_url: str | None = None


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
class Redirect:
    url: str
    image: Image
    cacheable_for: int  # seconds a client may reuse this redirect


@dataclass(frozen=True, slots=True)
class NotModified:
    image: Image


@dataclass(frozen=True, slots=True)
class Bytes:
    image: Image
    stream: ObjectStream
    byte_range: ByteRange | None


Content = Redirect | NotModified | Bytes


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[Image]
    last_id: str | None  # set when another page may follow


def etag_of(image: Image) -> str:
    return f'"{image.sha256}"'


def etag_matches(if_none_match: str | None, image: Image) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag_of(image) in tags


class ImageService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        *,
        limits: UploadLimits,
        serve: ServeOptions,
        key_prefix: str = "",
        db_timeout: float = 10.0,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.limits = limits
        self.serve = serve
        self.key_prefix = key_prefix
        self.db_timeout = db_timeout
        self.ingest = Ingest(sessions, store, limits, self.image_prefix, db_timeout)
        self.idempotency = IdempotentUploads(sessions, self.ingest, db_timeout=db_timeout)

    def image_prefix(self, image_id: str) -> str:
        """Every object of an image (original and variants) lives under this prefix."""
        return f"{self.key_prefix}img/{image_id}/"

    async def _tx(
        self, work: Callable[[ImageRepository], Awaitable[T]], *, read_only: bool = False
    ) -> T:
        """One short transaction (see db.transaction): 503 when the database is away."""
        return await transaction(
            self.sessions,
            lambda session: work(ImageRepository(session)),
            timeout=self.db_timeout,
            retry_read=read_only,
        )

    # --- create -----------------------------------------------------------------------------

    async def create(
        self, request: UploadRequest, *, idempotency_key: str | None = None
    ) -> Created:
        if idempotency_key is None:
            return Created(await self.ingest.create(request), replayed=False)
        return await self.idempotency.create(request, idempotency_key)

    # --- read -------------------------------------------------------------------------------

    async def get(self, *, owner: str, image_id: str) -> Image:
        image = await self._tx(lambda repo: repo.get_for_owner(owner, image_id), read_only=True)
        if image is None:
            raise NotFound(f"no image {image_id}")
        return image

    async def list(self, *, owner: str, after: str | None, limit: int) -> Page:
        rows = await self._tx(
            lambda repo: repo.list_for_owner(owner, before_id=after, limit=limit + 1),
            read_only=True,
        )
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items=items, last_id=items[-1].id if more and items else None)

    async def update(self, *, owner: str, image_id: str, changes: dict[str, object]) -> Image:
        values: dict[str, object] = {}
        if "visibility" in changes:
            if changes["visibility"] is None:
                raise InvalidParameter("visibility: must be `private` or `public`, not null")
            values["visibility"] = parse_visibility(changes["visibility"])
        if "filename" in changes:
            raw = changes["filename"]
            values["filename"] = sanitise_filename(raw if isinstance(raw, str) else None)
        if values:
            values["updated_at"] = utcnow()
        image = await self._tx(lambda repo: repo.update_fields(owner, image_id, **values))
        if image is None:
            raise NotFound(f"no image {image_id}")
        return image

    async def content(
        self,
        *,
        viewer: str | None,
        image_id: str,
        byte_range: RangeRequest | None = None,
        if_none_match: str | None = None,
        if_range: str | None = None,
    ) -> Content:
        """The bytes for `viewer` (an owner, or None without a key): their own images,
        and anyone's public ones."""
        image = await self._tx(lambda repo: repo.get_viewable(image_id, viewer), read_only=True)
        if image is None:
            raise NotFound(f"no image {image_id}")
        if etag_matches(if_none_match, image):
            return NotModified(image)
        if if_range is not None and if_range.strip() != etag_of(image):
            byte_range = None  # the client's partial copy is stale: send it all
        if self.serve.redirect:
            redirect = await self._redirect(image)
            if redirect is not None:
                return redirect
        assert image.byte_size is not None
        resolved = byte_range.resolve(image.byte_size) if byte_range else None
        try:
            stream = await self.store.open_read(image.storage_key, resolved)
        except ObjectMissing:
            # Deleted between our read of the row and of the object: then it is a 404.
            if await self._tx(lambda repo: repo.get_viewable(image_id, viewer)) is None:
                raise NotFound(f"no image {image_id}") from None
            log.error("ready image %s has no object", image.id)
            raise ServiceUnavailable("the image's bytes are unavailable; retry shortly") from None
        return Bytes(image, stream, resolved)

    async def _redirect(self, image: Image) -> Redirect | None:
        if image.visibility == Visibility.PUBLIC and self.serve.public_base_url:
            # The CDN URL of a key never changes; an hour bounds how long a redirect
            # outlives a switch back to private.
            cdn_url = f"{self.serve.public_base_url}/{image.storage_key}"
            return Redirect(cdn_url, image, cacheable_for=3600)
        signed = await self.store.signed_url(image.storage_key, ttl=self.serve.signed_url_ttl)
        if signed is None:
            return None
        # Reusable only while the signed URL is comfortably valid.
        return Redirect(signed, image, cacheable_for=self.serve.signed_url_ttl // 2)

    # --- delete -----------------------------------------------------------------------------

    async def delete(self, *, owner: str, image_id: str) -> None:
        now = utcnow()
        image = await self._tx(lambda repo: repo.mark_deleting(owner, image_id, now=now))
        if image is None:
            raise NotFound(f"no image {image_id}")
        # Past this point the image is gone for clients; if the store fails now the row
        # stays `deleting` and gc finishes the job, so the client still gets its 204.
        try:
            await self.store.delete_prefix(self.image_prefix(image.id))
            await self._tx(lambda repo: repo.remove(image.id, ImageStatus.DELETING))
        except ServiceUnavailable:
            log.warning("delete of %s left for gc to finish", image.id)
