"""The reconciler behind `imagesvc gc` (SPEC §4): after any crash, bring the store and the
database back to "every object has a ready row and every ready row has its object".

Passes, each bounded by `limit` items per run:
1. Stale rows: `pending` rows whose upload stopped heart-beating (older than the upload
   lease and the grace period) are claimed (`pending -> deleting`, so the uploader can no
   longer make them ready), then their objects and unfinished writes are removed, then the
   row. `deleting` rows (a delete that crashed or met a store failure) are finished the
   same way. Variant claims (`rendering`) whose renderer died go too, with their object.
2. Orphan objects under `<prefix>img/`: originals whose image has no row, variant objects
   that no variant row names, older than grace by the store's LastModified. Rows are
   always written before objects, so an object of a live upload or render has a row.
3. Unfinished writes (S3 multipart uploads, local temp files) older than grace and than one
   lease whose image is not a live pending upload.
4. Idempotency keys past their 24 hours.
5. Direct uploads past their TTL (`IMAGESVC_DIRECT_UPLOAD_TTL`) that no request is working
   on: claimed, then their objects and row go as in pass 1. Nothing heart-beats a direct
   upload while the client uploads, so pass 1 never takes one, whatever the grace; a
   landing key (`img/<id>/upload`) counts as orphaned (pass 2) once its image is not
   pending any more.
6. Resumable (tus) uploads past their expiry: the record goes and the image row turns
   `deleting` in one transaction, then the multipart upload, the parked tail and the row
   go as in pass 1 (which finishes the job if this stops half way). A live tus upload is
   not heart-beaten between PATCHes: pass 1 leaves its pending row alone, passes 2 and 3
   leave every tail fragment and the multipart upload its record names (and everything
   of an upload whose PATCH holds the lease).

Every step is idempotent and conditional, so gc is safe alongside live traffic and
alongside another gc: it never touches a pending row whose lease is held.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta

from imagesvc.db import Database, Tx, utcnow
from imagesvc.images.models import Image, ImageStatus, ResumableState, ResumableUpload, Variant
from imagesvc.images.repository import ImageRepository
from imagesvc.observability.metrics import GC_ITEMS, RESUMABLE_UPLOADS
from imagesvc.storage.layout import KeyLayout, StoredKey
from imagesvc.storage.port import ObjectInfo, ObjectStore, UploadInfo
from imagesvc.uploads.idempotency import IdempotentUploads
from imagesvc.uploads.tus.repository import LiveUpload, ResumableRepository
from imagesvc.variants.repository import VariantRepository

log = logging.getLogger(__name__)

_PAGE = 500


@dataclass
class GcReport:
    """What one run did. Each list or count is named like its `imagesvc_gc_items_total`
    label, plural (`abandoned_uploads` counts under `kind="abandoned_upload"`)."""

    dry_run: bool
    abandoned_uploads: list[str] = field(default_factory=list)  # image ids
    unfinished_deletes: list[str] = field(default_factory=list)  # image ids
    orphan_objects: list[str] = field(default_factory=list)  # keys
    abandoned_renders: list[str] = field(default_factory=list)  # keys
    unfinished_multipart_uploads: list[str] = field(default_factory=list)  # keys
    expired_idempotency_keys: int = 0
    expired_direct_uploads: list[str] = field(default_factory=list)  # image ids
    expired_resumable_uploads: list[str] = field(default_factory=list)  # image ids
    # Records of finished tus uploads past their expiry (the images stay).
    finished_upload_records: int = 0
    # Seen and left alone (not metrics).
    skipped_in_flight: int = 0
    foreign_keys: int = 0

    def counts(self) -> dict[str, int]:
        """Metric label -> how many, for every kind of item gc removes."""
        counts: dict[str, int] = {}
        for item in fields(self):
            if item.name in ("dry_run", "skipped_in_flight", "foreign_keys"):
                continue
            value = getattr(self, item.name)
            counts[item.name.removesuffix("s")] = value if isinstance(value, int) else len(value)
        return counts

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb} abandoned upload {i}" for i in self.abandoned_uploads]
        out += [f"{verb} objects of deleted image {i}" for i in self.unfinished_deletes]
        out += [f"{verb} orphan object {k}" for k in self.orphan_objects]
        out += [f"{verb} abandoned render {k}" for k in self.abandoned_renders]
        out += [f"{verb} unfinished upload {k}" for k in self.unfinished_multipart_uploads]
        out += [f"{verb} expired direct upload {i}" for i in self.expired_direct_uploads]
        out += [f"{verb} expired resumable upload {i}" for i in self.expired_resumable_uploads]
        summary = ", ".join(
            f"{count} {label.replace('_', ' ')}s" for label, count in self.counts().items()
        )
        out.append(
            f"gc {'dry run' if self.dry_run else 'done'}: {summary}; "
            f"{self.skipped_in_flight} in flight left alone, "
            f"{self.foreign_keys} foreign keys ignored"
        )
        return out


class Reconciler:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        idempotency: IdempotentUploads,
        *,
        layout: KeyLayout,
        lease_seconds: float,
    ) -> None:
        self.db = db
        self.store = store
        self.idempotency = idempotency
        self.layout = layout
        self.lease = timedelta(seconds=lease_seconds)

    async def run(self, *, grace: float, limit: int = 1000, dry_run: bool = False) -> GcReport:
        now = utcnow()
        store_cutoff = now - timedelta(seconds=grace)
        # A pending row is abandoned only once its lease ran out, whatever the grace.
        row_cutoff = min(store_cutoff, now - self.lease)
        report = GcReport(dry_run=dry_run)
        await self._stale_rows(report, row_cutoff, limit)
        await self._stale_renders(report, row_cutoff, limit)
        await self._orphan_objects(report, store_cutoff, limit)
        await self._unfinished_uploads(report, store_cutoff, row_cutoff, limit)
        report.expired_idempotency_keys = await self.idempotency.purge_expired(
            now=now, limit=limit, dry_run=dry_run
        )
        await self._expired_direct_uploads(report, now, limit)
        await self._expired_resumable(report, now, limit)
        if not dry_run:
            for kind, count in report.counts().items():
                GC_ITEMS.labels(kind).inc(count)
        return report

    async def _stale_rows(self, report: GcReport, cutoff: datetime, limit: int) -> None:
        rows: list[Image] = list(
            await self.db.read(lambda tx: ImageRepository(tx).stale(before=cutoff, limit=limit))
        )
        for image in rows:
            if image.status == ImageStatus.PENDING:
                if not report.dry_run and not await self._claim(image.id, cutoff):
                    report.skipped_in_flight += 1  # its heartbeat came back
                    continue
                report.abandoned_uploads.append(image.id)
            else:
                report.unfinished_deletes.append(image.id)
            if not report.dry_run:
                await self._remove(image.id)

    async def _expired_direct_uploads(self, report: GcReport, now: datetime, limit: int) -> None:
        """Past their TTL, and their lease free (a `complete` that began in time finishes)."""
        free_before = now - self.lease
        expired = await self.db.read(
            lambda tx: ImageRepository(tx).expired_direct_uploads(
                now=now, free_before=free_before, limit=limit
            )
        )
        for image_id in expired:
            if not report.dry_run:
                claimed = await self._claim_expired(image_id, now, free_before)
                if not claimed:
                    report.skipped_in_flight += 1  # a request took its lease meanwhile
                    continue
                await self._remove(image_id)
            report.expired_direct_uploads.append(image_id)

    async def _claim_expired(self, image_id: str, now: datetime, free_before: datetime) -> bool:
        return await self.db.run(
            lambda tx: ImageRepository(tx).claim_expired_direct(
                image_id, now=now, free_before=free_before
            )
        )

    async def _stale_renders(self, report: GcReport, cutoff: datetime, limit: int) -> None:
        """Variant claims whose renderer died: the row goes, then its (partial) object."""
        stale = await self.db.read(
            lambda tx: VariantRepository(tx).stale(before=cutoff, limit=limit)
        )
        for variant in stale:
            report.abandoned_renders.append(variant.storage_key)
            if report.dry_run:
                continue
            if await self._remove_render(variant, cutoff):
                await self.store.delete_keys([variant.storage_key])

    async def _remove_render(self, variant: Variant, cutoff: datetime) -> bool:
        return await self.db.run(
            lambda tx: VariantRepository(tx).remove_stale(variant, before=cutoff)
        )

    async def _claim(self, image_id: str, cutoff: datetime) -> bool:
        return await self.db.run(
            lambda tx: ImageRepository(tx).claim_stale_pending(image_id, before=cutoff)
        )

    async def _remove(self, image_id: str) -> None:
        """Unfinished writes, then objects, then the (deleting) row: if this stops half
        way, the row is still there and the next run repeats it."""
        prefix = self.layout.image(image_id)
        async for upload in self.store.list_uploads(prefix):
            await self.store.abort_upload(upload)
        await self.store.delete_prefix(prefix)
        await self.db.run(lambda tx: ImageRepository(tx).remove(image_id, ImageStatus.DELETING))

    async def _orphan_objects(self, report: GcReport, cutoff: datetime, limit: int) -> None:
        page: list[tuple[ObjectInfo, StoredKey]] = []
        async for info in self.store.list_objects(self.layout.root):
            parsed = self.layout.parse(info.key)
            if parsed is None:
                report.foreign_keys += 1
            elif info.last_modified < cutoff:
                page.append((info, parsed))
            if len(page) >= _PAGE:
                await self._delete_orphans(report, page)
                page = []
            if len(report.orphan_objects) >= limit:
                return
        await self._delete_orphans(report, page)

    async def _delete_orphans(
        self, report: GcReport, page: list[tuple[ObjectInfo, StoredKey]]
    ) -> None:
        if not page:
            return
        ids = sorted({parsed.image_id for _, parsed in page})
        known = await self.db.read(lambda tx: ImageRepository(tx).states(ids))
        tail_ids = sorted({parsed.image_id for _, parsed in page if parsed.is_tail})
        now = utcnow()
        live = await self.db.read(lambda tx: ResumableRepository(tx).live(tail_ids, now=now))
        # A variant object is referenced only by its own variant row (each render writes a
        # fresh key); originals by their image row; a direct upload's landing key only while
        # its image is pending (after `complete` the client may still rewrite it).
        variant_keys = [info.key for info, parsed in page if parsed.is_variant]
        rendered = await self.db.read(lambda tx: VariantRepository(tx).known_keys(variant_keys))

        def orphaned(info: ObjectInfo, parsed: StoredKey) -> bool:
            state = known.get(parsed.image_id)
            if state is None:
                return True
            if parsed.is_variant:
                return info.key not in rendered
            if parsed.is_tail:  # a tail fragment: only those its upload names are live
                return _unreferenced_tail(info.key, live.get(parsed.image_id))
            return parsed.is_direct_upload and state[0] != ImageStatus.PENDING

        orphans = [info.key for info, parsed in page if orphaned(info, parsed)]
        if orphans and not report.dry_run:
            await self.store.delete_keys(orphans)
        report.orphan_objects += orphans

    async def _expired_resumable(self, report: GcReport, now: datetime, limit: int) -> None:
        expired = await self.db.read(
            lambda tx: ResumableRepository(tx).expired(now=now, limit=limit)
        )
        for upload in expired:
            unfinished = upload.state != ResumableState.DONE
            if report.dry_run:
                if unfinished:
                    report.expired_resumable_uploads.append(upload.id)
                else:
                    report.finished_upload_records += 1
                continue
            if not await self._drop(upload, now):
                report.skipped_in_flight += 1  # a PATCH claimed it meanwhile
                continue
            if not unfinished:
                report.finished_upload_records += 1
                continue
            report.expired_resumable_uploads.append(upload.id)
            RESUMABLE_UPLOADS.labels("expired").inc()
            if upload.multipart_id is not None:
                key = self.layout.original(upload.id)
                await self.store.abort_multipart(key, upload.multipart_id)
            await self._remove(upload.id)

    async def _drop(self, upload: ResumableUpload, now: datetime) -> bool:
        return await self.db.run(lambda tx: _drop_expired(tx, upload, now))

    async def _unfinished_uploads(
        self, report: GcReport, store_cutoff: datetime, row_cutoff: datetime, limit: int
    ) -> None:
        candidates: list[tuple[UploadInfo, str | None]] = []
        async for upload in self.store.list_uploads(self.layout.root):
            if upload.initiated < store_cutoff:
                parsed = self.layout.parse(upload.key)
                candidates.append((upload, parsed.image_id if parsed else None))
            if len(candidates) >= limit:
                break
        ids = sorted({i for _, i in candidates if i is not None})
        known = await self.db.read(lambda tx: ImageRepository(tx).states(ids))
        now = utcnow()
        resumable = await self.db.read(lambda tx: ResumableRepository(tx).live(ids, now=now))
        for upload, image_id in candidates:
            record = resumable.get(image_id or "")
            state = known.get(image_id or "")
            if record is not None:
                # A tus upload: its record, not the image row's age, tells what is live:
                # the multipart upload it names, and any write while its PATCH runs.
                live = record[2] or record[0] == upload.upload_id
            else:
                # A write younger than a lease is in flight whatever the grace: a render or a
                # copy of a ready image writes a temp file no row names while it runs.
                live = upload.initiated >= row_cutoff or bool(
                    state and state[0] == ImageStatus.PENDING and state[1] >= row_cutoff
                )
            if live:
                # A live upload: its lease is held. (Some stores report bogus Initiated
                # times, e.g. moto's fixed 2010 date, so the row decides, not the store.)
                report.skipped_in_flight += 1
                continue
            if not report.dry_run:
                await self.store.abort_upload(upload)
            report.unfinished_multipart_uploads.append(upload.key)


def _unreferenced_tail(key: str, record: LiveUpload | None) -> bool:
    """A tail fragment is garbage unless an unfinished upload names it (any of its
    fragments), or that upload's PATCH is running (it may have written a fragment it has
    not committed yet)."""
    if record is None:
        return True
    return not record.leased and key not in record.tail_keys


async def _drop_expired(tx: Tx, upload: ResumableUpload, now: datetime) -> bool:
    """The record goes, and an unfinished upload's image row turns `deleting` (the
    stale-row pass finishes its removal if this run stops half way)."""
    if not await ResumableRepository(tx).remove_expired(upload.id, now=now):
        return False
    if upload.state != ResumableState.DONE:
        await ImageRepository(tx).claim_pending(upload.id, now=now)
    return True
