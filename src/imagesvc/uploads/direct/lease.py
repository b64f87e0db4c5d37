"""The lease a request holds on a direct upload while it works on it (the local PUT while
the bytes stream in, `complete` while it copies and reads them): the row's `updated_at`,
renewed every third of the lease and given back at the end.

Between those requests nothing holds it (no process of ours is involved while a client
uploads to S3), so gc tells an abandoned direct upload by its TTL, never by a missed
heartbeat; the lease only keeps gc, and a second `complete` or PUT, away from an upload a
request is working on.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from types import TracebackType

from imagesvc.db import Database, utcnow
from imagesvc.errors import ServiceUnavailable
from imagesvc.images.repository import ImageRepository


class Lease:
    def __init__(self, db: Database, image_id: str, seconds: float) -> None:
        self.db = db
        self.image_id = image_id
        self.seconds = seconds
        self._held: datetime | None = None
        self._renewing: asyncio.Task[None] | None = None

    async def take(self) -> bool:
        """Take the lease of the pending, unexpired upload; False if another request holds
        it (or the upload is no longer pending or has expired)."""
        now = utcnow()
        free_before = now - timedelta(seconds=self.seconds)
        taken = await self.db.run(
            lambda tx: ImageRepository(tx).take_direct_lease(
                self.image_id, now=now, free_before=free_before
            )
        )
        if taken:
            self._held = now
        return taken

    def end(self) -> None:
        """The row is no longer pending (ready, or removed): nothing to give back."""
        self._held = None

    async def __aenter__(self) -> Lease:
        assert self._held is not None, "take() the lease first"
        self._renewing = asyncio.create_task(self._renew())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        # Given back after success or an error we answered; a cancelled request leaves it
        # to lapse (one lease) rather than wait on the database while being cancelled.
        if exc_type is None or issubclass(exc_type, Exception):
            await asyncio.shield(self._release())

    async def _renew(self) -> None:
        while self._held is not None:
            await asyncio.sleep(self.seconds / 3)
            with contextlib.suppress(ServiceUnavailable):
                # Lost (the row moved on, or gc took it after a database outage): stop; the
                # conditional `mark_ready` decides what the request may still promise.
                self._held = await self._renew_once(self._held)

    async def _renew_once(self, held: datetime) -> datetime | None:
        now = utcnow()
        renewed = await self.db.run(
            lambda tx: ImageRepository(tx).renew_direct_lease(self.image_id, held=held, now=now)
        )
        return now if renewed else None

    async def _release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        with contextlib.suppress(ServiceUnavailable):  # it lapses by itself anyway
            await self.db.run(
                lambda tx: ImageRepository(tx).release_direct_lease(self.image_id, held=held)
            )
