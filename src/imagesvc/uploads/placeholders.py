"""Placeholders for uploads: BlurHash and dominant colour from the uploaded bytes (or, for
large uploads, the stored ones), computed off the event loop in the render pool.

A large upload's object is read back whole for the decode (as the chunks it arrives in,
never joined into a second copy), and at most one per render thread at a time: the memory
placeholders take is bounded by IMAGESVC_RENDER_WORKERS x the object size, whatever the
number of uploads finishing at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from imagesvc.errors import PayloadTooLarge
from imagesvc.images.models import Image
from imagesvc.imaging import render as imaging
from imagesvc.imaging.pool import RenderPool
from imagesvc.imaging.render import Placeholder
from imagesvc.storage.port import ObjectStore

log = logging.getLogger(__name__)


class Placeholders:
    def __init__(self, store: ObjectStore, pool: RenderPool) -> None:
        self.store = store
        self.pool = pool
        self._reading = asyncio.Semaphore(pool.workers)

    async def make(
        self, image: Image, source: bytes | Sequence[bytes] | None
    ) -> Placeholder | None:
        """Never fails an upload: an image that cannot be decoded just has no placeholder.
        `source` is the uploaded bytes (or their chunks, as they arrived) when the upload
        was small enough to keep them."""
        if source is None and (image.byte_size or 0) > imaging.MAX_SOURCE_BYTES:
            return None
        try:
            if source is not None:
                # Never refused with 429: an upload must not fail over a placeholder.
                return await self.pool.run_always(imaging.placeholder, source)
            async with self._reading:
                chunks = await self._read_back(image)
                return await self.pool.run_always(imaging.placeholder, chunks)
        except Exception:  # a placeholder is a nicety: it must never fail the upload
            log.info("no placeholder for %s", image.id, exc_info=True)
            return None

    async def _read_back(self, image: Image) -> list[bytes]:
        if (image.byte_size or 0) > imaging.MAX_SOURCE_BYTES:
            raise PayloadTooLarge("not decoded")
        stream = await self.store.open_read(image.storage_key)
        try:
            return [chunk async for chunk in stream]
        finally:
            await stream.aclose()
