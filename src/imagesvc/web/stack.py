"""The middleware stack: the request context, CORS and the fast read path outside FastAPI's
own middleware."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from imagesvc.runtime import Runtime
from imagesvc.web.context import RequestContextMiddleware
from imagesvc.web.cors import CorsMiddleware
from imagesvc.web.hot_reads import HotReads


class ImagesvcAPI(FastAPI):
    """FastAPI with the request context and the hot reads outside its own middleware.

    Starlette puts added middleware inside its error, telemetry and body-limit layers; for a
    replayed redirect those three layers (and their `send` wrappers) were ~5 % of the
    request. Outside them, every response, a 500 included, is counted and logged and
    carries the request id; the hot reads answer an unexpected error with the app's own
    500 problem (`errors.handle_unexpected`), as that error layer would.
    """

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        self.runtime = runtime
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        # Middleware an embedding application adds (CORS, GZip...) wraps everything, the
        # hot reads included (and the error layer too: what it raises reaches the server).
        added, self.user_middleware = self.user_middleware, []
        try:
            framework = super().build_middleware_stack()
        finally:
            self.user_middleware = added
        app: ASGIApp = HotReads(framework, self.runtime)
        settings = self.runtime.settings
        if settings.cors_origin_list:
            # Outside the hot reads and the error layer: every response to an allowed
            # origin, 500s included, carries the CORS headers (web/cors.py). Inside the
            # request context, so a refused preflight is logged and has its request id.
            app = CorsMiddleware(
                app, origins=settings.cors_origin_list, max_age=settings.cors_max_age
            )
        app = RequestContextMiddleware(app)
        for middleware in reversed(added):
            app = middleware.cls(app, *middleware.args, **middleware.kwargs)
        return app
