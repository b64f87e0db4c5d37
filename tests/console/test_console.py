"""The console's routes (SPEC §9): the page and its files from the package, the hooks
browser automation relies on, a policy that loads nothing from another host, `/` pointing
at it, and `IMAGESVC_CONSOLE=false` turning it all off. The page itself is driven by a
real browser in tests/system/test_browser.py."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from imagesvc.config import Settings
from tests.conftest import app_with, client_for

HOOKS = [
    "api-key",
    "save-key",
    "file-input",
    "upload-progress",
    "thumbnail",
    "detail",
    "delete",
    "load-more",
]


async def test_the_console_page_and_its_files(app: FastAPI, settings: Settings) -> None:
    async with client_for(app, None) as browser:
        root = await browser.get("/")
        assert root.status_code == 302
        assert root.headers["location"] == "console"  # relative: works behind a prefix
        page = await browser.get("/console")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "connect-src 'self'" in policy
        assert "default-src 'none'" in policy
        if settings.s3_endpoint_url:  # thumbnails redirect to the store
            assert settings.s3_endpoint_url in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        html = page.text
        # Every hook is in the page or made by its script.
        script = (await browser.get("/console/console.js")).text
        for hook in HOOKS:
            assert f'data-testid="{hook}"' in html or f'testid = "{hook}"' in script, hook
        assert "sessionStorage" in script
        assert "localStorage" not in script
        assert "document.cookie" not in script
        # Nothing from another host: every reference in the page is relative.
        for reference in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert not re.match(r"^[a-z]+://|^//", reference), reference
        for name, media in [
            ("console.js", "text/javascript; charset=utf-8"),
            ("blurhash.js", "text/javascript; charset=utf-8"),
            ("console.css", "text/css; charset=utf-8"),
        ]:
            asset = await browser.get(f"/console/{name}")
            assert asset.status_code == 200
            assert asset.headers["content-type"] == media
            again = await browser.get(
                f"/console/{name}", headers={"If-None-Match": asset.headers["etag"]}
            )
            assert again.status_code == 304
        for missing in ("/console/nope.js", "/console/..%2Fapp.py", "/console/__init__.py"):
            response = await browser.get(missing)
            assert response.status_code == 404
            assert response.headers["content-type"] == "application/problem+json"
        assert "/console" not in (await browser.get("/openapi.json")).text


@pytest.mark.parametrize("value", ["false", "0"])
async def test_the_console_can_be_turned_off(settings: Settings, value: str) -> None:
    async with app_with(settings, console=value) as app, client_for(app, None) as browser:
        for path in ("/", "/console", "/console/console.js"):
            assert (await browser.get(path)).status_code == 404, path


async def test_a_page_can_reach_the_api_through_relative_urls(client: httpx.AsyncClient) -> None:
    """The page calls `v1/images` relative to itself; from `/console` that is `/v1/images`."""
    page_url = httpx.URL("http://imagesvc.test/console")
    assert str(page_url.join("v1/images")) == "http://imagesvc.test/v1/images"
    assert (await client.get(page_url.join("v1/images").path)).status_code == 200
