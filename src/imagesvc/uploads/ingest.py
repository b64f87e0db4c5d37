"""Creating an image from a stream of bytes: the upload protocol of SPEC §4.

1. Sniff: count, hash and probe the first chunks until the header is known; 415/413 here
   write nothing.
2. Intent: insert a `pending` row holding the storage key (committed).
3. Stream: the chunks go to the store writer while limits, hash and frame count continue;
   a heartbeat keeps the pending row's `updated_at` fresh so the reconciler can tell a live
   upload (lease held) from an abandoned one.
4. Commit: the store confirms the object, its size is checked, then one transaction flips
   the row to `ready` (only if it is still `pending`: a reconciler that reclaimed it wins).
5. Any failure aborts the write, deletes what was stored and removes the row, shielded from
   cancellation; whatever a crash leaves is a stale `pending` row for `imagesvc gc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imagesvc.db import Database, Tx, utcnow
from imagesvc.errors import (
    BadRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from imagesvc.ids import new_image_id
from imagesvc.images.filenames import sanitise_filename
from imagesvc.images.models import Image, ImageStatus, Visibility, parse_visibility
from imagesvc.images.repository import ImageRepository
from imagesvc.imaging.probe import ImageInfo, NotAnImage, StreamProbe
from imagesvc.observability.metrics import UPLOADED_BYTES, UPLOADS
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import ObjectStore, ObjectWriter, StorageUnavailable
from imagesvc.uploads.placeholders import Placeholders

log = logging.getLogger(__name__)

# Uploads up to this size keep their bytes for the placeholder decode.
INLINE_PLACEHOLDER = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_upload_bytes: int
    max_pixels: int
    # Bytes we may hold while looking for the image header, before anything is written.
    header_budget: int
    # A pending row not refreshed for this long belongs to a dead upload.
    lease_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """One upload as the protocol takes it, whatever the HTTP body looked like (uploads/
    body.py builds it from multipart or raw bodies)."""

    owner: str
    # The file's bytes as they arrive.
    chunks: AsyncIterator[bytes]
    filename: str | None
    # Form text fields; complete only once `chunks` is exhausted (a client may send them
    # after the file).
    fields: dict[str, str]
    # `?visibility=`, which wins over the form field.
    visibility: str | None = None
    # The exact byte count of `chunks`, when the client declared it (a raw body's
    # Content-Length); None when unknown (multipart, chunked transfer encoding).
    size: int | None = None

    def chosen_visibility(self) -> Visibility:
        return parse_visibility(self.visibility or self.fields.get("visibility"))


@dataclass(frozen=True, slots=True)
class UploadHooks:
    """Work that must share the upload's transactions (idempotency bookkeeping)."""

    on_heartbeat: Callable[[Tx], Awaitable[None]] | None = None
    on_ready: Callable[[Tx, Image], Awaitable[None]] | None = None


class Ingest:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        limits: UploadLimits,
        layout: KeyLayout,
        placeholders: Placeholders | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.limits = limits
        self.layout = layout
        self.placeholders = placeholders
        self._cleanups: set[asyncio.Future[None]] = set()
        self._active: set[asyncio.Task[Any]] = set()

    async def create(self, request: UploadRequest, hooks: UploadHooks | None = None) -> Image:
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            image = await self._create(request, hooks or UploadHooks())
        except BaseException as exc:
            UPLOADS.labels(getattr(exc, "code", "interrupted")).inc()
            raise
        finally:
            self._active.discard(task)
        UPLOADS.labels("created").inc()
        UPLOADED_BYTES.inc(image.byte_size or 0)
        return image

    async def drain(self, within: float) -> None:
        """At shutdown, after the server cancelled what was still running: wait (bounded)
        for those uploads to finish cleaning up while the store and database are open."""
        pending = {*self._active, *self._cleanups}
        if pending:
            await asyncio.wait(pending, timeout=within)

    async def _create(self, request: UploadRequest, hooks: UploadHooks) -> Image:
        upload = MeasuredUpload(self.limits)
        head = await upload.read_header(request.chunks)
        info = upload.probe.info
        assert info is not None

        image_id, created_at = new_image_id()
        image = Image(
            id=image_id,
            owner=request.owner,
            status=ImageStatus.PENDING,
            storage_key=self.layout.original(image_id),
            content_type=info.format.content_type,
            width=info.width,
            height=info.height,
            frames=info.frames,
            filename=sanitise_filename(request.filename),
            visibility=request.chosen_visibility(),
            created_at=created_at,
            updated_at=created_at,
        )
        await self.db.run(lambda tx: ImageRepository(tx).add(image))

        stop_heartbeat = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(image.id, hooks, stop_heartbeat))
        writer: ObjectWriter | None = None
        try:
            writer = await self.store.open_write(
                image.storage_key, content_type=image.content_type, size=request.size
            )
            # Small uploads keep their chunks for the placeholder decode (no read-back from
            # the store; the very chunks the writer holds, not a copy); large ones are read
            # back, so memory stays bounded by the part size.
            inline: list[bytes] | None = list(head) if self.placeholders else None
            head.reverse()
            while head:  # release each held chunk as soon as the writer has it
                await writer.write(head.pop())
            async for chunk in request.chunks:
                upload.take(chunk)
                await writer.write(chunk)
                if inline is not None and upload.size <= INLINE_PLACEHOLDER:
                    inline.append(chunk)
                else:
                    inline = None
            final = upload.finish()
            if request.size is not None and upload.size != request.size:
                raise BadRequest(
                    f"the body has {upload.size} bytes, its Content-Length said {request.size}"
                )
            image.frames = final.frames
            image.visibility = request.chosen_visibility()  # a field may follow the file
            confirmed = await writer.complete()
            await self._verify_stored(image, upload.size, confirmed)
            await self.make_ready(
                image,
                upload,
                inline,
                hooks,
                before_commit=lambda: _stop(heartbeat, stop_heartbeat),
            )
        except BaseException:
            await _stop(heartbeat, stop_heartbeat)
            # Shielded: a cancelled request still cleans up (gc is the net if this fails).
            cleanup = asyncio.ensure_future(self._discard(image, writer))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)
            raise
        return image

    async def _verify_stored(self, image: Image, size: int, confirmed: int | None) -> None:
        """The store said the object is durable; check it holds every byte before promising
        anything (a 201 means the bytes are in the store). The writer's requests usually
        confirmed it (see ObjectWriter.complete); a store that cannot tell gets a HEAD."""
        if confirmed is None:
            stored = await self.store.head(image.storage_key)
            confirmed = stored.size if stored is not None else None
        if confirmed != size:
            log.error("store lost or truncated upload %s", image.id)
            raise StorageUnavailable("the object store did not keep the upload; retry it")

    async def make_ready(
        self,
        image: Image,
        upload: MeasuredUpload,
        source: bytes | Sequence[bytes] | None,
        hooks: UploadHooks | None = None,
        *,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """The last step of every upload protocol, once the object is durable and
        `upload` measured every byte of it: the placeholder (from `source`, the bytes when
        they were kept, else read back from the store), then `pending -> ready` with the
        facts, in one transaction with `hooks.on_ready`. `source` may be the chunks as they
        arrived (decoded in place, never joined into a copy). Raises ServiceUnavailable
        when the row is no longer pending (gc reclaimed it): the caller must not promise
        anything."""
        image.byte_size = upload.size
        if self.placeholders is not None:
            placeholder = await self.placeholders.make(image, source)
            if placeholder is not None:
                image.blurhash = placeholder.blurhash
                image.dominant_color = placeholder.dominant_color
        if before_commit is not None:
            await before_commit()
        await self._mark_ready(image, upload, hooks or UploadHooks())

    async def _mark_ready(self, image: Image, upload: MeasuredUpload, hooks: UploadHooks) -> None:
        now = utcnow()

        async def work(tx: Tx) -> bool:
            became_ready = await ImageRepository(tx).mark_ready(
                image.id,
                byte_size=upload.size,
                sha256=upload.sha256,
                content_type=image.content_type,
                width=image.width,
                height=image.height,
                frames=image.frames,
                visibility=image.visibility,
                blurhash=image.blurhash,
                dominant_color=image.dominant_color,
                now=now,
            )
            if became_ready:
                image.status = ImageStatus.READY
                image.byte_size, image.sha256, image.updated_at = upload.size, upload.sha256, now
                if hooks.on_ready is not None:
                    await hooks.on_ready(tx, image)
            return became_ready

        if not await self.db.run(work):
            # The reconciler judged this upload dead (lease lost) and reclaimed its row.
            image.status = ImageStatus.PENDING
            raise ServiceUnavailable("the upload took too long to commit; retry it")

    async def _heartbeat(self, image_id: str, hooks: UploadHooks, stop: asyncio.Event) -> None:
        """Refresh the pending row (and the idempotency claim) every third of the lease."""
        interval = self.limits.lease_seconds / 3

        async def touch(tx: Tx) -> None:
            await ImageRepository(tx).touch_pending(image_id, now=utcnow())
            if hooks.on_heartbeat is not None:
                await hooks.on_heartbeat(tx)

        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
                return
            with contextlib.suppress(ServiceUnavailable):
                await self.db.run(touch)

    async def _discard(self, image: Image, writer: ObjectWriter | None) -> None:
        """Undo a failed upload. The row goes first, and only while it is still `pending`:
        if the failure hid a commit that did happen (the connection dropped after COMMIT),
        the row is `ready` and its object must stay. With the row gone, the object is
        unreferenced and safe to delete; if anything here fails, gc finishes it."""
        try:
            if writer is not None:
                await writer.abort()  # a completed write ignores this
            removed = await self.db.run(
                lambda tx: ImageRepository(tx).remove(image.id, ImageStatus.PENDING)
            )
            if removed:
                await self.store.delete_prefix(self.layout.image(image.id))
        except Exception:
            log.warning("could not clean up failed upload %s; gc will", image.id, exc_info=True)


async def _stop(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    # Let a heartbeat in the middle of a transaction finish it rather than cancel it there.
    stop.set()
    with contextlib.suppress(Exception):
        await task


class MeasuredUpload:
    """Counts, hashes and probes the upload's bytes, enforcing the limits as they arrive."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.probe = StreamProbe()
        self._hash = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def count(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limits.max_upload_bytes:
            raise PayloadTooLarge(
                f"the upload is larger than the limit of {self.limits.max_upload_bytes} bytes"
            )
        self._hash.update(chunk)

    def take(self, chunk: bytes) -> None:
        self.count(chunk)
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
