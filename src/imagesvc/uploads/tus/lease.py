"""Keeping a PATCH's lease on its upload while it runs: the row's lease is refreshed every
third of its length; a refresh that finds the lease gone (another PATCH took it over)
marks it lost, and `Lease.check` then stops the PATCH before its next part."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta

from imagesvc.db import Database, utcnow
from imagesvc.errors import ServiceUnavailable
from imagesvc.uploads.tus.receiver import Lease
from imagesvc.uploads.tus.repository import ResumableRepository


async def keep_lease(
    db: Database, upload_id: str, token: str, lease: Lease, *, lease_seconds: float
) -> None:
    """Refresh the lease until cancelled (or until it turns out lost)."""
    interval = lease_seconds / 3
    while True:
        await asyncio.sleep(interval)
        started = time.monotonic()
        try:
            kept = await _refresh(db, upload_id, token, utcnow() + timedelta(seconds=lease_seconds))
        except ServiceUnavailable:
            continue  # not confirmed: Lease.check stops new parts in time
        if not kept:
            lease.lost = True
            return
        lease.confirmed = started


async def _refresh(db: Database, upload_id: str, token: str, until: datetime) -> bool:
    return await db.run(
        lambda tx: ResumableRepository(tx).refresh(upload_id, token=token, until=until)
    )


async def stop_keeping(heartbeat: asyncio.Task[None]) -> None:
    heartbeat.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await heartbeat
