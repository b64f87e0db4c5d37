"""What a running service holds: the database, the store, and the services built on them,
wired from the settings. The app lifespan and the CLI open one (`Runtime.open`) and close it
when they are done; routes reach it as `request.app.state.runtime`, the fast read path
(web/hot_reads.py) through the reference it was built with."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from imagesvc.auth.keys import KeyService
from imagesvc.auth.ratelimit import Limiter, RateLimiter
from imagesvc.auth.shared_ratelimit import SharedRateLimiter
from imagesvc.config import MIB, Settings
from imagesvc.db import Database
from imagesvc.images.service import ImageService
from imagesvc.imaging import render
from imagesvc.imaging.pool import RenderPool
from imagesvc.maintenance.loop import periodic_gc
from imagesvc.maintenance.reconciler import Reconciler
from imagesvc.serving.content import ServeOptions
from imagesvc.serving.links import LinkKeys, LinkService
from imagesvc.serving.service import ContentService
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.local import LocalObjectStore
from imagesvc.storage.port import ObjectStore
from imagesvc.storage.s3 import S3ObjectStore, S3Options
from imagesvc.uploads.direct.service import DirectUploads
from imagesvc.uploads.ingest import UploadLimits
from imagesvc.uploads.placeholders import Placeholders
from imagesvc.uploads.service import UploadService
from imagesvc.uploads.tus.service import ResumableService
from imagesvc.variants.policy import VariantPolicy
from imagesvc.variants.service import VariantService


def build_store(settings: Settings) -> ObjectStore:
    if settings.storage_backend == "local":
        return LocalObjectStore(settings.storage_local_root)
    assert settings.s3_bucket is not None
    return S3ObjectStore(
        S3Options(
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            addressing_style=settings.s3_addressing_style,
            part_size=settings.s3_part_size,
            upload_concurrency=settings.s3_upload_concurrency,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
        )
    )


def key_layout(settings: Settings) -> KeyLayout:
    # The local backend owns its directory: no prefix there.
    return KeyLayout(settings.s3_key_prefix if settings.storage_backend == "s3" else "")


class Runtime:
    """Attributes are set by `open()`; the services, in the order they are built."""

    settings: Settings
    db: Database
    store: ObjectStore
    pool: RenderPool
    keys: KeyService
    rate_limiter: Limiter | None
    images: ImageService
    content: ContentService
    uploads: UploadService
    direct: DirectUploads
    resumable: ResumableService
    variants: VariantService
    links: LinkService
    reconciler: Reconciler

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @asynccontextmanager
    async def open(self, *, background: bool = True) -> AsyncIterator[Runtime]:
        """Open the database and the store, build the services on them, and (with
        `background`) start the periodic gc; on the way out, let cancelled work clean up
        while both are still open, then close them."""
        settings = self.settings
        self.db = Database.from_settings(settings)
        self.store = build_store(settings)
        try:
            await self.store.start()
            self._build()
            gc_task = None
            if background and settings.gc_interval_seconds > 0:
                gc_task = asyncio.create_task(
                    periodic_gc(
                        self.reconciler,
                        interval=settings.gc_interval_seconds,
                        grace=settings.gc_grace_seconds,
                        limit=settings.gc_batch_limit,
                    )
                )
            try:
                yield self
            finally:
                if gc_task is not None:
                    gc_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await gc_task
                # Requests cancelled at shutdown clean up in shielded tasks: let them
                # finish (bounded) while the store and the database are still open.
                await self.variants.drain(within=10)
                await self.uploads.drain(within=10)
                await self.direct.drain(within=10)
                await self.resumable.drain(within=10)
                self.pool.close()
                if self.rate_limiter is not None:
                    await self.rate_limiter.close()
        finally:
            await self.store.close()
            await self.db.dispose()

    def _build(self) -> None:
        settings, db, store = self.settings, self.db, self.store
        layout = key_layout(settings)
        render.configure(settings.max_pixels)
        self.pool = RenderPool(settings.render_workers, settings.render_queue)
        self.keys = KeyService(db, cache_seconds=settings.auth_cache_seconds)
        self.rate_limiter = None
        if settings.rate_limit_per_minute and settings.redis_url:
            self.rate_limiter = SharedRateLimiter(
                settings.redis_url, settings.rate_limit_per_minute
            )
        elif settings.rate_limit_per_minute:
            self.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
        options = ServeOptions(
            redirect=settings.serve_mode == "redirect",
            signed_url_ttl=settings.signed_url_ttl,
            public_base_url=settings.public_base_url,
        )
        self.images = ImageService(
            db, store, layout=layout, read_cache_seconds=settings.read_cache_seconds
        )
        self.content = ContentService(store, options, self.images)
        self.uploads = UploadService(
            db,
            store,
            limits=UploadLimits(
                max_upload_bytes=settings.max_upload_bytes,
                max_pixels=settings.max_pixels,
                header_budget=max(settings.s3_part_size, 8 * MIB),
                lease_seconds=settings.upload_lease_seconds,
            ),
            layout=layout,
            placeholders=Placeholders(store, self.pool),
        )
        policy = VariantPolicy(settings.variant_max_dimension, settings.allowed_sizes)
        self.direct = DirectUploads(
            db,
            store,
            self.uploads.ingest,
            self.uploads.idempotency,
            layout=layout,
            limits=self.uploads.limits,
            ttl=settings.direct_upload_ttl,
            public_api_url=settings.public_api_url,
        )
        self.resumable = ResumableService(
            db,
            store,
            self.uploads.ingest,
            limits=self.uploads.limits,
            layout=layout,
            part_size=settings.s3_part_size,
            expiry_seconds=settings.resumable_expiry_seconds,
        )
        self.variants = VariantService(
            db,
            store,
            self.images,
            self.pool,
            policy,
            layout=layout,
            options=options,
            lease_seconds=settings.upload_lease_seconds,
        )
        self.links = LinkService(
            LinkKeys(
                db,
                configured=settings.signing_keys,
                window=settings.link_window,
                max_ttl=settings.link_max_ttl,
            ),
            self.images,
            policy,
        )
        self.reconciler = Reconciler(
            db,
            store,
            self.uploads.idempotency,
            layout=layout,
            lease_seconds=settings.upload_lease_seconds,
        )
