"""HEIC/HEIF (issue #18) on every backend: real files from a real HEVC encoder, uploaded,
probed from the header, given placeholders and rendered to JPEG, WebP and AVIF, in this
process and in a real `imagesvc serve`.

The fixtures are encoded with pillow-heif (a test-only dependency that bundles x265) through
its standalone API: its Pillow plugin is never registered here, so every decode in these
tests goes through the opener the service registers (pi-heif's, decode only).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import io
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pillow_heif
import pytest
from fastapi import FastAPI
from packaging.requirements import Requirement
from PIL import Image

from imagesvc.app import create_app
from imagesvc.config import Settings
from imagesvc.imaging.isobmff import MAX_ITEMS
from imagesvc.imaging.probe import NotAnImage, StreamProbe
from tests.api import follow, post_raw
from tests.samples import encode
from tests.services import BIN, create_key, start_imagesvc

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (30, 40, 220)
ORANGE_16 = (50000, 20000, 5000)  # a 16-bit colour; in 8 bits about (194, 78, 19)
ORANGE_8 = tuple(round(value / 257) for value in ORANGE_16)
SRC = Path(__file__).resolve().parents[2] / "src"


# --- fixtures: real HEVC-coded files ----------------------------------------------------------


def exif_bytes(orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Apple"  # Make
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 31.0, 12.0)
    if orientation:
        exif[0x0112] = orientation
    return exif.tobytes()


def heic(picture: Image.Image, *, orientation: int | None = None, quality: int = 90) -> bytes:
    """An 8-bit HEIC of these pixels as stored. With an orientation, the encoder writes the
    matching irot/imir boxes and keeps the EXIF tag: both, as an iPhone does."""
    buffer = io.BytesIO()
    pillow_heif.encode(
        picture.mode,
        picture.size,
        picture.tobytes(),
        buffer,
        quality=quality,
        exif=exif_bytes(orientation),
    )
    return buffer.getvalue()


@functools.cache
def photo_8bit() -> bytes:
    # Odd sizes: the encoder pads to even ones and crops back with a `clap` box.
    return heic(Image.new("RGB", (321, 241), RED))


@functools.cache
def photo_10bit() -> bytes:
    size = (320, 240)
    pixels = struct.pack("<HHH", *ORANGE_16) * (size[0] * size[1])
    buffer = io.BytesIO()
    pillow_heif.encode("RGB;16", size, pixels, buffer, quality=90, exif=exif_bytes())
    return buffer.getvalue()


@functools.cache
def rotated() -> bytes:
    """Stored 200x100 landscape (left half red, right half blue, a green block at the stored
    top-left) with orientation 6, "rotate 90 degrees clockwise", in irot and in EXIF."""
    stored = Image.new("RGB", (200, 100), RED)
    stored.paste(BLUE, (100, 0, 200, 100))
    stored.paste(GREEN, (0, 0, 30, 30))
    return heic(stored, orientation=6)


@functools.cache
def multi_image() -> bytes:
    """Three top-level images (red, green, blue; the green one primary), each with a
    thumbnail."""
    size = (128, 96)
    heif = pillow_heif.from_bytes("RGB", size, bytes(RED) * (size[0] * size[1]))
    for color in (GREEN, BLUE):
        heif.add_frombytes("RGB", size, bytes(color) * (size[0] * size[1]))
    thumbnails: list[int | None] = [32]
    for image in heif:
        image.info["thumbnails"] = thumbnails
    buffer = io.BytesIO()
    heif.save(buffer, quality=90, primary_index=1)
    return buffer.getvalue()


def claiming(data: bytes, width: int, height: int) -> bytes:
    """The file with every `ispe` (image spatial extents) patched to claim this size."""
    patched = bytearray(data)
    at = patched.find(b"ispe")
    while at != -1:
        patched[at + 8 : at + 16] = struct.pack(">II", width, height)  # after version/flags
        at = patched.find(b"ispe", at + 4)
    return bytes(patched)


def mdat_at(data: bytes) -> int:
    at = data.find(b"mdat")
    assert at > 0
    return at


def decoded(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def pixel(picture: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = picture.convert("RGB").getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 20) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False))


def hex_color(value: str) -> tuple[int, int, int]:
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


async def upload(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await post_raw(client, data, headers={"Content-Type": "image/heic"})


async def uploaded(client: httpx.AsyncClient, data: bytes) -> dict[str, object]:
    response = await upload(client, data)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def variant(
    client: httpx.AsyncClient, image_id: object, spec: str, **headers: str
) -> httpx.Response:
    """GET a variant (format=auto unless headers say otherwise), following a redirect."""
    params = {"format": headers.pop("format")} if "format" in headers else {}
    return await follow(
        await client.get(f"/v1/images/{image_id}/variants/{spec}", params=params, headers=headers)
    )


# --- the fixtures are what they claim ---------------------------------------------------------


def test_fixtures_are_real_heic_files() -> None:
    assert pillow_heif.open_heif(photo_10bit(), convert_hdr_to_8bit=False).info["bit_depth"] == 10
    assert pillow_heif.open_heif(photo_8bit(), convert_hdr_to_8bit=False).info["bit_depth"] == 8
    assert b"clap" in photo_8bit()
    assert b"irot" in rotated()
    stored_exif = Image.Exif()
    stored_exif.load(pillow_heif.open_heif(rotated()).info["exif"])
    assert stored_exif[0x0112] == 6  # irot *and* EXIF say "rotate": the double-turn trap
    assert len(pillow_heif.open_heif(multi_image())) == 3


def test_pillow_opens_heif_with_the_services_decoder_only() -> None:
    # pillow-heif (the test encoder) and pi-heif both provide a Pillow plugin under the
    # format name "HEIF"; the one registered must be pi-heif's, and the service never
    # imports the other (it is not installed in production).
    import imagesvc.imaging.render  # noqa: F401  (registers the opener)

    assert Image.OPEN["HEIF"][0].__module__.startswith("pi_heif.")
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not [name for name in names if name.startswith("pillow_heif")], path


def test_a_fresh_process_decodes_heic_once_the_imaging_module_is_imported(tmp_path: Path) -> None:
    """The server's render threads and placeholders need nothing but the import; and the
    HEIF opener must not take `mif1`-branded AVIF files away from Pillow's AVIF plugin."""
    (tmp_path / "photo.heic").write_bytes(photo_8bit())
    avif = bytearray(encode("AVIF", (64, 48), color=BLUE))
    assert avif[8:12] == b"avif"
    avif[8:12] = b"mif1"  # major brand mif1, avif among the compatible ones: valid AVIF
    (tmp_path / "mif1.avif").write_bytes(bytes(avif))
    script = (
        "import sys\n"
        "from imagesvc.imaging import render\n"
        "from imagesvc.imaging.render import Fit, OutputFormat\n"
        "for name in sys.argv[1:]:\n"
        "    data = open(name, 'rb').read()\n"
        "    out = render.render(data, (32, 32), Fit.CONTAIN, OutputFormat.JPEG)\n"
        "    print(name, out.width, out.height, render.placeholder(data).dominant_color)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "photo.heic", "mif1.avif"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[:3] for line in lines] == [["photo.heic", "32", "24"], ["mif1.avif", "32", "24"]]
    assert close_to(hex_color(lines[0][3]), RED)
    assert close_to(hex_color(lines[1][3]), BLUE)


def test_the_installed_distribution_requires_the_decoder_unconditionally() -> None:
    # What `pip install imagesvc` and the Docker image (`pip install .`) get.
    requirements = [Requirement(line) for line in importlib.metadata.requires("imagesvc") or []]
    decoder = [r for r in requirements if r.name.lower().replace("_", "-") == "pi-heif"]
    assert decoder, requirements
    assert all(r.marker is None for r in decoder)  # not behind an extra
    assert not [r for r in requirements if r.name == "pillow-heif" and r.marker is None]


# --- the header probe -------------------------------------------------------------------------


def probe(data: bytes, step: int = 37) -> tuple[str, int, int, int]:
    stream = StreamProbe()
    for start in range(0, len(data), step):
        stream.feed(data[start : start + step])
    info = stream.finish()
    return info.format.content_type, info.width, info.height, info.frames


def test_probe_reads_heic_sizes_as_decoded() -> None:
    assert probe(photo_8bit()) == ("image/heic", 321, 241, 1)  # after the clap crop
    assert probe(photo_10bit()) == ("image/heic", 320, 240, 1)
    assert probe(rotated()) == ("image/heic", 100, 200, 1)  # after irot
    assert probe(multi_image()) == ("image/heic", 128, 96, 3)  # thumbnails do not count
    for data in (photo_8bit(), rotated(), multi_image()):
        with Image.open(io.BytesIO(data)) as image:
            assert (image.width, image.height) == probe(data)[1:3]


def test_probe_counts_grid_images_once() -> None:
    picture = Image.effect_mandelbrot((1100, 700), (-2, -1.2, 1, 1.2), 30).convert("RGB")
    buffer = io.BytesIO()
    pillow_heif.from_pillow(picture).save(buffer, quality=50, tile_size=512)
    data = buffer.getvalue()
    assert data.count(b"hvc1") >= 6  # six tiles
    assert b"grid" in data
    assert probe(data) == ("image/heic", 1100, 700, 1)


def heif_without_hevc_brands() -> bytes:
    data = bytearray(photo_8bit())
    assert data[8:12] == b"heic"
    # ftyp: major brand, minor version, then the compatible brands: leave only mif1/miaf.
    data[8:12] = b"mif1"
    ftyp = int.from_bytes(data[:4], "big")
    data[16:ftyp] = b"".join(b if b != b"heic" else b"miaf" for b in _brands(data[16:ftyp]))
    return bytes(data)


def test_probe_types_heif_without_hevc_brands_as_image_heif() -> None:
    data = heif_without_hevc_brands()
    assert probe(data)[0] == "image/heif"
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (321, 241)


def _brands(data: bytes | bytearray) -> list[bytes]:
    return [bytes(data[i : i + 4]) for i in range(0, len(data), 4)]


def test_probe_limits_the_coded_size_not_the_cropped_one() -> None:
    # A clap box cannot hide what the decoder would allocate.
    stream = StreamProbe()
    stream.feed(claiming(photo_8bit(), 40_000, 40_000))
    assert stream.info is not None
    assert (stream.info.width, stream.info.height) == (321, 241)
    assert stream.info.pixels >= 40_000 * 40_000


def test_probe_refuses_a_meta_box_of_too_many_items() -> None:
    # libheif refuses more than 1,000 items; walking a 4 MiB meta box of tiny entries would
    # otherwise cost the event loop about half a second.
    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(body), kind) + body

    count = MAX_ITEMS + 1
    entries = b"".join(struct.pack(">HB", item, 0) for item in range(1, count + 1))
    ipma = box(b"ipma", b"\x00" * 4 + struct.pack(">I", count) + entries)
    ispe = box(b"ispe", b"\x00" * 4 + struct.pack(">II", 64, 64))
    meta = box(b"meta", b"\x00" * 4 + box(b"iprp", box(b"ipco", ispe) + ipma))
    ftyp = box(b"ftyp", b"heic\x00\x00\x00\x00mif1heic")
    with pytest.raises(NotAnImage, match="too many items"):
        probe(ftyp + meta)


# --- uploads, placeholders and variants through the API --------------------------------------


@pytest.mark.parametrize(
    ("make", "size", "color"),
    [(photo_8bit, (321, 241), RED), (photo_10bit, (320, 240), ORANGE_8)],
    ids=["8-bit", "10-bit"],
)
async def test_heic_upload_placeholder_and_variants(
    client: httpx.AsyncClient,
    make: Callable[[], bytes],
    size: tuple[int, int],
    color: tuple[int, int, int],
) -> None:
    image = await uploaded(client, make())
    assert (image["content_type"], image["width"], image["height"]) == ("image/heic", *size)
    assert image["frames"] == 1
    assert isinstance(image["blurhash"], str)
    assert len(image["blurhash"]) == 28
    assert isinstance(image["dominant_color"], str)
    assert close_to(hex_color(image["dominant_color"]), color)

    default = await variant(client, image["id"], "160x160")
    assert default.headers["content-type"] == "image/jpeg"
    for response, pil_format in [
        (default, "JPEG"),
        (await variant(client, image["id"], "160x160", accept="image/webp,*/*"), "WEBP"),
        (await variant(client, image["id"], "160x160", accept="image/avif,image/webp"), "AVIF"),
    ]:
        picture = decoded(response)
        assert picture.format == pil_format
        assert picture.size == (160, round(160 * size[1] / size[0]))
        rgb = picture.convert("RGB")
        assert rgb.mode == "RGB"
        assert close_to(pixel(rgb, 80, 60), color), pil_format
        exif = picture.getexif()
        assert not exif.get_ifd(0x8825)  # no GPS
        assert 0x010F not in exif  # nor the camera


async def test_a_nameless_heif_downloads_with_its_own_extension(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    from tests.conftest import serving
    from tests.serving.test_downloads import parse_disposition

    heic_image = await uploaded(client, photo_8bit())
    heif_image = await uploaded(client, heif_without_hevc_brands())
    assert heif_image["content_type"] == "image/heif"
    with serving(app, redirect=False):
        for image, extension in ((heic_image, "heic"), (heif_image, "heif")):
            response = await client.get(f"/v1/images/{image['id']}/content?download=1")
            assert response.status_code == 200
            name = f"{image['id']}.{extension}"
            assert parse_disposition(response.headers["content-disposition"]) == (
                "attachment",
                name,
                name,
            )


async def test_orientation_is_applied_exactly_once(client: httpx.AsyncClient) -> None:
    image = await uploaded(client, rotated())
    assert (image["width"], image["height"]) == (100, 200)  # portrait, as displayed
    for fmt in ("jpeg", "webp"):
        picture = decoded(await variant(client, image["id"], "100x100", format=fmt))
        assert picture.size == (50, 100), fmt  # portrait: turned (not 0 or 2 times)
        assert picture.getexif().get(0x0112) is None
        rgb = picture.convert("RGB")
        # Turned clockwise: the stored left (red) is the top, the stored top-left block
        # (green) the top-right corner. Counter-clockwise or twice would put them elsewhere.
        assert close_to(pixel(rgb, 45, 3), GREEN), fmt
        assert close_to(pixel(rgb, 4, 3), RED), fmt
        assert close_to(pixel(rgb, 25, 40), RED), fmt
        assert close_to(pixel(rgb, 25, 75), BLUE), fmt
        assert close_to(pixel(rgb, 4, 96), BLUE), fmt


@pytest.fixture
def pixel_limit(app: FastAPI) -> Iterator[None]:
    """For one test: a pixel limit of two 128x96 images."""
    ingest = app.state.runtime.uploads.ingest
    saved = ingest.limits
    ingest.limits = replace(saved, max_pixels=2 * 128 * 96)
    yield
    ingest.limits = saved


async def test_multi_image_heif_counts_its_images(client: httpx.AsyncClient) -> None:
    image = await uploaded(client, multi_image())
    assert (image["width"], image["height"], image["frames"]) == (128, 96, 3)
    assert close_to(hex_color(str(image["dominant_color"])), GREEN)  # the primary image
    picture = decoded(await variant(client, image["id"], "64x64"))
    assert picture.size == (64, 48)
    assert close_to(pixel(picture, 32, 24), GREEN)


async def test_pixel_limit_counts_every_image_of_a_heif(
    client: httpx.AsyncClient, pixel_limit: None
) -> None:
    single = heic(Image.new("RGB", (128, 96), GREEN))
    assert (await upload(client, single)).status_code == 201  # one image: under the limit
    refused = await upload(client, multi_image())  # three of them: over it
    assert refused.status_code == 413
    assert refused.json()["code"] == "payload_too_large"


async def test_heic_claiming_too_many_pixels_is_413(client: httpx.AsyncClient) -> None:
    response = await upload(client, claiming(photo_8bit(), 20_000, 20_000))
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_truncated_heic_is_never_a_500(client: httpx.AsyncClient) -> None:
    data = photo_8bit()
    # Header complete, pixel data cut short: stored, no placeholder, variants 422.
    cut = data[: mdat_at(data) + 40]
    response = await upload(client, cut)
    assert response.status_code == 201, response.text
    assert response.json()["blurhash"] is None
    assert response.json()["dominant_color"] is None
    rendered = await client.get(f"/v1/images/{response.json()['id']}/variants/32x32")
    assert rendered.status_code == 422
    assert rendered.json()["code"] == "unrenderable_image"
    # Cut inside the header: refused by the probe.
    refused = await upload(client, data[:100])
    assert refused.status_code == 415
    assert refused.json()["code"] == "unsupported_media_type"


async def test_heic_is_never_an_output_format(client: httpx.AsyncClient) -> None:
    image = await uploaded(client, photo_8bit())
    asked = await client.get(f"/v1/images/{image['id']}/variants/32x32", params={"format": "heic"})
    assert asked.status_code == 422
    # Even a client that says it takes HEIC gets a JPEG from format=auto.
    accepted = await variant(client, image["id"], "32x32", accept="image/heic,image/heif")
    assert decoded(accepted).format == "JPEG"


def test_heic_is_not_offered_in_the_openapi_document() -> None:
    document = create_app(Settings()).openapi()
    operation = document["paths"]["/v1/images/{image_id}/variants/{spec}"]["get"]
    (param,) = [p for p in operation["parameters"] if p["name"] == "format"]
    assert "heic" not in str(param["schema"]).lower()


# --- a real server process --------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`imagesvc serve` on the embedded default: the process the issue was about (nothing
    in it but the service's own imports registers a HEIF opener)."""
    state = tmp_path_factory.mktemp("heic-server")
    env = {
        "IMAGESVC_DATABASE_URL": f"sqlite+aiosqlite:///{state / 'imagesvc.db'}",
        "IMAGESVC_STORAGE_LOCAL_ROOT": str(state / "objects"),
        "IMAGESVC_LOG_FORMAT": "console",
    }
    subprocess.run(
        [str(BIN / "imagesvc"), "migrate"],
        env={**_environ(), **env},
        check=True,
        capture_output=True,
        timeout=60,
    )
    key = create_key(env, "heic")
    process, url = start_imagesvc(state, env)
    yield url, key
    process.stop()


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


async def test_a_running_server_decodes_heic(live: tuple[str, str]) -> None:
    url, key = live
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as server:
        created = await server.post(
            "/v1/images", content=rotated(), headers={"Content-Type": "image/heic"}
        )
        assert created.status_code == 201, created.text
        image = created.json()
        assert (image["content_type"], image["width"], image["height"]) == ("image/heic", 100, 200)
        assert image["blurhash"] is not None
        assert image["dominant_color"] is not None
        response = await server.get(f"/v1/images/{image['id']}/variants/100x100")
        picture = decoded(response)
        assert (picture.format, picture.size) == ("JPEG", (50, 100))
        assert close_to(pixel(picture, 45, 3), GREEN)
