"""Variants (SPEC §5) on every backend: exact sizes per fit, every format decodes, `Accept`
negotiation with `Vary`, EXIF orientation, no GPS, bad specs, render-once under
concurrency, deletion with the image, gc, placeholders at upload."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession

from imagesvc.db import utcnow
from imagesvc.imaging.pool import RenderPool
from tests.api import fetch_content, upload, variant
from tests.conftest import Inspector, client_for
from tests.samples import encode


def photo(size: tuple[int, int] = (800, 600), orientation: int | None = None) -> bytes:
    """A JPEG with EXIF (orientation, GPS) and some detail."""
    image = Image.effect_mandelbrot(size, (-2, -1.2, 1, 1.2), 40).convert("RGB")
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 31.0, 12.0)
    if orientation:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85, exif=exif.tobytes())
    return buffer.getvalue()


def decoded(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


@pytest.mark.parametrize(
    ("spec", "fit", "size"),
    [
        ("200x200", "contain", (200, 150)),
        ("200x200", "cover", (200, 200)),
        ("200x200", "fill", (200, 200)),
        ("400x100", "contain", (133, 100)),
        ("400x100", "cover", (400, 100)),
        ("1600x1600", "contain", (800, 600)),  # never upscaled
        ("1600x800", "cover", (800, 400)),  # box shrunk to fit inside, then cropped
    ],
)
async def test_exact_sizes_per_fit(
    client: httpx.AsyncClient, spec: str, fit: str, size: tuple[int, int]
) -> None:
    image = await upload(client, photo())
    response = await variant(client, image["id"], spec, fit=fit, format="png")
    assert decoded(response).size == size


@pytest.mark.parametrize(
    ("fmt", "pil_format"),
    [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("avif", "AVIF")],
)
async def test_each_format_decodes_without_gps(
    client: httpx.AsyncClient, fmt: str, pil_format: str
) -> None:
    image = await upload(client, photo())
    response = await variant(client, image["id"], "120x120", format=fmt)
    picture = decoded(response)
    assert picture.format == pil_format
    assert picture.size == (120, 90)
    exif = picture.getexif()
    assert 0x8825 not in exif  # no GPS IFD
    assert not exif.get_ifd(0x8825)
    assert response.headers["content-type"] == f"image/{fmt}"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("image/avif,image/webp,image/*,*/*;q=0.8", "AVIF"),
        ("image/webp,*/*", "WEBP"),
        ("image/avif;q=0,image/webp", "WEBP"),
        ("*/*", "JPEG"),
        (None, "JPEG"),
    ],
)
async def test_auto_format_negotiates_on_accept(
    client: httpx.AsyncClient, accept: str | None, expected: str
) -> None:
    image = await upload(client, photo())
    headers = {"Accept": accept} if accept else {}
    response = await client.get(f"/v1/images/{image['id']}/variants/64x64", headers=headers)
    assert response.headers["vary"] == "Accept"
    if response.status_code == 302:
        async with httpx.AsyncClient() as outside:
            response = await outside.get(response.headers["location"])
    assert decoded(response).format == expected


async def test_png_source_falls_back_to_png(client: httpx.AsyncClient) -> None:
    image = await upload(client, encode("PNG", (300, 300)))
    assert decoded(await variant(client, image["id"], "50x50")).format == "PNG"


async def test_exif_orientation_6_renders_rotated(client: httpx.AsyncClient) -> None:
    # Stored 800x600 landscape with "rotate 90° CW" in EXIF: a portrait picture.
    image = await upload(client, photo((800, 600), orientation=6))
    picture = decoded(await variant(client, image["id"], "300x300", format="jpeg"))
    assert picture.size == (225, 300)
    assert picture.getexif().get(0x0112) is None  # orientation applied, tag gone


@pytest.mark.parametrize(
    "spec", ["0x100", "100x0", "abc", "100", "100x", "x100", "-1x5", "123456x1", "1.5x2"]
)
async def test_malformed_specs_are_422(client: httpx.AsyncClient, spec: str) -> None:
    image = await upload(client, photo((64, 48)))
    response = await client.get(f"/v1/images/{image['id']}/variants/{spec}")
    assert response.status_code == 422, spec
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("params", [{"fit": "stretch"}, {"format": "gif"}, {"format": "JPEG"}])
async def test_bad_fit_or_format_is_422(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    image = await upload(client, photo((64, 48)))
    response = await client.get(f"/v1/images/{image['id']}/variants/10x10", params=params)
    assert response.status_code == 422


async def test_unknown_image_variant_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S/variants/10x10")
    assert response.status_code == 404


@pytest.fixture
def policy(app: FastAPI) -> Iterator[None]:
    """Tighter variant policy for one test: max 100 px, allow-list when asked."""
    variants = app.state.runtime.variants
    saved = variants.policy
    variants.policy = replace(saved, max_dimension=100)
    yield
    variants.policy = saved


async def test_sizes_are_clamped_to_the_maximum(client: httpx.AsyncClient, policy: None) -> None:
    image = await upload(client, photo())
    clamped = await variant(client, image["id"], "1000x500", fit="fill", format="png")
    assert decoded(clamped).size == (100, 50)


async def test_allow_list(app: FastAPI, client: httpx.AsyncClient, policy: None) -> None:
    variants = app.state.runtime.variants
    variants.policy = replace(variants.policy, allowed_sizes=frozenset({(64, 64), (100, 100)}))
    image = await upload(client, photo())
    assert (await variant(client, image["id"], "64x64")).status_code == 200
    assert (await variant(client, image["id"], "400x400")).status_code == 200  # clamps to 100
    refused = await client.get(f"/v1/images/{image['id']}/variants/50x50")
    assert refused.status_code == 422
    assert "64x64" in refused.json()["detail"]


async def test_concurrent_first_requests_render_once(
    client: httpx.AsyncClient, inspector: Inspector
) -> None:
    image = await upload(client, photo((1600, 1200)))
    before = inspector.keys()
    responses = await asyncio.gather(
        *(variant(client, image["id"], "256x256", format="webp") for _ in range(8))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    new = inspector.keys() - before
    assert len(new) == 1
    assert "/v/" in next(iter(new))


async def test_served_like_content_with_etag(
    app: FastAPI, client: httpx.AsyncClient, backend: str
) -> None:
    image = await upload(client, photo())
    first = await client.get(f"/v1/images/{image['id']}/variants/80x80?format=jpeg")
    if backend == "s3":
        assert first.status_code == 302
        assert "X-Amz-Signature=" in first.headers["location"]
    else:
        assert first.status_code == 200
    etag = first.headers["etag"]
    again = await client.get(
        f"/v1/images/{image['id']}/variants/80x80?format=jpeg", headers={"If-None-Match": etag}
    )
    assert again.status_code == 304
    assert "vary" not in first.headers  # explicit format: nothing to vary on


async def test_deleting_the_image_deletes_every_variant(
    client: httpx.AsyncClient, inspector: Inspector
) -> None:
    before = inspector.keys()
    image = await upload(client, photo())
    for spec, fmt in [("10x10", "jpeg"), ("20x20", "webp"), ("30x30", "png")]:
        assert (await variant(client, image["id"], spec, format=fmt)).status_code == 200
    assert len(inspector.keys() - before) == 4
    assert (await client.delete(f"/v1/images/{image['id']}")).status_code == 204
    assert inspector.keys() == before
    assert (await client.get(f"/v1/images/{image['id']}/variants/10x10")).status_code == 404


async def test_render_queue_full_is_429(app: FastAPI, client: httpx.AsyncClient) -> None:
    image = await upload(client, photo())
    variants = app.state.runtime.variants
    saved = variants.pool
    variants.pool = RenderPool(workers=1, queue=0)
    variants.pool.admitted = 1  # the one worker is busy
    try:
        response = await client.get(f"/v1/images/{image['id']}/variants/33x33")
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert response.json()["code"] == "too_many_renders"
    finally:
        variants.pool.close()
        variants.pool = saved
    assert (await variant(client, image["id"], "33x33")).status_code == 200


async def test_upload_returns_placeholders(client: httpx.AsyncClient) -> None:
    red = encode("JPEG", (640, 480), color=(220, 30, 30))
    image = await upload(client, red)
    assert image["blurhash"]
    assert len(image["blurhash"]) == 28  # 4x3 components
    red_channel = int(image["dominant_color"][1:3], 16)
    green_channel = int(image["dominant_color"][3:5], 16)
    assert image["dominant_color"].startswith("#")
    assert red_channel > 180 > green_channel + 100


async def test_public_variants_need_no_key(app: FastAPI, client: httpx.AsyncClient) -> None:
    public = await upload(client, photo(), visibility="public")
    private = await upload(client, photo())
    async with client_for(app, None) as anonymous:  # no credentials at all
        assert (await variant(anonymous, public["id"], "40x40")).status_code == 200
        refused = await anonymous.get(f"/v1/images/{private['id']}/variants/40x40")
        assert refused.status_code == 404
        assert (await fetch_content(anonymous, public["id"])).status_code == 200


async def test_gc_knows_variant_objects(
    app: FastAPI, client: httpx.AsyncClient, inspector: Inspector
) -> None:
    from datetime import timedelta

    from imagesvc.db import utcnow
    from imagesvc.images.models import Variant, VariantStatus

    image = await upload(client, photo())
    assert (await variant(client, image["id"], "50x50", format="jpeg")).status_code == 200
    kept = inspector.keys()
    runtime = app.state.runtime
    prefix = runtime.images.layout.image(image["id"])
    store = runtime.store

    async def put(key: str) -> None:
        writer = await store.open_write(key, content_type="image/jpeg")
        await writer.write(b"leftover")
        await writer.complete()

    # A render that died after writing its object (claim long stale), and an object that
    # no row names at all (its render lost the race and crashed before cleaning up).
    dead, orphan = f"{prefix}v/70x70-contain-dead.jpg", f"{prefix}v/90x90-contain-lost.jpg"
    await put(dead)
    await put(orphan)
    long_ago = utcnow() - timedelta(hours=2)
    async with AsyncSession(runtime.db.engine) as session, session.begin():
        session.add(
            Variant(
                image_id=image["id"],
                box_width=70,
                box_height=70,
                fit="contain",
                format="jpeg",
                status=VariantStatus.RENDERING,
                storage_key=dead,
                created_at=long_ago,
                updated_at=long_ago,
            )
        )
    report = await runtime.reconciler.run(grace=0)
    assert dead in report.abandoned_renders
    assert orphan in report.orphan_objects
    assert inspector.keys() == kept  # the original and the ready variant stay
    assert (await variant(client, image["id"], "70x70", format="jpeg")).status_code == 200


def _corrupt_png() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    for index in range(200, len(data) - 20, 97):  # pixel data only: the header stays valid
        data[index] ^= 0x55
    return bytes(data)


def _corrupt_avif() -> bytes:
    """An AVIF whose header is fine but whose payload libavif refuses (RuntimeError)."""
    import random

    from imagesvc.imaging.render import RenderError, placeholder

    base = encode("AVIF", (96, 80))
    chooser = random.Random(7)
    for _ in range(2000):
        data = bytearray(base)
        start = chooser.randrange(12, len(data))
        end = min(len(data), start + chooser.randint(1, 64))
        data[start:end] = bytes(chooser.randrange(256) for _ in range(end - start))
        try:
            placeholder(bytes(data))
        except RenderError as exc:
            if isinstance(exc.__cause__, RuntimeError):
                return bytes(data)
    pytest.skip("no libavif-refused mutation found")


@pytest.mark.parametrize("make", [_corrupt_png, _corrupt_avif])
async def test_corrupt_pixels_behind_a_valid_header_are_never_a_500(
    client: httpx.AsyncClient, make: object
) -> None:
    data = make()  # type: ignore[operator]
    created = await client.post("/v1/images", content=data, headers={"Content-Type": "image/png"})
    assert created.status_code == 201  # the header is valid; placeholders are just null
    assert created.json()["blurhash"] is None
    rendered = await client.get(f"/v1/images/{created.json()['id']}/variants/32x32")
    assert rendered.status_code == 422
    assert rendered.json()["code"] == "unrenderable_image"


async def test_variant_of_an_image_deleted_by_another_process_is_404(
    app: FastAPI, client: httpx.AsyncClient, owner: str
) -> None:
    from imagesvc.images.models import ImageStatus
    from imagesvc.images.repository import ImageRepository

    runtime = app.state.runtime
    image = await upload(client, photo())
    assert (await variant(client, image["id"], "20x20")).status_code == 200  # row now cached
    # Another process deletes it (its rows and objects); this process still caches the row.
    async with AsyncSession(runtime.db.engine) as session, session.begin():
        await ImageRepository(session).mark_deleting(owner, image["id"], now=utcnow())
    await runtime.store.delete_prefix(runtime.images.layout.image(image["id"]))
    async with AsyncSession(runtime.db.engine) as session, session.begin():
        await ImageRepository(session).remove(image["id"], ImageStatus.DELETING)
    response = await client.get(f"/v1/images/{image['id']}/variants/30x30")
    assert response.status_code == 404
