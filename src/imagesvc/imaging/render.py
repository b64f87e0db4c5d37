"""Rendering variants and placeholders with Pillow: pure, blocking functions over bytes.

Callers run them in a worker thread (Pillow releases the GIL while decoding, resampling and
encoding). Every output is oriented by its EXIF tag, converted to sRGB, and carries no
metadata but an sRGB colour profile (GPS, camera and EXIF data never leave). Animated
images render their first frame, HEIF files their primary image.

HEIC/HEIF is decoded by pi-heif (libheif + libde265), registered with Pillow when this module
is imported, so every process and thread that renders or makes placeholders can open it.
"""

from __future__ import annotations

import bisect
import functools
import io
import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pi_heif
from PIL import Image, ImageCms, ImageOps

from imagesvc.imaging import blurhash

# Sources are decoded from memory, read whole; above this they are refused (the default
# upload limit is 25 MiB, so this only bites when that limit was raised).
MAX_SOURCE_BYTES = 64 * 1024 * 1024
# Pillow's own plugins first: its AVIF plugin must stay ahead of the HEIF opener, which also
# claims `mif1`-branded files (many AVIFs) but has no AV1 decoder. The HEIF opener converts
# 10/12-bit images to 8 bits per channel and applies irot/imir itself (see _frame).
Image.init()
pi_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Pillow's decompression-bomb guard stays on: configure() sets its limit to the service's
# pixel limit, so a header that lies about its size still cannot make Pillow allocate more.
Image.MAX_IMAGE_PIXELS = 50_000_000

_SRGB = ImageCms.createProfile("sRGB")
SRGB_ICC = ImageCms.ImageCmsProfile(_SRGB).tobytes()
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class Fit(StrEnum):
    CONTAIN = "contain"  # inside the box, proportions kept
    COVER = "cover"  # fills the box exactly, centre-cropped
    FILL = "fill"  # exactly the box, stretched


class OutputFormat(StrEnum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    AVIF = "avif"


CONTENT_TYPES = {
    OutputFormat.JPEG: "image/jpeg",
    OutputFormat.PNG: "image/png",
    OutputFormat.WEBP: "image/webp",
    OutputFormat.AVIF: "image/avif",
}
_SAVE_OPTIONS: dict[OutputFormat, dict[str, object]] = {
    OutputFormat.JPEG: {"format": "JPEG", "quality": 82, "optimize": True, "progressive": True},
    OutputFormat.PNG: {"format": "PNG", "optimize": True},
    OutputFormat.WEBP: {"format": "WEBP", "quality": 80, "method": 4},
    OutputFormat.AVIF: {"format": "AVIF", "quality": 60, "speed": 8},
}


class RenderError(Exception):
    """The stored bytes cannot be rendered (corrupt, or larger than the pixel limit)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    data: bytes
    content_type: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Placeholder:
    blurhash: str
    dominant_color: str  # "#rrggbb"


def configure(max_pixels: int) -> None:
    Image.MAX_IMAGE_PIXELS = max_pixels


def target_size(source: tuple[int, int], box: tuple[int, int], fit: Fit) -> tuple[int, int]:
    """The output size. Variants never upscale: `contain` scales by at most 1; for
    `cover` and `fill` a box larger than the image is first shrunk, keeping its
    proportions, until it fits inside the image (so the crop or stretch keeps its shape)."""
    (sw, sh), (bw, bh) = source, box
    if fit is Fit.CONTAIN:
        scale = min(1.0, bw / sw, bh / sh)
        return max(1, round(sw * scale)), max(1, round(sh * scale))
    shrink = min(1.0, sw / bw, sh / bh)
    return max(1, round(bw * shrink)), max(1, round(bh * shrink))


def render(source: bytes, box: tuple[int, int], fit: Fit, output: OutputFormat) -> Rendered:
    with _decoding(), Image.open(io.BytesIO(source)) as opened:
        image, exif_orientation = _frame(opened)
        oriented = _oriented_size(image) if exif_orientation else image.size
        width, height = target_size(oriented, box, fit)
        # JPEG: let libjpeg decode at 1/2, 1/4 or 1/8 scale, still at least the target size
        # (for cover: at least the crop's scale). Draft sizes are in stored orientation.
        scale = max(width / oriented[0], height / oriented[1])
        need = (math.ceil(oriented[0] * scale), math.ceil(oriented[1] * scale))
        if image.size != oriented:
            need = (need[1], need[0])
        image.draft("RGB", need)
        picture, icc = _prepared(image, exif_orientation)
        if fit is Fit.COVER:
            picture = ImageOps.fit(picture, (width, height), Image.Resampling.LANCZOS)
        else:
            picture = picture.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
        # Colour work after the resize: the same result on a fraction of the pixels.
        picture = _to_srgb(picture, icc)
        if output is OutputFormat.JPEG:
            picture = _on_white(picture)
        buffer = io.BytesIO()
        picture.save(buffer, icc_profile=SRGB_ICC, **_SAVE_OPTIONS[output])  # type: ignore[arg-type]
    return Rendered(buffer.getvalue(), CONTENT_TYPES[output], width, height)


def placeholder(source: bytes | Sequence[bytes]) -> Placeholder:
    """Blurhash (4x3 components) and dominant colour, from a draft decode (JPEG decodes
    at 1/8 scale) shrunk to 32 pixels before anything else is done to it. `source` may be
    the upload's chunks as they arrived: they are read in place, not joined into a copy."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else io.BufferedReader(_Chunks(source))
    with _decoding(), Image.open(fp) as opened:
        image, exif_orientation = _frame(opened)
        image.draft("RGB", (64, 64))
        image.thumbnail((64, 64), Image.Resampling.BOX)  # in place, before any copy
        small, icc = _prepared(image, exif_orientation)
        small.thumbnail((32, 32), Image.Resampling.BILINEAR)
        small = _on_white(_to_srgb(small, icc))
        # 4x3 components need no more than ~20 pixels a side.
        tiny = small.resize(
            (20, max(1, round(20 * small.height / small.width))), Image.Resampling.BOX
        )
        hashed = blurhash.encode(tiny.tobytes(), tiny.width, tiny.height, 4, 3)
        return Placeholder(blurhash=hashed, dominant_color=_dominant(small))


class _Chunks(io.RawIOBase):
    """A seekable read-only file over a list of byte strings."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = list(chunks)
        self._starts = list(itertools.accumulate((len(c) for c in self._chunks), initial=0))
        self._size = self._starts.pop()
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        done = 0
        while done < len(target) and self._position < self._size:
            index = bisect.bisect_right(self._starts, self._position) - 1
            skip = self._position - self._starts[index]
            piece = memoryview(self._chunks[index])[skip : skip + len(target) - done]
            target[done : done + len(piece)] = piece
            done += len(piece)
            self._position += len(piece)
        return done


@contextmanager
def _decoding() -> Iterator[None]:
    """Whatever a decoder raises on bytes that passed the header probe (libavif raises
    RuntimeError, zlib errors surface as OSError or ValueError) means the same thing:
    these bytes cannot be rendered. Never a 500."""
    try:
        yield
    except RenderError:
        raise
    except Image.DecompressionBombError as exc:
        raise RenderError("the image is larger than the pixel limit") from exc
    except Exception as exc:
        raise RenderError("the stored image cannot be decoded") from exc


def _frame(image: Image.Image) -> tuple[Image.Image, bool]:
    """The picture to render, and whether its EXIF orientation is still to be applied.

    Animated images render their first frame. A HEIF opens on its primary image, which need
    not be its first, and stays there. Its orientation is its irot/imir boxes, which libheif
    applies while decoding; the EXIF orientation of a HEIF only repeats them (an iPhone
    writes both), so applying it too would turn the picture twice (pi-heif also resets the
    tag to 1). pi-heif decodes a multi-image file's frame again on every load(), which fails
    once the picture was shrunk in place: such a file is decoded once, here, and detached.
    """
    if image.format != "HEIF":
        image.seek(0)
        return image, True
    if getattr(image, "n_frames", 1) > 1:
        image.load()
        return image.copy(), False
    return image, False


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    if image.format == "PNG":
        # getexif() on a PNG decodes the whole image to look for a trailing eXIf chunk;
        # an eXIf chunk before the pixels is in `info` already (and transposing after the
        # decode still applies a trailing one).
        raw = image.info.get("exif")
        exif = Image.Exif()
        if raw:
            exif.load(raw)
    else:
        exif = image.getexif()
    orientation = exif.get(0x0112, 1)
    return (image.height, image.width) if orientation in _TRANSPOSED else image.size


def _prepared(image: Image.Image, exif_orientation: bool) -> tuple[Image.Image, bytes | None]:
    """Decoded, oriented, in RGB or RGBA, with no metadata attached; and the source's ICC
    profile, for `_to_srgb` once the picture is small."""
    image.load()
    if exif_orientation:
        ImageOps.exif_transpose(image, in_place=True)  # no copy of a full-size image
    icc = image.info.get("icc_profile")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    mode = "RGBA" if has_alpha else "RGB"
    picture = image if image.mode == mode else image.convert(mode)
    picture.info = {}  # nothing of the source's metadata travels on
    return picture, icc if isinstance(icc, bytes) else None


def _on_white(picture: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite onto white, as browsers show transparent images."""
    if picture.mode != "RGBA":
        return picture
    backdrop = Image.new("RGBA", picture.size, (255, 255, 255, 255))
    return Image.alpha_composite(backdrop, picture).convert("RGB")


def _to_srgb(picture: Image.Image, icc: bytes | None) -> Image.Image:
    profile = _source_profile(icc) if icc else None
    if profile is None:
        return picture  # no profile, an sRGB one, or a broken one: already sRGB
    try:
        converted = ImageCms.profileToProfile(picture, profile, _SRGB, outputMode=picture.mode)
    except (ImageCms.PyCMSError, OSError):
        return picture
    return converted or picture


@functools.lru_cache(maxsize=64)
def _source_profile(icc: bytes) -> ImageCms.ImageCmsProfile | None:
    """The profile to convert from, or None when there is nothing to convert."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile)
    except (ImageCms.PyCMSError, OSError):
        return None
    return None if "srgb" in description.lower() else profile


def _dominant(image: Image.Image) -> str:
    """The mean colour of the most common of 512 colour buckets over a 16x16 sample (median
    cut quantizing cost as much as the whole draft decode; this, a few hundred µs)."""
    pixels = image.resize((16, 16), Image.Resampling.BOX).tobytes()  # packed RGB
    buckets: dict[int, list[tuple[int, int, int]]] = {}
    for offset in range(0, len(pixels), 3):
        red, green, blue = pixels[offset], pixels[offset + 1], pixels[offset + 2]
        buckets.setdefault((red >> 5) << 6 | (green >> 5) << 3 | blue >> 5, []).append(
            (red, green, blue)
        )
    members = max(buckets.values(), key=len)
    mean = [round(sum(channel) / len(members)) for channel in zip(*members, strict=True)]
    return "#" + "".join(f"{value:02x}" for value in mean)
