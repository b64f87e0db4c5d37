"""The end of a tus upload (SPEC §10; docs/DESIGN.md "Resumable uploads"): from the last
byte to a ready image, in steps that are each safe to run again. The row says `completing`
before anything is assembled, so a failure after the last byte is finished by the client's
retry (HEAD, or a PATCH at the end) from committed state; it never strands an assembled
object behind a stale offset."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta

from imagesvc.db import Database, Tx, utcnow
from imagesvc.images.models import Image, ResumableState, ResumableUpload
from imagesvc.images.repository import ImageRepository
from imagesvc.imaging.probe import ImageInfo
from imagesvc.observability.metrics import RESUMABLE_UPLOADS, UPLOADED_BYTES
from imagesvc.storage.port import ObjectMissing, ObjectStore, StorageUnavailable
from imagesvc.uploads.ingest import Ingest, MeasuredUpload, UploadHooks, UploadLimits
from imagesvc.uploads.stored import Measured, measure_stored
from imagesvc.uploads.tus.cleanup import Cleanup
from imagesvc.uploads.tus.protocol import UploadLocked
from imagesvc.uploads.tus.receiver import Lease, Receiver
from imagesvc.uploads.tus.repository import (
    Progress,
    ResumableRepository,
    etags_of,
    fragments_of,
)
from imagesvc.uploads.tus.state import UploadState

log = logging.getLogger(__name__)


class Completion:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        ingest: Ingest,
        cleanup: Cleanup,
        *,
        limits: UploadLimits,
        expiry: Callable[[], timedelta],
    ) -> None:
        self.db = db
        self.store = store
        self.ingest = ingest
        self.cleanup = cleanup
        self.limits = limits
        self.expiry = expiry  # the service's, read at each use (it is configuration)

    async def complete(
        self, upload: ResumableUpload, image: Image, receiver: Receiver, token: str, lease: Lease
    ) -> UploadState:
        """The last byte arrived: every byte goes to the store, and the row says `completing`
        (offset = length, the parts named) before anything is assembled. Whatever fails
        after that is finished by the client's retry (PATCH at the end, or HEAD) from the
        committed state, instead of stranding an assembled object behind a stale offset."""
        length = receiver.offset
        info = receiver.finish_probe()
        await receiver.flush(content_type=info.format.content_type)
        now = utcnow()
        progress = Progress(
            offset=length,
            length=length,
            etags=receiver.etags,
            tail=fragments_of(upload),  # (not written: removed once the image is ready)
            expires_at=now + self.expiry(),
        )
        if not await self.db.run(
            lambda tx: ResumableRepository(tx).completing(
                upload.id, token=token, progress=progress, now=now
            )
        ):
            raise UploadLocked("this PATCH lost its lease to another; HEAD and resume")
        upload.state = ResumableState.COMPLETING
        upload.upload_offset = upload.upload_length = length
        upload.multipart_id = receiver.multipart_id
        upload.parts = json.dumps(receiver.etags)
        return await self.finish(upload, image, token, lease, chain=receiver.chain)

    async def finish(
        self,
        upload: ResumableUpload,
        image: Image,
        token: str,
        lease: Lease,
        *,
        chain: MeasuredUpload | None,
    ) -> UploadState:
        """`completing` -> done: assemble the parts (unless an earlier attempt did), measure
        what the store holds (size, sha256, type, pixels and frames of the stored bytes),
        then the placeholder and pending -> ready, with the record marked done in the same
        transaction. Safe to run again after a failure at any step."""
        length = upload.upload_offset
        stored = await self.store.head(image.storage_key)
        if stored is not None and stored.size == length:
            # An earlier attempt's work: only completions write this key, and the parts
            # are fixed once the row says `completing`.
            stored_size = stored.size
        else:
            if upload.multipart_id is None:
                raise ObjectMissing(image.storage_key)
            lease.check()
            # The size the store lists for the parts it assembled, instead of a second
            # HEAD (on rclone the first HEAD of a new object re-reads and hashes it all).
            listed = await self.store.complete_multipart(
                image.storage_key, upload.multipart_id, etags_of(upload)
            )
            if listed is None:
                stored = await self.store.head(image.storage_key)
                listed = stored.size if stored is not None else -1
            stored_size = listed
        _check_kept(upload, stored_size)
        measured = await self._measure(image.storage_key, chain, length)
        _check_kept(upload, measured.upload.size)
        image.content_type = measured.info.format.content_type
        image.width, image.height = measured.info.width, measured.info.height
        image.frames = measured.info.frames
        now = utcnow()
        expires_at = now + self.expiry()

        async def on_ready(tx: Tx, ready: Image) -> None:
            await set_header(tx, ready.id, measured.info)
            if not await ResumableRepository(tx).finish(
                upload.id, token=token, length=length, expires_at=expires_at, now=now
            ):
                raise UploadLocked("this PATCH lost its lease to another; HEAD and resume")

        await self.ingest.make_ready(
            image, measured.upload, measured.source, UploadHooks(on_ready=on_ready)
        )
        RESUMABLE_UPLOADS.labels("completed").inc()
        UPLOADED_BYTES.inc(length)
        # Every fragment went into the parts; the row names them no more.
        await self.cleanup.delete_quietly([f.key for f in fragments_of(upload)])
        return UploadState(upload.id, length, length, upload.upload_metadata, None, upload.id)

    async def _measure(self, key: str, chain: MeasuredUpload | None, length: int) -> Measured:
        """The facts of the stored object (whose size `finish` checked): from the chain
        when this process measured every byte on its way in, else from one streamed read
        of the object."""
        if chain is None or chain.size != length:
            return await measure_stored(self.store, key, self.limits)
        return Measured(chain, chain.finish(), None)


def _check_kept(upload: ResumableUpload, size: int) -> None:
    if size != upload.upload_offset:
        log.error("store lost or truncated upload %s", upload.id)
        raise StorageUnavailable("the object store did not keep the upload; retry it")


async def set_header(tx: Tx, image_id: str, info: ImageInfo) -> None:
    await ImageRepository(tx).set_header(
        image_id,
        content_type=info.format.content_type,
        width=info.width,
        height=info.height,
        frames=info.frames,
    )
