"""A real browser (Debian's Chromium, driven by Playwright) against a real `imagesvc serve`:
a page on a second origin does the whole lifecycle with fetch (CORS, exposed headers,
signed links in `<img>`), and the console is driven through its data-testid hooks.

Chromium comes from Debian (`apt-get install chromium` when missing), never from
`playwright install`: the machine reaches package registries only.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageOps
from playwright.async_api import Browser, async_playwright

from tests.services import BIN, Process, create_key, free_port, start_imagesvc

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = Path(__file__).parent / "pages"
ROOT = Path(__file__).resolve().parents[2]


def ensure_chromium() -> Path:
    if not CHROMIUM.exists() and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"], check=True, capture_output=True
        )
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing and `apt-get install -y chromium` did not bring it")
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = ensure_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output is the browser's, not a line per file served


@pytest.fixture(scope="module")
def second_origin() -> Iterator[str]:
    """A tiny static server on another port: another origin, as a front end would be."""
    handler = functools.partial(_QuietFiles, directory=str(PAGES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def serve(state: Path, env: dict[str, str]) -> tuple[Process, str, str]:
    full = {
        "IMAGESVC_DATABASE_URL": f"sqlite+aiosqlite:///{state / 'imagesvc.db'}",
        "IMAGESVC_STORAGE_LOCAL_ROOT": str(state / "objects"),
        "IMAGESVC_LOG_FORMAT": "console",
        **env,
    }
    subprocess.run(
        [str(BIN / "imagesvc"), "migrate"],
        env={**os.environ, **full},
        check=True,
        capture_output=True,
    )
    key = create_key(full, "browser")
    process, url = start_imagesvc(state, full)
    return process, url, key


@pytest.fixture(scope="module")
def api_for_other_origin(
    tmp_path_factory: pytest.TempPathFactory, second_origin: str, rclone: tuple[Process, str]
) -> Iterator[tuple[str, str]]:
    """imagesvc on rclone's S3 (redirect mode: the `<img>` follows a 302 to the store),
    with the second origin allowed."""
    state = tmp_path_factory.mktemp("browser-api")
    from tests.services import S3_ACCESS_KEY, S3_SECRET_KEY

    process, url, key = serve(
        state,
        {
            "IMAGESVC_STORAGE_BACKEND": "s3",
            "IMAGESVC_S3_BUCKET": "imagesvc-rclone",
            "IMAGESVC_S3_ENDPOINT_URL": rclone[1],
            "IMAGESVC_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "IMAGESVC_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "IMAGESVC_S3_ADDRESSING_STYLE": "path",
            "IMAGESVC_S3_KEY_PREFIX": "browser/",
            "IMAGESVC_CORS_ORIGINS": second_origin,
        },
    )
    yield url, key
    process.stop()


async def test_a_page_on_another_origin_does_the_whole_lifecycle(
    browser: Browser, second_origin: str, api_for_other_origin: tuple[str, str]
) -> None:
    api, key = api_for_other_origin
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{second_origin}/lifecycle.html#api={api}&key={key}")
    await page.wait_for_function("() => window.lifecycle !== undefined", timeout=60_000)
    out: dict[str, Any] = await page.evaluate("() => window.lifecycle")
    await page.close()
    assert "error" not in out, out
    assert errors == []

    created = out["created"]
    assert created["status"] == 201
    image_id = created["body"]["id"]
    assert created["location"] == f"/v1/images/{image_id}"  # exposed to the page
    assert created["requestId"]
    assert out["retried"]["status"] == 201
    assert out["retried"]["replayed"] == "true"  # the Idempotency-Key worked
    assert out["retried"]["body"]["id"] == image_id
    assert out["fetched"]["status"] == 200
    assert out["fetched"]["body"]["filename"] == "from-the-browser.png"
    assert out["patched"]["body"]["filename"] == "renamed in the browser.png"
    # The private image, in <img> tags, through signed links (and the redirect to S3).
    assert out["thumbnail"] == {"ok": True, "width": 60, "height": 60}
    assert out["original"] == {"ok": True, "width": 120, "height": 80}
    assert out["unsigned"]["ok"] is False  # without a link: not shown
    missing = out["missing"]
    assert missing["status"] == 404
    assert missing["type"] == "application/problem+json"
    assert missing["body"]["code"] == "not_found"
    assert missing["body"]["request_id"] == missing["requestId"]
    assert out["unauthorized"]["status"] == 401
    assert out["unauthorized"]["body"]["code"] == "unauthorized"
    assert out["deleted"]["status"] == 204
    assert out["deletedAgain"]["status"] == 404
    assert out["linkAfterDelete"]["status"] == 404


COUNT = "(n) => document.querySelectorAll('[data-testid=thumbnail]').length === n"


def sample_jpeg(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A colourful JPEG: a two-colour glow with a fractal over it, other colours per seed."""
    palette = [
        ("#ff7e5f", "#feb47b"),
        ("#2b5876", "#4e4376"),
        ("#43cea2", "#185a9d"),
        ("#f7971e", "#ffd200"),
        ("#c94b4b", "#4b134f"),
        ("#56ccf2", "#2f80ed"),
        ("#a8e063", "#56ab2f"),
        ("#ee9ca7", "#ffdde1"),
    ]
    dark, light = palette[seed % len(palette)]
    glow = Image.radial_gradient("L").resize(size)
    picture = ImageOps.colorize(glow, black=light, white=dark)
    fractal = Image.effect_mandelbrot(size, (-2.2 + (seed % 5) * 0.1, -1.3, 1.0, 1.3), 40)
    veil = fractal.point(lambda v: 255 - v // 2)
    picture = Image.composite(picture, Image.new("RGB", size, light), veil)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


@pytest.fixture
def console_api(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """imagesvc on the embedded default (everything same-origin), console on."""
    process, url, key = serve(tmp_path, {})
    yield url, key
    process.stop()


async def test_the_console_does_the_job_through_its_hooks(
    browser: Browser, console_api: tuple[str, str], tmp_path: Path
) -> None:
    api, key = console_api
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api, headers=auth) as client:
        for seed in range(25):  # more than a page: paging has something to do
            response = await client.post(
                "/v1/images",
                content=sample_jpeg(seed, (96, 64)),
                headers={"Content-Type": "image/jpeg", "X-Filename": f"older-{seed}.jpg"},
            )
            assert response.status_code == 201

    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))

    await page.goto(f"{api}/")  # `/` redirects to the console
    assert page.url == f"{api}/console"
    await page.get_by_test_id("api-key").fill(key)
    await page.get_by_test_id("save-key").click()
    thumbnails = page.get_by_test_id("thumbnail")
    await page.wait_for_function(COUNT, arg=24)
    assert await page.evaluate("() => sessionStorage.getItem('imagesvc.apiKey')") == key
    assert await page.evaluate("() => localStorage.length") == 0
    assert await page.evaluate("() => document.cookie") == ""
    await page.get_by_test_id("load-more").click()
    await page.wait_for_function(COUNT, arg=25)
    assert await page.get_by_test_id("load-more").is_hidden()

    files = [
        {"name": "sunrise.jpg", "mimeType": "image/jpeg", "buffer": sample_jpeg(40)},
        {"name": "harbour.jpg", "mimeType": "image/jpeg", "buffer": sample_jpeg(41)},
    ]
    await page.get_by_test_id("file-input").set_input_files(files)  # type: ignore[arg-type]
    assert await page.get_by_test_id("upload-progress").count() == 2  # one bar per file
    loaded = """(names) => names.every((name) =>
        [...document.querySelectorAll('[data-testid=thumbnail]')]
        .some((img) => img.alt === name && img.complete && img.naturalWidth > 0))"""
    await page.wait_for_function(loaded, arg=["sunrise.jpg", "harbour.jpg"], timeout=60_000)
    assert await thumbnails.count() == 27
    uploaded = page.locator("[data-testid=thumbnail][alt='sunrise.jpg']")
    image_id = await uploaded.get_attribute("data-image-id")
    assert image_id
    src = await uploaded.get_attribute("src") or ""
    assert "/variants/256x256?" in src  # the signed 256 px variant
    assert "&sig=" in src
    tile = page.locator(f".tile[data-image-id='{image_id}']")
    style = await tile.evaluate("(el) => [el.style.backgroundColor, el.style.backgroundImage]")
    assert style[0]  # the dominant colour, painted first
    assert style[1].startswith('url("data:image/png')  # the BlurHash, decoded in the page

    await page.wait_for_timeout(2_600)  # finished uploads leave their bar for 2.5 s
    shot = os.environ.get("IMAGESVC_CONSOLE_SCREENSHOT")
    if shot:  # docs/console.png is made this way: see the README
        await page.evaluate("() => window.scrollTo(0, 0)")
        await page.wait_for_function(loaded, arg=["older-24.jpg", "older-20.jpg"])
        await page.screenshot(path=shot)

    await uploaded.click()
    detail = page.get_by_test_id("detail")
    await detail.wait_for(state="visible")
    await page.wait_for_function(
        "() => document.getElementById('download').href.includes('download=1')"
    )
    assert "sunrise.jpg" in (await detail.inner_text())
    if shot:
        await page.wait_for_function(
            "() => document.getElementById('preview-img').naturalWidth > 0"
        )
        await page.screenshot(path=shot.replace(".png", "-detail.png"))
    await page.locator("label.switch").click()  # the visibility switch
    await page.wait_for_function(
        "() => document.getElementById('visibility-label').textContent.startsWith('Public')"
    )
    async with httpx.AsyncClient(base_url=api, headers=auth) as client:
        assert (await client.get(f"/v1/images/{image_id}")).json()["visibility"] == "public"
        await page.get_by_test_id("delete").click()
        await detail.wait_for(state="hidden")
        await page.wait_for_function(COUNT, arg=26)
        assert (await client.get(f"/v1/images/{image_id}")).status_code == 404
    await context.close()

    assert errors == []
    assert requests
    foreign = [url for url in requests if not url.startswith((f"{api}/", "data:", "blob:"))]
    assert foreign == []  # nothing from another host
