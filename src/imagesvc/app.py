"""Application factory: settings in, a FastAPI app out; resources live in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp

from imagesvc import __version__
from imagesvc.auth.keys import KeyService
from imagesvc.auth.ratelimit import RateLimiter
from imagesvc.config import MIB, Settings, load_settings
from imagesvc.db import create_engine, create_sessionmaker
from imagesvc.errors import install_problem_handlers, problem_response
from imagesvc.images.endpoints import router as images_router
from imagesvc.images.hot_reads import HotReads
from imagesvc.images.ingest import UploadLimits
from imagesvc.images.reconcile import Reconciler
from imagesvc.images.render_pool import RenderPool
from imagesvc.images.service import ImageService
from imagesvc.images.serving import ServeOptions
from imagesvc.images.variants import VariantPolicy, VariantService, placeholder_maker
from imagesvc.imaging import render
from imagesvc.observability.logs import configure_logging
from imagesvc.observability.metrics import DB_POOL_IN_USE, DB_POOL_SIZE, render_latest
from imagesvc.observability.middleware import RequestContextMiddleware
from imagesvc.openapi import install_openapi
from imagesvc.openapi import problem_response as problem_doc
from imagesvc.storage.local import LocalObjectStore
from imagesvc.storage.port import ObjectStore
from imagesvc.storage.s3 import S3ObjectStore, S3Options

READY_TIMEOUT = 2.0


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, Literal["ok", "down"]] = Field(
        description="Each dependency: `database`, `storage`."
    )


log = logging.getLogger(__name__)


def build_store(settings: Settings) -> LocalObjectStore | S3ObjectStore:
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


def heic_decoder_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("pi_heif") is not None


def build_image_service(
    settings: Settings,
    engine: AsyncEngine,
    store: ObjectStore,
    pool: RenderPool | None = None,
) -> ImageService:
    return ImageService(
        create_sessionmaker(engine),
        store,
        limits=UploadLimits(
            max_upload_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            header_budget=max(settings.s3_part_size, 8 * MIB),
            lease_seconds=settings.upload_lease_seconds,
        ),
        serve=ServeOptions(
            redirect=settings.serve_mode == "redirect",
            signed_url_ttl=settings.signed_url_ttl,
            public_base_url=settings.public_base_url,
        ),
        key_prefix=settings.s3_key_prefix if settings.storage_backend == "s3" else "",
        db_timeout=settings.db_timeout,
        placeholders=placeholder_maker(store, pool) if pool is not None else None,
        read_cache_seconds=settings.read_cache_seconds,
    )


def build_variant_service(
    settings: Settings, images: ImageService, pool: RenderPool
) -> VariantService:
    render.configure(settings.max_pixels)
    return VariantService(
        images,
        pool,
        VariantPolicy(settings.variant_max_dimension, settings.allowed_sizes),
        lease_seconds=settings.upload_lease_seconds,
    )


def build_key_service(settings: Settings, engine: AsyncEngine) -> KeyService:
    return KeyService(
        create_sessionmaker(engine),
        cache_seconds=settings.auth_cache_seconds,
        db_timeout=settings.db_timeout,
    )


def build_reconciler(settings: Settings, service: ImageService) -> Reconciler:
    return Reconciler(
        service.sessions,
        service.store,
        service.idempotency,
        key_prefix=service.key_prefix,
        lease_seconds=settings.upload_lease_seconds,
        db_timeout=settings.db_timeout,
    )


@asynccontextmanager
async def running_resources(settings: Settings) -> AsyncIterator[tuple[AsyncEngine, ObjectStore]]:
    """The engine and the store, opened and closed together (app lifespan and CLI)."""
    engine = create_engine(settings)
    store = build_store(settings)
    try:
        await store.start()
        yield engine, store
    finally:
        if isinstance(store, S3ObjectStore):
            await store.close()
        await engine.dispose()


async def periodic_gc(settings: Settings, reconciler: Reconciler) -> None:
    """IMAGESVC_GC_INTERVAL_SECONDS > 0: reconcile in the background. Every replica may
    run it; the reconciler is safe to run concurrently with itself."""
    while True:
        # Jitter so that replicas started together do not reconcile in lockstep.
        await asyncio.sleep(settings.gc_interval_seconds * random.uniform(0.8, 1.2))
        try:
            report = await reconciler.run(
                grace=settings.gc_grace_seconds, limit=settings.gc_batch_limit
            )
        except Exception:
            log.warning("background gc failed; will retry", exc_info=True)
            continue
        log.info("%s", report.lines()[-1])


class _ImagesvcAPI(FastAPI):
    """FastAPI with the request context and the hot reads outside its own middleware.

    Starlette puts added middleware inside its error, telemetry and body-limit layers; for a
    replayed redirect those three layers (and their `send` wrappers) were ~5 % of the
    request. Outside them, every response, a 500 included, is counted and logged and
    carries the request id; the hot reads answer an unexpected error with the app's own
    500 problem (`errors.handle_unexpected`), as that error layer would.
    """

    def build_middleware_stack(self) -> ASGIApp:
        # Middleware an embedding application adds (CORS, GZip...) wraps everything, the
        # hot reads included (and the error layer too: what it raises reaches the server).
        added, self.user_middleware = self.user_middleware, []
        try:
            app: ASGIApp = RequestContextMiddleware(HotReads(super().build_middleware_stack()))
        finally:
            self.user_middleware = added
        for cls, args, kwargs in reversed(added):
            app = cls(app, *args, **kwargs)
        return app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_resources(settings) as (engine, store):
            app.state.settings = settings
            app.state.engine = engine
            app.state.store = store
            pool = RenderPool(settings.render_workers, settings.render_queue)
            app.state.images = build_image_service(settings, engine, store, pool)
            app.state.variants = build_variant_service(settings, app.state.images, pool)
            app.state.keys = build_key_service(settings, engine)
            app.state.rate_limiter = (
                RateLimiter(settings.rate_limit_per_minute)
                if settings.rate_limit_per_minute
                else None
            )
            gc_task = None
            if settings.gc_interval_seconds > 0:
                reconciler = build_reconciler(settings, app.state.images)
                gc_task = asyncio.create_task(periodic_gc(settings, reconciler))
            try:
                yield
            finally:
                if gc_task is not None:
                    gc_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await gc_task
                # Requests cancelled at shutdown clean up in shielded tasks: let them
                # finish (bounded) while the store and the database are still open.
                await app.state.variants.drain(within=10)
                await app.state.images.ingest.drain(within=10)
                pool.close()

    app = _ImagesvcAPI(
        title="imagesvc",
        version=__version__,
        summary="Upload, serve, list and delete images: bytes in S3, facts in SQL.",
        lifespan=lifespan,
        # Our telemetry is Prometheus /metrics and JSON request lines with request ids.
        # FastAPI's OpenTelemetry bridge looked for configured providers on every request,
        # ~15 % of a cached redirect, so it is off; wrap the app with
        # opentelemetry-instrumentation-asgi for traces.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_problem_handlers(app)
    install_openapi(app)
    app.include_router(images_router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        engine: AsyncEngine = request.app.state.engine
        pool: Any = engine.pool
        if hasattr(pool, "checkedout"):
            DB_POOL_IN_USE.set(pool.checkedout())
            DB_POOL_SIZE.set(pool.size())
        body, content_type = render_latest()
        return Response(body, media_type=content_type)

    @app.get(
        "/healthz",
        tags=["operations"],
        operation_id="healthz",
        summary="Liveness",
        description="200 while the process runs; touches nothing else.",
    )
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["operations"],
        operation_id="readyz",
        summary="Readiness: database and object store reachable",
        description="Checks both with a 2 s timeout each; 503 names what is down.",
        response_model=Readiness,
        responses={503: problem_doc("A dependency is down; `detail` names it.")},
    )
    async def readyz(request: Request) -> Any:
        checks = await _check_dependencies(request.app)
        down = [name for name, ok in checks.items() if not ok]
        if down:
            return problem_response(
                request,
                status=503,
                code="dependency_unavailable",
                title="Service unavailable",
                detail=f"unavailable: {', '.join(down)}",
                headers={"Retry-After": "5"},
                extra={"checks": {k: "ok" if v else "down" for k, v in checks.items()}},
            )
        return JSONResponse({"status": "ready", "checks": dict.fromkeys(checks, "ok")})

    return app


async def _check_dependencies(app: FastAPI) -> dict[str, bool]:
    async def database() -> None:
        async with app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def storage() -> None:
        store: ObjectStore = app.state.store
        await store.ping()

    async def ok(check: Any) -> bool:
        try:
            await asyncio.wait_for(check(), READY_TIMEOUT)
        except Exception:
            return False
        return True

    db_ok, store_ok = await asyncio.gather(ok(database), ok(storage))
    return {"database": db_ok, "storage": store_ok}


def app_from_env() -> FastAPI:
    """Uvicorn factory for `imagesvc serve`: each worker process builds its own app and,
    being a fresh process, configures its own logging."""
    settings = load_settings()
    configure_logging(settings.log_format)
    return create_app(settings)
