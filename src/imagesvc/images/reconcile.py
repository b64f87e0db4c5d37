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
3. Unfinished writes (S3 multipart uploads, local temp files) older than grace whose image
   is not a live pending upload.
4. Idempotency keys past their 24 hours.

Every step is idempotent and conditional, so gc is safe alongside live traffic and
alongside another gc: it never touches a pending row whose lease is held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagesvc.db import transaction, utcnow
from imagesvc.ids import is_image_id
from imagesvc.images.idempotency import IdempotentUploads
from imagesvc.images.models import Image, ImageStatus, Variant
from imagesvc.images.repository import ImageRepository, VariantRepository
from imagesvc.observability.metrics import GC_ITEMS
from imagesvc.storage.port import ObjectInfo, ObjectStore, UploadInfo

log = logging.getLogger(__name__)

_PAGE = 500


@dataclass
class GcReport:
    dry_run: bool
    rolled_back: list[str] = field(default_factory=list)  # abandoned uploads (image ids)
    finished_deletes: list[str] = field(default_factory=list)  # image ids
    orphan_objects: list[str] = field(default_factory=list)  # keys
    abandoned_renders: list[str] = field(default_factory=list)  # keys
    aborted_uploads: list[str] = field(default_factory=list)  # keys
    expired_idempotency_keys: int = 0
    skipped_in_flight: int = 0
    foreign_keys: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "abandoned_upload": len(self.rolled_back),
            "unfinished_delete": len(self.finished_deletes),
            "orphan_object": len(self.orphan_objects),
            "abandoned_render": len(self.abandoned_renders),
            "unfinished_multipart_upload": len(self.aborted_uploads),
            "expired_idempotency_key": self.expired_idempotency_keys,
        }

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb} abandoned upload {i}" for i in self.rolled_back]
        out += [f"{verb} objects of deleted image {i}" for i in self.finished_deletes]
        out += [f"{verb} orphan object {k}" for k in self.orphan_objects]
        out += [f"{verb} abandoned render {k}" for k in self.abandoned_renders]
        out += [f"{verb} unfinished upload {k}" for k in self.aborted_uploads]
        out.append(
            f"gc {'dry run' if self.dry_run else 'done'}: "
            f"{len(self.rolled_back)} abandoned uploads, "
            f"{len(self.finished_deletes)} unfinished deletes, "
            f"{len(self.orphan_objects)} orphan objects, "
            f"{len(self.abandoned_renders)} abandoned renders, "
            f"{len(self.aborted_uploads)} unfinished multipart uploads, "
            f"{self.expired_idempotency_keys} expired idempotency keys; "
            f"{self.skipped_in_flight} in flight left alone, "
            f"{self.foreign_keys} foreign keys ignored"
        )
        return out


class Reconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        idempotency: IdempotentUploads,
        *,
        key_prefix: str,
        lease_seconds: float,
        db_timeout: float = 10.0,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.idempotency = idempotency
        self.root = f"{key_prefix}img/"
        self.lease = timedelta(seconds=lease_seconds)
        self.db_timeout = db_timeout

    async def _tx(self, work: Callable[[ImageRepository], Awaitable[Any]]) -> Any:
        return await transaction(
            self.sessions, lambda s: work(ImageRepository(s)), timeout=self.db_timeout
        )

    def _image_id(self, key: str) -> str | None:
        parts = key.removeprefix(self.root).split("/")
        if not key.startswith(self.root) or len(parts) < 2 or not is_image_id(parts[0]):
            return None
        return parts[0]

    def _is_variant(self, key: str) -> bool:
        # <root><id>/v/<name>: decided on the parsed key, never by searching it (a key
        # prefix may itself contain "/v/").
        parts = key.removeprefix(self.root).split("/")
        return len(parts) == 3 and parts[1] == "v"

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
        if not dry_run:
            for kind, count in report.counts().items():
                GC_ITEMS.labels(kind).inc(count)
        return report

    async def _stale_rows(self, report: GcReport, cutoff: datetime, limit: int) -> None:
        rows: list[Image] = list(
            await self._tx(lambda repo: repo.stale(before=cutoff, limit=limit))
        )
        for image in rows:
            if image.status == ImageStatus.PENDING:
                if not report.dry_run and not await self._claim(image.id, cutoff):
                    report.skipped_in_flight += 1  # its heartbeat came back
                    continue
                report.rolled_back.append(image.id)
            else:
                report.finished_deletes.append(image.id)
            if not report.dry_run:
                await self._remove(image.id)

    async def _stale_renders(self, report: GcReport, cutoff: datetime, limit: int) -> None:
        """Variant claims whose renderer died: the row goes, then its (partial) object."""

        async def stale(session: AsyncSession) -> Sequence[Variant]:
            return await VariantRepository(session).stale(before=cutoff, limit=limit)

        for variant in await transaction(self.sessions, stale, timeout=self.db_timeout):
            report.abandoned_renders.append(variant.storage_key)
            if report.dry_run:
                continue

            async def remove(session: AsyncSession, v: Variant = variant) -> bool:
                return await VariantRepository(session).remove_stale(v, before=cutoff)

            if await transaction(self.sessions, remove, timeout=self.db_timeout):
                await self.store.delete_keys([variant.storage_key])

    async def _claim(self, image_id: str, cutoff: datetime) -> bool:
        claimed: bool = await self._tx(
            lambda repo: repo.claim_stale_pending(image_id, before=cutoff)
        )
        return claimed

    async def _remove(self, image_id: str) -> None:
        """Unfinished writes, then objects, then the (deleting) row: if this stops half
        way, the row is still there and the next run repeats it."""
        prefix = f"{self.root}{image_id}/"
        async for upload in self.store.list_uploads(prefix):
            await self.store.abort_upload(upload)
        await self.store.delete_prefix(prefix)
        await self._tx(lambda repo: repo.remove(image_id, ImageStatus.DELETING))

    async def _orphan_objects(self, report: GcReport, cutoff: datetime, limit: int) -> None:
        page: list[tuple[ObjectInfo, str]] = []
        async for info in self.store.list_objects(self.root):
            image_id = self._image_id(info.key)
            if image_id is None:
                report.foreign_keys += 1
            elif info.last_modified < cutoff:
                page.append((info, image_id))
            if len(page) >= _PAGE:
                await self._delete_orphans(report, page)
                page = []
            if len(report.orphan_objects) >= limit:
                return
        await self._delete_orphans(report, page)

    async def _delete_orphans(self, report: GcReport, page: list[tuple[ObjectInfo, str]]) -> None:
        if not page:
            return
        ids = sorted({image_id for _, image_id in page})
        known = await self._tx(lambda repo: repo.states(ids))
        # A variant object is referenced only by its own variant row (each render writes a
        # fresh key); originals by their image row.
        variant_keys = [info.key for info, _ in page if self._is_variant(info.key)]
        rendered = await transaction(
            self.sessions,
            lambda s: VariantRepository(s).known_keys(variant_keys),
            timeout=self.db_timeout,
        )
        orphans = [
            info.key
            for info, image_id in page
            if image_id not in known or (self._is_variant(info.key) and info.key not in rendered)
        ]
        if orphans and not report.dry_run:
            await self.store.delete_keys(orphans)
        report.orphan_objects += orphans

    async def _unfinished_uploads(
        self, report: GcReport, store_cutoff: datetime, row_cutoff: datetime, limit: int
    ) -> None:
        candidates: list[tuple[UploadInfo, str | None]] = []
        async for upload in self.store.list_uploads(self.root):
            if upload.initiated < store_cutoff:
                candidates.append((upload, self._image_id(upload.key)))
            if len(candidates) >= limit:
                break
        ids = sorted({i for _, i in candidates if i is not None})
        known: dict[str, tuple[str, datetime]] = await self._tx(lambda repo: repo.states(ids))
        for upload, image_id in candidates:
            state = known.get(image_id or "")
            if state and state[0] == ImageStatus.PENDING and state[1] >= row_cutoff:
                # A live upload: its lease is held. (Some stores report bogus Initiated
                # times, e.g. moto's fixed 2010 date, so the row decides, not the store.)
                report.skipped_in_flight += 1
                continue
            if not report.dry_run:
                await self.store.abort_upload(upload)
            report.aborted_uploads.append(upload.key)
