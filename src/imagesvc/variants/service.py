"""Variants (SPEC §5): resized renditions rendered once, stored beside the original,
recorded in the database, then served exactly like `/content`.

Render-once: within a process, concurrent requests for one variant share one render task;
across processes, the `variants` row is the claim (INSERT ... `rendering`, primary key per
image, box, fit and format), and other requests wait for it to turn `ready`. A renderer
that died is noticed by its claim going stale (older than the upload lease) and replaced.
Each render writes a fresh key (a nonce in the name), so two renderers never overwrite each
other; the loser's object is deleted, and gc removes whatever a crash leaves.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import timedelta
from functools import partial
from typing import Any

from imagesvc.db import Database, DuplicateKey, Tx, utcnow
from imagesvc.errors import NotFound, ProblemError, ServiceUnavailable
from imagesvc.images.models import Image, Variant, VariantStatus, Visibility
from imagesvc.images.service import ImageService
from imagesvc.imaging import render as imaging
from imagesvc.imaging.formats import extension_for
from imagesvc.imaging.pool import RenderPool
from imagesvc.imaging.render import CONTENT_TYPES, Fit, OutputFormat, RenderError
from imagesvc.observability.metrics import RENDER_SECONDS, RENDERS
from imagesvc.serving.content import (
    PLAIN,
    Blob,
    Conditions,
    Content,
    Delivery,
    ServeOptions,
    serve,
)
from imagesvc.serving.disposition import variant_download_name
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import ObjectMissing, ObjectStore, StorageUnavailable, read_object
from imagesvc.variants.policy import VariantPolicy, choose_format
from imagesvc.variants.repository import VariantKey, VariantRepository, variant_by_key

log = logging.getLogger(__name__)
# How long a request waits for a render claimed by another process.
WAIT_FOR_OTHERS = 30.0


class Unrenderable(ProblemError):
    status, code, title = 422, "unrenderable_image", "Image cannot be rendered"


class VariantService:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        images: ImageService,
        pool: RenderPool,
        policy: VariantPolicy,
        *,
        layout: KeyLayout,
        options: ServeOptions,
        lease_seconds: float,
    ) -> None:
        self.db = db
        self.store = store
        self.images = images
        self.pool = pool
        self.policy = policy
        self.layout = layout
        self.options = options
        self.lease = timedelta(seconds=lease_seconds)
        self._in_flight: dict[VariantKey, asyncio.Task[Variant]] = {}

    async def content(
        self,
        *,
        viewer: str | None,
        image_id: str,
        size: tuple[int, int],
        fit: Fit,
        output: str,
        accept: str | None,
        conditions: Conditions,
        delivery: Delivery = PLAIN,
    ) -> Content:
        box = self.policy.box(*size)
        granted = delivery.grant is not None
        image = (
            await self.images.viewable(viewer=viewer, image_id=image_id, granted=granted)
        ).image
        chosen = choose_format(output, accept, image.content_type)
        key = VariantKey(image.id, box[0], box[1], fit.value, chosen.value)
        variant = await self._ready(image, key)
        assert variant.sha256 is not None
        assert variant.byte_size is not None
        content_type = variant.content_type or imaging.CONTENT_TYPES[chosen]
        blob = Blob(
            storage_key=variant.storage_key,
            sha256=variant.sha256,
            byte_size=variant.byte_size,
            content_type=content_type,
            public=image.visibility == Visibility.PUBLIC,
            name=variant_download_name(image.filename, image.id, box, content_type),
        )

        async def still_there() -> bool:
            if not await self.images.still_viewable(
                viewer=viewer, image_id=image.id, granted=granted
            ):
                return False  # deleted meanwhile: a 404
            # The image is there but this rendition's object is not: forget the rendition,
            # so that the next request renders it again (this one gets a 503 to retry).
            await self.db.run(
                lambda tx: VariantRepository(tx).forget_ready(key, variant.storage_key)
            )
            return True

        return await serve(
            self.store, self.options, blob, conditions, still_there=still_there, delivery=delivery
        )

    async def _ready(self, image: Image, key: VariantKey) -> Variant:
        existing = await variant_by_key(self.db, key)
        if existing is not None and existing.status == VariantStatus.READY:
            return existing
        task = self._in_flight.get(key)
        if task is None:
            # A task, not a plain await: a client that gives up does not cancel the render
            # that other requests for the same variant are waiting on.
            task = asyncio.create_task(self._produce(image, key, absent=existing is None))
            self._in_flight[key] = task
            task.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return await asyncio.shield(task)

    async def _produce(self, image: Image, key: VariantKey, *, absent: bool) -> Variant:
        storage_key = self.layout.variant(
            image.id,
            (key.box_width, key.box_height),
            key.fit,
            extension_for(CONTENT_TYPES[OutputFormat(key.format)]),
        )
        deadline = asyncio.get_running_loop().time() + WAIT_FOR_OTHERS
        delay = 0.05
        while True:
            try:
                claimed, row = await self.db.run(
                    partial(self._claim, key=key, storage_key=storage_key, absent=absent)
                )
            except DuplicateKey:
                if absent:  # a row appeared since our read: look at it, at once
                    absent = False
                    continue
                claimed, row = False, None  # another process claimed it this instant
            if claimed:
                return await self._render(image, key, storage_key)
            if row is not None and row.status == VariantStatus.READY:
                return row
            if asyncio.get_running_loop().time() > deadline:
                raise ServiceUnavailable(
                    "the variant is still being rendered; retry", retry_after=1
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _claim(
        self, tx: Tx, *, key: VariantKey, storage_key: str, absent: bool
    ) -> tuple[bool, Variant | None]:
        now = utcnow()
        return await VariantRepository(tx).claim(
            key, storage_key=storage_key, now=now, stale_before=now - self.lease, absent=absent
        )

    async def drain(self, within: float) -> None:
        """At shutdown: stop renders in flight; each releases its claim on the way out."""
        tasks = set(self._in_flight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=within)

    async def _render(self, image: Image, key: VariantKey, storage_key: str) -> Variant:
        written = False
        try:
            try:
                source = await read_object(
                    self.store,
                    image.storage_key,
                    size=image.byte_size or 0,
                    limit=imaging.MAX_SOURCE_BYTES,
                )
            except (ObjectMissing, StorageUnavailable):
                # The image may have been deleted since we read its row (elsewhere, or by
                # gc): then its bytes are gone, or cut short while we read them, and this is
                # a 404. Otherwise the store is failing: a 503.
                if not await self.images.still_viewable(viewer=image.owner, image_id=image.id):
                    raise NotFound(f"no image {image.id}") from None
                raise ServiceUnavailable("the image's bytes are unavailable; retry") from None
            started = time.perf_counter()
            try:
                rendered = await self.pool.run(
                    imaging.render,
                    source,
                    (key.box_width, key.box_height),
                    Fit(key.fit),
                    OutputFormat(key.format),
                )
            except BaseException as exc:
                RENDERS.labels(key.format, getattr(exc, "code", "error")).inc()
                raise
            RENDER_SECONDS.labels(key.format).observe(time.perf_counter() - started)
            RENDERS.labels(key.format, "rendered").inc()
            # From here on the object may exist (a failed put may still have landed), so a
            # failure below removes it once no row names it.
            written = True
            await self.store.put_object(
                storage_key, rendered.data, content_type=rendered.content_type
            )
            facts: dict[str, Any] = {
                "content_type": rendered.content_type,
                "width": rendered.width,
                "height": rendered.height,
                "byte_size": len(rendered.data),
                "sha256": hashlib.sha256(rendered.data).hexdigest(),
                "updated_at": utcnow(),
            }
            marked = await self.db.run(
                lambda tx: VariantRepository(tx).mark_ready(key, storage_key, **facts)
            )
            # Our object is in the store now. A delete of the image that listed its prefix
            # before this write would miss it, so look at the image again, past the cache:
            # once it is not ready any more, the object is ours to remove (the delete
            # removes the rows). A delete that starts after this look lists the object and
            # removes it itself. Either way, nothing of the image outlives the answers.
            if not await self.images.still_viewable(viewer=image.owner, image_id=image.id):
                # Our row may be ready already (the delete removes it with the image's):
                # it goes, and our object with it, whatever the row says.
                await asyncio.shield(self._forget(key, storage_key))
                written = False
                raise NotFound(f"no image {image.id}")
            if not marked:
                raise ServiceUnavailable("the variant was taken over by another renderer")
        except RenderError as exc:
            await asyncio.shield(self._release(key, storage_key, written))
            raise Unrenderable(str(exc)) from None
        except BaseException:
            await asyncio.shield(self._release(key, storage_key, written))
            raise
        return Variant(
            image_id=key.image_id,
            box_width=key.box_width,
            box_height=key.box_height,
            fit=key.fit,
            format=key.format,
            status=VariantStatus.READY,
            storage_key=storage_key,
            created_at=facts["updated_at"],
            **facts,
        )

    async def _forget(self, key: VariantKey, storage_key: str) -> None:
        """The image went while we rendered: drop our row and our object."""
        await self.db.run(lambda tx: VariantRepository(tx).forget_ready(key, storage_key))
        await self.store.delete_keys([storage_key])

    async def _release(self, key: VariantKey, storage_key: str, written: bool) -> None:
        """Undo a failed render: our claim goes, and only then our object, once no row
        names it (our claim removed now, or gone with a deleted image, or taken over). If
        the failure hid a commit that did happen, the row is `ready` with our object, and
        the object must stay."""
        try:
            unreferenced = await self.db.run(
                lambda tx: VariantRepository(tx).release(key, storage_key)
            )
            if written and unreferenced:
                await self.store.delete_keys([storage_key])
        except Exception:
            log.warning("could not clean up a failed render; gc will", exc_info=True)
