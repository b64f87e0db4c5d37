"""Placeholders for uploads: BlurHash and dominant colour from the uploaded bytes (or, for
large uploads, the stored ones), computed off the event loop in the render pool."""

from __future__ import annotations

import logging

from imagesvc.images.models import Image
from imagesvc.imaging import render as imaging
from imagesvc.imaging.pool import RenderPool
from imagesvc.imaging.render import Placeholder
from imagesvc.storage.port import ObjectStore, read_object

log = logging.getLogger(__name__)


class Placeholders:
    def __init__(self, store: ObjectStore, pool: RenderPool) -> None:
        self.store = store
        self.pool = pool

    async def make(self, image: Image, source: bytes | None) -> Placeholder | None:
        """Never fails an upload: an image that cannot be decoded just has no placeholder.
        `source` is the uploaded bytes when the upload was small enough to keep them."""
        if source is None and (image.byte_size or 0) > imaging.MAX_SOURCE_BYTES:
            return None
        try:
            if source is None:
                source = await read_object(
                    self.store,
                    image.storage_key,
                    size=image.byte_size or 0,
                    limit=imaging.MAX_SOURCE_BYTES,
                )
            # Never refused with 429: an upload must not fail over a placeholder.
            return await self.pool.run_always(imaging.placeholder, source)
        except Exception:  # a placeholder is a nicety: it must never fail the upload
            log.info("no placeholder for %s", image.id, exc_info=True)
            return None
