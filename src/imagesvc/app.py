"""Application factory: settings in, a FastAPI app out. Wiring only: the services are built
by `Runtime` (runtime.py) in the lifespan, the routes live in their feature folders, the
middleware stack in web/."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from imagesvc import __version__
from imagesvc.config import Settings, load_settings
from imagesvc.console.endpoints import router as console_router
from imagesvc.errors import install_problem_handlers
from imagesvc.images.endpoints import router as images_router
from imagesvc.observability.logs import configure_logging
from imagesvc.openapi import install_openapi
from imagesvc.runtime import Runtime
from imagesvc.serving.endpoints import router as content_router
from imagesvc.uploads.direct.endpoints import router as direct_router
from imagesvc.uploads.direct.endpoints import uploads_router as direct_uploads_router
from imagesvc.uploads.endpoints import router as uploads_router
from imagesvc.uploads.tus.endpoints import router as tus_router
from imagesvc.variants.endpoints import router as variants_router
from imagesvc.web.operations import router as operations_router
from imagesvc.web.stack import ImagesvcAPI


def create_app(settings: Settings | None = None) -> FastAPI:
    runtime = Runtime(settings or load_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime.open():
            app.state.settings = runtime.settings
            app.state.runtime = runtime
            yield

    app = ImagesvcAPI(
        runtime,
        title="imagesvc",
        version=__version__,
        summary="Upload, serve, list and delete images: bytes in S3, facts in SQL.",
        lifespan=lifespan,
        # Our telemetry is Prometheus /metrics and JSON request lines with request ids.
        # FastAPI's OpenTelemetry bridge looked for configured providers on every request,
        # ~15 % of a cached redirect, so it is off; wrap the app with
        # opentelemetry-instrumentation-asgi for traces.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # Starlette would answer `/v1/images/` with a 307 to an absolute URL built from the
        # request's Host header: a forged Host becomes a redirect elsewhere that a client
        # follows with its POST body and key, and that a shared cache may keep. Paths are
        # exact here, so a trailing slash is a 404 problem (docs/DESIGN.md).
        redirect_slashes=False,
    )
    install_problem_handlers(app)
    install_openapi(app)
    # The order routes are tried in; their paths do not overlap.
    for router in (uploads_router, images_router, content_router, variants_router, tus_router):
        app.include_router(router)
    app.include_router(direct_router)
    app.include_router(direct_uploads_router)
    app.include_router(operations_router)
    if runtime.settings.console:
        app.include_router(console_router)
    return app


def app_from_env() -> FastAPI:
    """Uvicorn factory for `imagesvc serve`: each worker process builds its own app and,
    being a fresh process, configures its own logging."""
    settings = load_settings()
    configure_logging(settings.log_format)
    return create_app(settings)
