"""The tus upload state machine (SPEC §10; docs/DESIGN.md "Resumable uploads").

    POST     -> receiving (offset 0; a pending image row with the same id)
    PATCH    -> receiving  (offset advanced, parts and tail committed; expiry pushed back)
             -> completing (last byte: every byte stored, parts named; see completion.py)
             -> done       (object assembled, measured, image ready)
             -> gone       (not an image / over the pixel limit: everything removed)
    HEAD, or PATCH at the end, of a `completing` upload -> done (a failed completion retried)
    DELETE   -> gone
    expiry   -> 410, then `imagesvc gc` removes parts, tail, multipart upload and rows

Each PATCH holds the row's lease (a conditional UPDATE, refreshed while it runs), so two
PATCHes of one upload never interleave, whichever processes serve them. Every step that
changes the store writes a fresh key or an uncommitted part first and commits the row
after, so a crash anywhere leaves either the old committed state (which the client resumes
from) or objects that no row names (which gc removes).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from imagesvc.cache import TtlCache
from imagesvc.db import Database, Tx, utcnow
from imagesvc.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from imagesvc.ids import new_image_id
from imagesvc.images.filenames import sanitise_filename
from imagesvc.images.models import (
    Image,
    ImageStatus,
    ResumableState,
    ResumableUpload,
    parse_visibility,
)
from imagesvc.images.repository import ImageRepository
from imagesvc.observability.metrics import RESUMABLE_UPLOADS
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import (
    ObjectMissing,
    ObjectStore,
    PartsMismatch,
)
from imagesvc.uploads.ingest import Ingest, MeasuredUpload, UploadLimits
from imagesvc.uploads.tus.cleanup import Cleanup
from imagesvc.uploads.tus.completion import Completion, set_header
from imagesvc.uploads.tus.lease import keep_lease, stop_keeping
from imagesvc.uploads.tus.protocol import (
    Checksum,
    ChunkTooLong,
    Creation,
    OffsetConflict,
    UploadGone,
    UploadLocked,
)
from imagesvc.uploads.tus.receiver import Lease, Receiver, Start
from imagesvc.uploads.tus.repository import (
    Progress,
    ResumableRepository,
    etags_of,
    fragments_of,
)
from imagesvc.uploads.tus.state import (
    Body,
    ChunkCut,
    Finished,
    Refused,
    UploadState,
    info_of,
    state_of,
)

log = logging.getLogger(__name__)
_CHAINS_MAX = 10_000


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # (makes this an async generator that yields nothing)


def _no_body() -> Body:
    """What a HEAD hands a `completing` upload's PATCH: no bytes (it has them all)."""
    return Body(_no_chunks(), 0, lambda: False)


class ResumableService:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        ingest: Ingest,
        *,
        limits: UploadLimits,
        layout: KeyLayout,
        part_size: int,
        expiry_seconds: float,
    ) -> None:
        self.db = db
        self.store = store
        self.ingest = ingest
        self.limits = limits
        self.layout = layout
        self.part_size = part_size
        self.expiry = timedelta(seconds=expiry_seconds)
        self.lease_seconds = limits.lease_seconds
        self.cleanup = Cleanup(db, store, layout)
        self.completion = Completion(
            db, store, ingest, self.cleanup, limits=limits, expiry=lambda: self.expiry
        )
        # Upload id -> (offset, the measurement of bytes 0..offset), for uploads whose every
        # byte so far passed through this process (the usual case: one client, one
        # connection). A chain broken by another process, a failed PATCH or eviction
        # costs one streamed read of the object at completion, nothing else.
        self.chains: TtlCache[str, tuple[int, MeasuredUpload]] = TtlCache(
            expiry_seconds, _CHAINS_MAX
        )

    @property
    def max_size(self) -> int:
        return self.limits.max_upload_bytes

    # --- creation, HEAD, DELETE ------------------------------------------------------------------

    async def create(self, *, owner: str, creation: Creation) -> UploadState:
        if creation.length is not None and creation.length > self.max_size:
            raise PayloadTooLarge(
                f"Upload-Length is over the limit of {self.max_size} bytes (Tus-Max-Size)"
            )
        visibility = parse_visibility(creation.visibility)
        image_id, created_at = new_image_id()
        now = utcnow()
        image = Image(
            id=image_id,
            owner=owner,
            status=ImageStatus.PENDING,
            storage_key=self.layout.original(image_id),
            # Known once the header arrives (set_header); pending rows are never shown.
            content_type="",
            width=0,
            height=0,
            frames=0,
            filename=sanitise_filename(creation.filename),
            visibility=visibility,
            created_at=created_at,
            updated_at=created_at,
        )
        upload = ResumableUpload(
            id=image_id,
            owner=owner,
            state=ResumableState.RECEIVING,
            upload_length=creation.length,
            upload_offset=0,
            upload_metadata=creation.metadata_header,
            multipart_id=None,
            parts="[]",
            tail_fragments="[]",
            tail_key=None,
            tail_size=0,
            lease_token=None,
            lease_expires_at=None,
            expires_at=now + self.expiry,
            created_at=now,
            updated_at=now,
        )

        async def work(tx: Tx) -> None:
            await ImageRepository(tx).add(image)
            await ResumableRepository(tx).add(upload)

        await self.db.run(work)
        RESUMABLE_UPLOADS.labels("started").inc()
        return state_of(upload)

    async def status(self, *, owner: str, upload_id: str) -> UploadState:
        """HEAD. Of a `completing` upload (a completion that failed half way) it finishes the
        completion first, so the client that HEADs to resume sees the image, not an offset
        at the end with nothing behind it."""

        async def work(tx: Tx) -> ResumableUpload:
            upload = await ResumableRepository(tx).get_for_owner(owner, upload_id)
            if upload is None or await _image_gone(tx, upload):
                raise NotFound(f"no upload {upload_id}")
            return upload

        upload = await self.db.read(work)
        if upload.state != ResumableState.DONE and upload.expires_at <= utcnow():
            raise UploadGone(f"upload {upload_id} expired; start a new one")
        if upload.state == ResumableState.COMPLETING:
            return await self.patch(
                owner=owner,
                upload_id=upload_id,
                offset=upload.upload_offset,
                length=None,
                checksum=None,
                body=_no_body(),
            )
        return state_of(upload)

    async def terminate(self, *, owner: str, upload_id: str) -> None:
        """DELETE: nothing of an unfinished upload is left. Of a finished one only the
        upload record goes; the image stays (DELETE /v1/images/{id} removes it)."""
        now = utcnow()

        async def work(tx: Tx) -> ResumableUpload | None:
            uploads = ResumableRepository(tx)
            upload = await uploads.get_for_owner(owner, upload_id)
            if upload is None:
                raise NotFound(f"no upload {upload_id}")
            if not await uploads.remove_unleased(owner, upload_id, now=now):
                raise UploadLocked("a PATCH of this upload is in progress; retry shortly")
            if upload.state == ResumableState.DONE:
                return None
            await ImageRepository(tx).claim_pending(upload_id, now=now)
            return upload

        removed = await self.db.run(work)
        if removed is not None:
            RESUMABLE_UPLOADS.labels("terminated").inc()
            await self.cleanup.remove_stored(upload_id, removed.multipart_id)

    # --- PATCH -----------------------------------------------------------------------------------

    async def patch(
        self,
        *,
        owner: str,
        upload_id: str,
        offset: int,
        length: int | None,
        checksum: Checksum | None,
        body: Body,
    ) -> UploadState:
        token = secrets.token_hex(16)
        claimed = await self._claim(owner, upload_id, offset, token)
        if isinstance(claimed, UploadState):
            return claimed  # a PATCH of a finished upload at its end: nothing to do
        upload, image = claimed
        lease = Lease(self.lease_seconds)
        heartbeat = asyncio.create_task(
            keep_lease(self.db, upload_id, token, lease, lease_seconds=self.lease_seconds)
        )
        receiver: Receiver | None = None
        try:
            if upload.state == ResumableState.COMPLETING:
                if body.declared:
                    raise ChunkTooLong("the upload has all its bytes; it is being completed")
                return await self.completion.finish(upload, image, token, lease, chain=None)
            start = self._start(upload, image, length, body)
            receiver = Receiver(
                self.store,
                self.layout,
                self.limits,
                part_size=self.part_size,
                start=start,
                lease=lease,
                checksum=checksum,
                record_multipart=lambda mid: self._record_multipart(upload_id, token, mid),
                declared=body.declared,
                chain=self._chain(upload_id, start.offset),
            )
            try:
                await receiver.probe_tail()
                await receiver.receive(body.chunks)
                if body.cut() and checksum is not None:
                    raise ChunkCut()
                receiver.verify()
                if start.length is not None and receiver.offset == start.length:
                    return await self.completion.complete(upload, image, receiver, token, lease)
            except (UnsupportedMediaType, PayloadTooLarge) as exc:
                if isinstance(exc, ChunkTooLong):
                    raise
                raise Refused(exc) from None  # the bytes are not an image we take
            return await self._commit(upload, image, receiver, token)
        except Refused as refused:
            await self.cleanup.shielded(self._refuse(upload, token, receiver, heartbeat))
            raise refused.error from None
        except (ObjectMissing, PartsMismatch):
            # The store no longer holds this upload's parts (aborted behind our back, a
            # store that lost them): it cannot be finished. Say so, and clean up.
            await self.cleanup.shielded(self._refuse(upload, token, receiver, heartbeat))
            raise UploadGone(
                "the store lost this upload's parts; it was removed, start a new upload"
            ) from None
        except BaseException:
            await self.cleanup.shielded(self._abandon(upload_id, token, receiver, heartbeat))
            raise
        finally:
            await stop_keeping(heartbeat)

    def _chain(self, upload_id: str, offset: int) -> MeasuredUpload | None:
        kept = self.chains.get(upload_id)
        self.chains.discard(upload_id)  # back only once this PATCH is committed
        if kept is not None and kept[0] == offset:
            return kept[1]
        return MeasuredUpload(self.limits) if offset == 0 else None

    async def _claim(
        self, owner: str, upload_id: str, offset: int, token: str
    ) -> tuple[ResumableUpload, Image] | UploadState:
        now = utcnow()
        until = now + timedelta(seconds=self.lease_seconds)

        async def work(tx: Tx) -> tuple[ResumableUpload, Image] | UploadState:
            uploads = ResumableRepository(tx)
            won = await uploads.claim(
                owner, upload_id, offset=offset, token=token, now=now, until=until
            )
            found = await uploads.with_pending_image(owner, upload_id)
            if found is None or await _image_gone(tx, found[0]):
                raise NotFound(f"no upload {upload_id}")
            upload, image = found
            if not won:
                raise self._why_not(upload, offset, now)
            if image is None:  # cannot happen: both rows go together
                raise NotFound(f"no upload {upload_id}")
            return upload, image

        try:
            return await self.db.run(work)
        except Finished as done:
            return done.state

    def _why_not(self, upload: ResumableUpload, offset: int, now: datetime) -> Exception:
        if upload.state == ResumableState.DONE:
            if offset == upload.upload_offset:
                return Finished(state_of(upload))
            return OffsetConflict(f"the upload is complete at offset {upload.upload_offset}")
        if upload.expires_at <= now:
            return UploadGone(f"upload {upload.id} expired; start a new one")
        leased = upload.lease_expires_at is not None and upload.lease_expires_at >= now
        if upload.lease_token is not None and leased:
            return UploadLocked("another PATCH of this upload is in progress; retry shortly")
        return OffsetConflict(
            f"Upload-Offset {offset} is not the upload's offset {upload.upload_offset}; "
            "HEAD it and resume from there"
        )

    def _start(
        self, upload: ResumableUpload, image: Image, length: int | None, body: Body
    ) -> Start:
        known = upload.upload_length
        if length is not None:
            if known is not None and length != known:
                raise BadRequest(f"Upload-Length is already {known}; it cannot change")
            if length < upload.upload_offset:
                raise BadRequest("Upload-Length is below the upload's offset")
            if length > self.max_size:
                raise ChunkTooLong(f"Upload-Length is over the limit of {self.max_size} bytes")
            known = length
        limit = known if known is not None else self.max_size
        if body.declared is not None and upload.upload_offset + body.declared > limit:
            raise ChunkTooLong(f"the chunk goes past the upload's length of {limit} bytes")
        return Start(
            image_id=upload.id,
            storage_key=image.storage_key,
            offset=upload.upload_offset,
            length=known,
            etags=etags_of(upload),
            multipart_id=upload.multipart_id,
            tail=tuple(fragments_of(upload)),
            info=info_of(image),
        )

    async def _commit(
        self, upload: ResumableUpload, image: Image, receiver: Receiver, token: str
    ) -> UploadState:
        content_type = receiver.info.format.content_type if receiver.info else ""
        tail = await receiver.park(content_type=content_type)
        now = utcnow()
        progress = Progress(
            offset=receiver.offset,
            length=receiver.start.length,
            etags=receiver.etags,
            tail=tail,
            expires_at=now + self.expiry,
        )
        newly_probed = receiver.info is not None and receiver.start.info is None

        async def work(tx: Tx) -> bool:
            if not await ResumableRepository(tx).commit(
                upload.id, token=token, progress=progress, now=now
            ):
                return False
            if newly_probed:
                assert receiver.info is not None
                await set_header(tx, upload.id, receiver.info)
            return True

        if not await self.db.run(work):
            raise UploadLocked("this PATCH lost its lease to another; HEAD and resume")
        receiver.new_tail = None  # committed: it is the row's now
        if receiver.chain is not None:
            self.chains.put(upload.id, (progress.offset, receiver.chain))
        # Fragments read into a part are named no more (gc would find any left).
        kept = {fragment.key for fragment in tail}
        await self.cleanup.delete_quietly([f.key for f in receiver.start.tail if f.key not in kept])
        return UploadState(
            id=upload.id,
            offset=progress.offset,
            length=progress.length,
            metadata=upload.upload_metadata,
            expires_at=progress.expires_at,
            image_id=None,
        )

    async def _record_multipart(self, upload_id: str, token: str, multipart_id: str) -> None:
        recorded = await self.db.run(
            lambda tx: ResumableRepository(tx).set_multipart(
                upload_id, token=token, multipart_id=multipart_id
            )
        )
        if not recorded:
            await self.store.abort_multipart(self.layout.original(upload_id), multipart_id)
            raise UploadLocked("this PATCH lost its lease to another; HEAD and resume")

    # --- failures --------------------------------------------------------------------------------

    async def _refuse(
        self,
        upload: ResumableUpload,
        token: str,
        receiver: Receiver | None,
        heartbeat: asyncio.Task[None],
    ) -> None:
        """The bytes ended the upload (or the store lost its parts): remove it and
        everything it stored."""
        await stop_keeping(heartbeat)
        if receiver is not None:
            await receiver.cancel()
        multipart_id = receiver.multipart_id if receiver else upload.multipart_id
        if await self.cleanup.refuse(upload.id, token, multipart_id):
            RESUMABLE_UPLOADS.labels("refused").inc()

    async def _abandon(
        self,
        upload_id: str,
        token: str,
        receiver: Receiver | None,
        heartbeat: asyncio.Task[None],
    ) -> None:
        """Any other failure: nothing of this PATCH counts; the upload stays as committed
        and the client may resume at once (the lease is given back)."""
        await stop_keeping(heartbeat)
        if receiver is not None:
            await receiver.cancel()
        await self.cleanup.release(upload_id, token, receiver.new_tail if receiver else None)

    async def drain(self, within: float) -> None:
        await self.cleanup.drain(within)


async def _image_gone(tx: Tx, upload: ResumableUpload) -> bool:
    """A finished upload whose image was deleted since: the upload is gone with it (404),
    not a record that still points at an image that is no more."""
    if upload.state != ResumableState.DONE:
        return False
    state = (await ImageRepository(tx).states([upload.id])).get(upload.id)
    return state is None or state[0] != ImageStatus.READY
