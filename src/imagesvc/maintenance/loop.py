"""The reconciler inside the service (IMAGESVC_GC_INTERVAL_SECONDS > 0)."""

from __future__ import annotations

import asyncio
import logging
import random

from imagesvc.maintenance.reconciler import Reconciler

log = logging.getLogger(__name__)


async def periodic_gc(reconciler: Reconciler, *, interval: float, grace: float, limit: int) -> None:
    """Reconcile every `interval` seconds, forever. Every replica may run it: the
    reconciler is safe to run concurrently with itself."""
    while True:
        # Jitter so that replicas started together do not reconcile in lockstep.
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            report = await reconciler.run(grace=grace, limit=limit)
        except Exception:
            log.warning("background gc failed; will retry", exc_info=True)
            continue
        log.info("%s", report.lines()[-1])
