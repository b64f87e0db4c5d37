"""Creating images from uploads: the ingest protocol (ingest.py), with Idempotency-Key
claims around it when the client sends one (idempotency.py)."""

from __future__ import annotations

from imagesvc.db import Database
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import ObjectStore
from imagesvc.uploads.idempotency import Created, IdempotentUploads
from imagesvc.uploads.ingest import Ingest, UploadLimits, UploadRequest
from imagesvc.uploads.placeholders import Placeholders


class UploadService:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        *,
        limits: UploadLimits,
        layout: KeyLayout,
        placeholders: Placeholders | None = None,
    ) -> None:
        self.limits = limits
        self.ingest = Ingest(db, store, limits, layout, placeholders=placeholders)
        self.idempotency = IdempotentUploads(db, self.ingest)

    async def create(
        self, request: UploadRequest, *, idempotency_key: str | None = None
    ) -> Created:
        if idempotency_key is None:
            return Created(await self.ingest.create(request), replayed=False)
        return await self.idempotency.create(request, idempotency_key)

    async def drain(self, within: float) -> None:
        """At shutdown: let cancelled uploads finish cleaning up (see Ingest.drain)."""
        await self.ingest.drain(within)
