"""Undoing tus uploads: removing a refused or terminated upload (rows claimed first, then
the store, then the image row), giving back a failed PATCH's lease, and doing all of it
even when the request was cancelled. Whatever this cannot finish, gc finishes: a claimed
image row is `deleting`, and the stale-row pass removes it one lease later."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from imagesvc.db import Database, Tx, utcnow
from imagesvc.errors import ServiceUnavailable
from imagesvc.images.models import ImageStatus
from imagesvc.images.repository import ImageRepository
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import ObjectStore
from imagesvc.uploads.tus.repository import ResumableRepository

log = logging.getLogger(__name__)


class Cleanup:
    def __init__(self, db: Database, store: ObjectStore, layout: KeyLayout) -> None:
        self.db = db
        self.store = store
        self.layout = layout
        self._running: set[asyncio.Future[None]] = set()

    async def refuse(self, upload_id: str, token: str, multipart_id: str | None) -> bool:
        """Remove an upload whose lease we hold; False if it was no longer ours."""
        now = utcnow()

        async def work(tx: Tx) -> bool:
            if not await ResumableRepository(tx).remove_claimed(upload_id, token=token):
                return False
            await ImageRepository(tx).claim_pending(upload_id, now=now)
            return True

        if not await self.db.run(work):
            return False
        await self.remove_stored(upload_id, multipart_id)
        return True

    async def release(self, upload_id: str, token: str, new_tail: str | None) -> None:
        if new_tail:
            await self.delete_quietly([new_tail])  # written, never committed
        await self.db.run(lambda tx: ResumableRepository(tx).release(upload_id, token=token))

    async def remove_stored(self, upload_id: str, multipart_id: str | None) -> None:
        """The rows are claimed (record gone, image `deleting`): the store, then the row."""
        key = self.layout.original(upload_id)
        if multipart_id is not None:
            await self.store.abort_multipart(key, multipart_id)
        async for unfinished in self.store.list_uploads(self.layout.image(upload_id)):
            await self.store.abort_upload(unfinished)
        await self.store.delete_prefix(self.layout.image(upload_id))
        await self.db.run(lambda tx: ImageRepository(tx).remove(upload_id, ImageStatus.DELETING))

    async def delete_quietly(self, keys: list[str]) -> None:
        """Tail fragments no record names (any left are gc's orphans)."""
        if not keys:
            return
        try:
            await self.store.delete_keys(keys)
        except ServiceUnavailable:
            log.info("left %d tail fragments for gc", len(keys))

    async def shielded(self, cleanup: Coroutine[Any, Any, object]) -> None:
        """Run `cleanup` to its end even if the request is cancelled meanwhile."""

        async def quietly() -> None:
            try:
                await cleanup
            except Exception:
                log.warning("tus clean-up failed; gc will finish it", exc_info=True)

        future = asyncio.ensure_future(quietly())
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        await asyncio.shield(future)

    async def drain(self, within: float) -> None:
        """At shutdown: let clean-ups of cancelled requests finish (bounded)."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=within)
