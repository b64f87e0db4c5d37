"""The image lifecycle: create (streamed), read, list, update, serve and delete.

Upload protocol (SPEC §4): the bytes are sniffed first (type, size and pixel limits, nothing
written yet); then a `pending` row records the intent and the storage key; the bytes stream to
the store; only after the store confirmed the object is the row flipped to `ready` with the
size and sha256 computed on the way. Any failure aborts the store write and removes the
pending row; whatever a crash leaves behind is a `pending` row that `imagesvc gc` reclaims.

Delete protocol: the row goes `ready -> deleting` (the image disappears for clients at once),
then the objects are deleted, then the row. A crash in between leaves a `deleting` row whose
objects gc finishes removing, so no `ready` row ever points at a missing object.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagesvc.db import UNAVAILABLE_ERRORS, DatabaseUnavailable, utcnow
from imagesvc.errors import (
    BadRequest,
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from imagesvc.ids import new_image_id
from imagesvc.images.filenames import sanitise_filename
from imagesvc.images.models import Image, ImageStatus, Visibility
from imagesvc.images.repository import ImageRepository
from imagesvc.imaging.probe import ImageInfo, NotAnImage, StreamProbe
from imagesvc.storage.port import (
    ByteRange,
    ObjectMissing,
    ObjectStore,
    ObjectStream,
    ObjectWriter,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_upload_bytes: int
    max_pixels: int
    # Bytes we may hold while looking for the image header, before anything is written.
    header_budget: int
    allow_heic: bool = False


@dataclass(frozen=True, slots=True)
class ServeOptions:
    redirect: bool
    signed_url_ttl: int


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """A parsed single `Range: bytes=` spec: first-last, first- (last None) or -suffix."""

    first: int | None
    last: int | None

    def resolve(self, size: int) -> ByteRange:
        if self.first is None:
            if not self.last:
                raise RangeNotSatisfiable("the requested range is empty")
            return ByteRange(max(0, size - self.last), size - 1)
        if self.first >= size:
            raise RangeNotSatisfiable("the requested range starts past the end of the image")
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return ByteRange(self.first, last)


@dataclass(frozen=True, slots=True)
class Redirect:
    url: str
    image: Image


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
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.limits = limits
        self.serve = serve
        self.key_prefix = key_prefix

    def image_prefix(self, image_id: str) -> str:
        """Every object of an image (original and variants) lives under this prefix."""
        return f"{self.key_prefix}img/{image_id}/"

    async def _tx(self, work: Callable[[ImageRepository], Awaitable[T]]) -> T:
        """One short transaction: commit on success, roll back on error; a database that
        cannot be reached becomes a 503 here, the edge of the database port."""
        try:
            async with self.sessions.begin() as session:
                return await work(ImageRepository(session))
        except UNAVAILABLE_ERRORS as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            raise DatabaseUnavailable() from None

    # --- create -----------------------------------------------------------------------------

    async def create(
        self,
        *,
        owner: str,
        chunks: AsyncIterator[bytes],
        filename: str | None,
        fields: dict[str, str],
        visibility: str | None = None,
    ) -> Image:
        upload = _Measured(self.limits)
        head = await upload.read_header(chunks)
        info = upload.probe.info
        assert info is not None

        image_id, created_at = new_image_id()
        image = Image(
            id=image_id,
            owner=owner,
            status=ImageStatus.PENDING,
            storage_key=self.image_prefix(image_id) + "original",
            content_type=info.format.content_type,
            width=info.width,
            height=info.height,
            frames=info.frames,
            filename=sanitise_filename(filename),
            visibility=_visibility(visibility or fields.get("visibility")),
            created_at=created_at,
            updated_at=created_at,
        )
        await self._tx(lambda repo: repo.add(image))

        writer = await self._open_writer(image)
        written = False
        try:
            for chunk in head:
                await writer.write(chunk)
            head.clear()
            async for chunk in chunks:
                upload.take(chunk)
                await writer.write(chunk)
            final = upload.finish()
            # A text field sent after the file is only known now.
            image.frames = final.frames
            image.visibility = _visibility(visibility or fields.get("visibility"))
            written = True
            await writer.complete()
            now = utcnow()
            became_ready = await self._tx(
                lambda repo: repo.mark_ready(
                    image.id,
                    byte_size=upload.size,
                    sha256=upload.sha256,
                    frames=image.frames,
                    visibility=image.visibility,
                    now=now,
                )
            )
            if not became_ready:
                raise ServiceUnavailable("the upload was interrupted; retry it")
        except BaseException:
            # Shielded: a cancelled request still cleans up (gc is the net if this fails).
            await asyncio.shield(self._discard(image, writer, object_written=written))
            raise
        image.status = ImageStatus.READY
        image.byte_size, image.sha256, image.updated_at = upload.size, upload.sha256, now
        return image

    async def _open_writer(self, image: Image) -> ObjectWriter:
        try:
            return await self.store.open_write(image.storage_key, content_type=image.content_type)
        except BaseException:
            await asyncio.shield(self._discard(image, None, object_written=False))
            raise

    async def _discard(
        self, image: Image, writer: ObjectWriter | None, *, object_written: bool
    ) -> None:
        try:
            if writer is not None:
                await writer.abort()
            if object_written:
                await self.store.delete_prefix(self.image_prefix(image.id))
            await self._tx(lambda repo: repo.remove(image.id))
        except Exception:
            log.warning("could not clean up failed upload %s; gc will", image.id, exc_info=True)

    # --- read -------------------------------------------------------------------------------

    async def get(self, *, owner: str, image_id: str) -> Image:
        image = await self._tx(lambda repo: repo.get_for_owner(owner, image_id))
        if image is None:
            raise NotFound(f"no image {image_id}")
        return image

    async def list(self, *, owner: str, after: str | None, limit: int) -> Page:
        rows = await self._tx(
            lambda repo: repo.list_for_owner(owner, before_id=after, limit=limit + 1)
        )
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items=items, last_id=items[-1].id if more and items else None)

    async def update(self, *, owner: str, image_id: str, changes: dict[str, object]) -> Image:
        values: dict[str, object] = {}
        if "visibility" in changes:
            if changes["visibility"] is None:
                raise InvalidParameter("visibility: must be `private` or `public`, not null")
            values["visibility"] = _visibility(changes["visibility"])
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
        owner: str,
        image_id: str,
        byte_range: RangeRequest | None = None,
        if_none_match: str | None = None,
        if_range: str | None = None,
    ) -> Content:
        image = await self.get(owner=owner, image_id=image_id)
        if etag_matches(if_none_match, image):
            return NotModified(image)
        if if_range is not None and if_range.strip() != etag_of(image):
            byte_range = None  # the client's partial copy is stale: send it all
        if self.serve.redirect:
            url = await self.store.signed_url(image.storage_key, ttl=self.serve.signed_url_ttl)
            if url is not None:
                return Redirect(url, image)
        assert image.byte_size is not None
        resolved = byte_range.resolve(image.byte_size) if byte_range else None
        try:
            stream = await self.store.open_read(image.storage_key, resolved)
        except ObjectMissing:
            log.error("ready image %s has no object", image.id)
            raise ServiceUnavailable("the image's bytes are unavailable; retry shortly") from None
        return Bytes(image, stream, resolved)

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
            await self._tx(lambda repo: repo.remove(image.id))
        except ServiceUnavailable:
            log.warning("delete of %s left for gc to finish", image.id)


def _visibility(value: object) -> str:
    if value is None:
        return Visibility.PRIVATE
    try:
        return Visibility(str(value))
    except ValueError:
        raise InvalidParameter("visibility: must be `private` or `public`") from None


class _Measured:
    """Counts, hashes and probes the upload's bytes, enforcing the limits as they arrive."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.probe = StreamProbe(allow_heic=limits.allow_heic)
        self._hash = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def take(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limits.max_upload_bytes:
            raise PayloadTooLarge(
                f"the upload is larger than the limit of {self.limits.max_upload_bytes} bytes"
            )
        self._hash.update(chunk)
        try:
            self.probe.feed(chunk)
        except NotAnImage as exc:
            raise UnsupportedMediaType(str(exc)) from None
        self._check_pixels()

    def _check_pixels(self) -> None:
        info = self.probe.info
        if info is not None and info.pixels > self.limits.max_pixels:
            raise PayloadTooLarge(
                f"the image has {info.pixels} pixels (width x height x frames), over the "
                f"limit of {self.limits.max_pixels}"
            )

    async def read_header(self, chunks: AsyncIterator[bytes]) -> list[bytes]:
        """Consume chunks until type and size are known; return them for replay."""
        head: list[bytes] = []
        async for chunk in chunks:
            self.take(chunk)
            head.append(chunk)
            if self.probe.info is not None:
                return head
            if self.size > self.limits.header_budget:
                raise UnsupportedMediaType(
                    f"no image header was found in the first {self.limits.header_budget} bytes"
                )
        if self.size == 0:
            raise BadRequest("the upload is empty")
        self.finish()
        return head

    def finish(self) -> ImageInfo:
        try:
            info = self.probe.finish()
        except NotAnImage as exc:
            raise UnsupportedMediaType(str(exc)) from None
        self._check_pixels()
        return info
