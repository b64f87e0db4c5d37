"""The console (SPEC §9): one static page, served by the service, that does by hand what a
client does (key, upload, library, detail, delete). Static files shipped in the package
(console/static/), no build step, nothing loaded from another host: the Content-Security-Policy
allows scripts, styles and API calls from this origin only, and images from this origin and
the object store the redirects point at.

`GET /` redirects here (relative `Location`, so a path prefix in front of the service
still works) while `IMAGESVC_CONSOLE` is on; app.py includes this router only then.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response

from imagesvc.config import Settings
from imagesvc.errors import NotFound

router = APIRouter(include_in_schema=False)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


def _load() -> dict[str, _Asset]:
    """Every file of console/static, read once (a few tens of KB)."""
    assets = {}
    for entry in resources.files("imagesvc.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
            assets[entry.name] = _Asset(body, _TYPES[suffix], etag)
    return assets


_ASSETS = _load()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def image_sources(settings: Settings) -> str:
    """Where the page's `<img>` tags may end up: here, and the store a redirect points at
    (a signed S3 URL, or the CDN of IMAGESVC_PUBLIC_BASE_URL)."""
    sources = ["'self'", "data:", "blob:"]
    if settings.storage_backend == "s3":
        if settings.s3_endpoint_url:
            sources.append(_origin(settings.s3_endpoint_url))
        else:
            sources.append("https://*.amazonaws.com")
    if settings.public_base_url:
        sources.append(_origin(settings.public_base_url))
    return " ".join(sources)


def _headers(request: Request, asset: _Asset) -> dict[str, str]:
    settings: Settings = request.app.state.settings
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src {image_sources(settings)}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "ETag": asset.etag,
        # Revalidated on every load: a new release shows at once, an unchanged one is a 304.
        "Cache-Control": "no-cache",
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        # Signed links are in the page's URLs of images: never send them on as a Referer.
        "Referrer-Policy": "no-referrer",
    }


def _serve(request: Request, name: str) -> Response:
    asset = _ASSETS.get(name)
    if asset is None:
        raise NotFound("no such console file")
    headers = _headers(request, asset)
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
async def root() -> Response:
    return Response(status_code=302, headers={"Location": "console"})


@router.get("/console")
async def console(request: Request) -> Response:
    return _serve(request, "index.html")


@router.get("/console/{name}")
async def console_file(request: Request, name: str) -> Response:
    return _serve(request, name)
