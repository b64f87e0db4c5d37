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
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError

from imagesvc.db import transaction, utcnow
from imagesvc.errors import (
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    ServiceUnavailable,
)
from imagesvc.images.models import Image, Variant, VariantStatus, Visibility
from imagesvc.images.render_pool import RenderPool
from imagesvc.images.repository import VariantKey, VariantRepository
from imagesvc.images.service import ImageService
from imagesvc.images.serving import Blob, Conditions, Content, serve
from imagesvc.imaging import render as imaging
from imagesvc.imaging.render import Fit, OutputFormat, Placeholder, RenderError
from imagesvc.observability.metrics import RENDER_SECONDS, RENDERS
from imagesvc.storage.port import ObjectMissing, ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")

AUTO = "auto"
# Sources are read whole into memory to render; above this they are refused (the default
# upload limit is 25 MiB, so this only bites when that limit was raised).
MAX_SOURCE_BYTES = 64 * 1024 * 1024
# How long a request waits for a render claimed by another process.
WAIT_FOR_OTHERS = 30.0
_EXTENSIONS = {
    OutputFormat.JPEG: "jpg",
    OutputFormat.PNG: "png",
    OutputFormat.WEBP: "webp",
    OutputFormat.AVIF: "avif",
}


class Unrenderable(ProblemError):
    status, code, title = 422, "unrenderable_image", "Image cannot be rendered"


@dataclass(frozen=True, slots=True)
class VariantPolicy:
    max_dimension: int
    allowed_sizes: frozenset[tuple[int, int]] | None = None

    def box(self, width: int, height: int) -> tuple[int, int]:
        """The box to render: clamped to the maximum (proportions kept), then checked
        against the allow-list."""
        if width < 1 or height < 1:
            raise InvalidParameter("spec: width and height must be at least 1")
        scale = min(1.0, self.max_dimension / max(width, height))
        box = (max(1, round(width * scale)), max(1, round(height * scale)))
        if self.allowed_sizes is not None and box not in self.allowed_sizes:
            allowed = ", ".join(f"{w}x{h}" for w, h in sorted(self.allowed_sizes))
            raise InvalidParameter(f"spec: {box[0]}x{box[1]} is not an allowed size ({allowed})")
        return box


# Sources whose `auto` rendition is a JPEG (HEIC is never offered as output: only Safari
# shows it).
_PHOTO_TYPES = frozenset({"image/jpeg", "image/heic", "image/heif"})


def choose_format(requested: str, accept: str | None, source_type: str) -> OutputFormat:
    """`auto`: AVIF if the client says it takes it, then WebP, then the source's family
    (JPEG for photos, PNG for everything that may carry transparency). Wildcards do not
    count as saying so: `*/*` gets the safe choice."""
    if requested != AUTO:
        return OutputFormat(requested)
    accepted = _accepted(accept)
    if "image/avif" in accepted:
        return OutputFormat.AVIF
    if "image/webp" in accepted:
        return OutputFormat.WEBP
    return OutputFormat.JPEG if source_type in _PHOTO_TYPES else OutputFormat.PNG


def _accepted(accept: str | None) -> set[str]:
    types = set()
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        refused = any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
        if media and not refused:
            types.add(media.lower())
    return types


class VariantService:
    def __init__(
        self,
        images: ImageService,
        pool: RenderPool,
        policy: VariantPolicy,
        *,
        lease_seconds: float,
    ) -> None:
        self.images = images
        self.store: ObjectStore = images.store
        self.pool = pool
        self.policy = policy
        self.lease = timedelta(seconds=lease_seconds)
        self._in_flight: dict[VariantKey, asyncio.Task[Variant]] = {}

    async def _tx(self, work: Callable[[VariantRepository], Awaitable[T]]) -> T:
        return await transaction(
            self.images.sessions,
            lambda session: work(VariantRepository(session)),
            timeout=self.images.db_timeout,
        )

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
    ) -> Content:
        box = self.policy.box(*size)
        image = await self.images.viewable(viewer=viewer, image_id=image_id)
        chosen = choose_format(output, accept, image.content_type)
        key = VariantKey(image.id, box[0], box[1], fit.value, chosen.value)
        variant = await self._ready(image, key)
        assert variant.sha256 is not None
        assert variant.byte_size is not None
        blob = Blob(
            storage_key=variant.storage_key,
            sha256=variant.sha256,
            byte_size=variant.byte_size,
            content_type=variant.content_type or imaging.CONTENT_TYPES[chosen],
            public=image.visibility == Visibility.PUBLIC,
        )

        async def still_there() -> bool:
            self.images.forget(image.id)
            try:
                await self.images.viewable(viewer=viewer, image_id=image.id)
            except NotFound:
                return False  # deleted meanwhile: a 404
            # The image is there but this rendition's object is not: forget the rendition,
            # so that the next request renders it again (this one gets a 503 to retry).
            await self._tx(lambda repo: repo.forget_ready(key, variant.storage_key))
            return True

        return await serve(self.store, self.images.serve, blob, conditions, still_there=still_there)

    async def _ready(self, image: Image, key: VariantKey) -> Variant:
        existing = await self._tx(lambda repo: repo.get(key))
        if existing is not None and existing.status == VariantStatus.READY:
            return existing
        task = self._in_flight.get(key)
        if task is None:
            # A task, not a plain await: a client that gives up does not cancel the render
            # that other requests for the same variant are waiting on.
            task = asyncio.create_task(self._produce(image, key))
            self._in_flight[key] = task
            task.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return await asyncio.shield(task)

    async def _produce(self, image: Image, key: VariantKey) -> Variant:
        storage_key = (
            f"{self.images.image_prefix(image.id)}v/{key.box_width}x{key.box_height}-{key.fit}"
            f"-{secrets.token_hex(4)}.{_EXTENSIONS[OutputFormat(key.format)]}"
        )
        deadline = asyncio.get_running_loop().time() + WAIT_FOR_OTHERS
        delay = 0.05
        while True:
            try:
                claimed, row = await self._tx(lambda repo: self._claim(repo, key, storage_key))
            except IntegrityError:
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
        self, repo: VariantRepository, key: VariantKey, storage_key: str
    ) -> tuple[bool, Variant | None]:
        now = utcnow()
        return await repo.claim(
            key, storage_key=storage_key, now=now, stale_before=now - self.lease
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
                source = await read_source(self.store, image)
            except ObjectMissing:
                # The image was deleted since we read its row (elsewhere, or by gc).
                self.images.forget(image.id)
                await self.images.viewable(viewer=image.owner, image_id=image.id)  # 404 now
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
            writer = await self.store.open_write(storage_key, content_type=rendered.content_type)
            try:
                await writer.write(rendered.data)
                written = True
                await writer.complete()
            except BaseException:
                await writer.abort()
                raise
            facts: dict[str, Any] = {
                "content_type": rendered.content_type,
                "width": rendered.width,
                "height": rendered.height,
                "byte_size": len(rendered.data),
                "sha256": hashlib.sha256(rendered.data).hexdigest(),
                "updated_at": utcnow(),
            }
            if not await self._tx(lambda repo: repo.mark_ready(key, storage_key, **facts)):
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

    async def _release(self, key: VariantKey, storage_key: str, written: bool) -> None:
        """Undo a failed render: our claim goes, and only then our object. If the failure
        hid a commit that did happen, the row is `ready` and the object must stay."""
        try:
            released = await self._tx(lambda repo: repo.release(key, storage_key))
            if written and released:
                await self.store.delete_keys([storage_key])
        except Exception:
            log.warning("could not clean up a failed render; gc will", exc_info=True)


async def read_source(store: ObjectStore, image: Image) -> bytes:
    """The original's bytes, whole (Pillow decodes from memory). Bounded: the pixel limit
    was checked at upload, and the byte size here."""
    if (image.byte_size or 0) > MAX_SOURCE_BYTES:
        raise PayloadTooLarge(f"images over {MAX_SOURCE_BYTES} bytes are not rendered")
    stream = await store.open_read(image.storage_key)
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()


def placeholder_maker(
    store: ObjectStore, pool: RenderPool
) -> Callable[[Image, bytes | None], Awaitable[Placeholder | None]]:
    """For uploads: blurhash and dominant colour from the uploaded bytes (or, for large
    uploads, the stored ones), off the event loop. Never fails an upload: an image that
    cannot be decoded just has no placeholder."""

    async def make(image: Image, source: bytes | None) -> Placeholder | None:
        if source is None and (image.byte_size or 0) > MAX_SOURCE_BYTES:
            return None
        try:
            if source is None:
                source = await read_source(store, image)
            return await pool.run_always(imaging.placeholder, source)
        except Exception:  # a placeholder is a nicety: it must never fail the upload
            log.info("no placeholder for %s", image.id, exc_info=True)
            return None

    return make
