"""Type, dimensions and frame count of an image, read from its bytes as they stream past.

`StreamProbe` is fed the upload chunk by chunk. It recognises JPEG, PNG (APNG), GIF, WebP,
AVIF and HEIC/HEIF by their magic bytes, never by a declared content type, and reads width,
height and frame count from the container headers without decoding a single pixel. Formats
whose frame count is spread through the file (GIF, animated WebP) are counted as the bytes go
by; nothing but small headers is ever buffered, whatever the file size.

Each format is a sans-IO generator: it yields `_Read(n)` to receive exactly n bytes or
`_Skip(n)` to let n bytes pass unbuffered, and returns when it knows all it needs.
"""

from __future__ import annotations

import struct
from collections.abc import Generator
from dataclasses import dataclass

from imagesvc.imaging.formats import (
    AVIF,
    FORMATS,
    GIF,
    HEIC,
    HEIF,
    JPEG,
    PNG,
    WEBP,
    Format,
    ImageInfo,
    NotAnImage,
)
from imagesvc.imaging.isobmff import HEVC_ITEMS, meta_items, track_facts

__all__ = [
    "AVIF",
    "FORMATS",
    "GIF",
    "HEIC",
    "HEIF",
    "JPEG",
    "PNG",
    "WEBP",
    "Format",
    "ImageInfo",
    "NotAnImage",
    "StreamProbe",
]

# A single header structure larger than this is refused: real headers are far smaller, and
# the bound keeps a hostile file from making us buffer it.
MAX_HEADER_READ = 4 * 1024 * 1024
# Bytes needed to tell the formats apart (ISOBMFF then reads the rest of its ftyp box).
SNIFF_BYTES = 12
# Parser steps allowed: a base plus one per 16 bytes. Real files need far fewer; a hostile
# one built of 1-byte GIF sub-blocks or JPEG fill bytes would otherwise cost seconds of CPU
# on the event loop for a few megabytes.
STEP_BASE = 50_000
BYTES_PER_STEP = 16


NOT_SUPPORTED = "the uploaded bytes are not a JPEG, PNG, GIF, WebP, AVIF or HEIC image"
# ftyp brands. Major brands as the decoders accept them: Pillow's AVIF plugin takes avif,
# avis, mif1 and msf1; pi-heif takes the HEVC brands, mif1 and msf1.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})
_SEQUENCE_BRANDS = frozenset({b"avis", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"msf1"})


@dataclass(frozen=True, slots=True)
class _Read:
    n: int


@dataclass(frozen=True, slots=True)
class _Skip:
    n: int


_Request = _Read | _Skip
_Parser = Generator[_Request, bytes | None, None]


class StreamProbe:
    def __init__(self) -> None:
        self.format: Format | None = None
        self.width = 0
        self.height = 0
        self.frames = 0
        self.frame_pixels = 0
        # True once width/height are known; frames may still grow (GIF, animated WebP).
        self.dimensions_known = False
        self._parser: _Parser | None = self._detect()
        self._request: _Request | None = next(self._parser)
        self._buffer = bytearray()
        self._bytes_seen = 0
        self._steps = 0

    @property
    def info(self) -> ImageInfo | None:
        if self.format is None or not self.dimensions_known:
            return None
        return ImageInfo(
            self.format, self.width, self.height, max(self.frames, 1), self.frame_pixels
        )

    def feed(self, data: bytes) -> None:
        self._bytes_seen += len(data)
        if self._parser is None:
            return
        self._buffer += data
        self._advance()

    def finish(self) -> ImageInfo:
        """Call at the end of the stream: the final facts, or NotAnImage."""
        info = self.info
        if info is None or (self._parser is not None and not self._may_end_early()):
            if self._bytes_seen < SNIFF_BYTES or self.format is None:
                raise NotAnImage(NOT_SUPPORTED)
            raise NotAnImage(f"the {self.format.name} image is truncated or malformed")
        return info

    def _may_end_early(self) -> bool:
        # Formats whose frames are counted as they pass may end without a trailer: a
        # truncated tail is the decoder's problem once the size and a frame are known.
        return self.dimensions_known and self.frames >= 1 and self.format in _COUNTED

    def _advance(self) -> None:
        pos = 0
        buffer = self._buffer
        while self._parser is not None and self._request is not None:
            self._steps += 1
            if self._steps > STEP_BASE + self._bytes_seen // BYTES_PER_STEP:
                raise NotAnImage("the image is too fragmented to inspect")
            request = self._request
            if isinstance(request, _Skip):
                take = min(request.n, len(buffer) - pos)
                pos += take
                if take < request.n:
                    self._request = _Skip(request.n - take)
                    break
                value: bytes | None = None
            else:
                if len(buffer) - pos < request.n:
                    break
                value = bytes(buffer[pos : pos + request.n])
                pos += request.n
            try:
                self._request = self._parser.send(value)
            except StopIteration:
                self._parser = None
                self._request = None
        if self._parser is None:
            self._buffer = bytearray()
        else:
            del buffer[:pos]

    # --- detection --------------------------------------------------------------------------

    def _detect(self) -> _Parser:
        head = yield _Read(SNIFF_BYTES)
        assert head is not None
        if head.startswith(b"\xff\xd8\xff"):
            self.format = JPEG
            yield from self._jpeg(head)
        elif head.startswith(b"\x89PNG\r\n\x1a\n"):
            self.format = PNG
            yield from self._png(head)
        elif head[:6] in (b"GIF87a", b"GIF89a"):
            self.format = GIF
            yield from self._gif(head)
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            self.format = WEBP
            yield from self._webp(head)
        elif head[4:8] == b"ftyp":
            # Major brand at 8..12, compatible brands after it: read the box (capped).
            box = min(struct.unpack(">I", head[:4])[0], 64)
            if box > SNIFF_BYTES:
                rest = yield _Read(box - SNIFF_BYTES)
                assert rest is not None
                head += rest
            self.format = self._isobmff_format(head)
            yield from self._isobmff(head)
        else:
            raise NotAnImage(NOT_SUPPORTED)

    def _isobmff_format(self, head: bytes) -> Format:
        major = head[8:12]
        brands = {major} | {head[i : i + 4] for i in range(16, len(head) - 3, 4)}
        if brands & _AVIF_BRANDS:
            return AVIF
        # HEIF: only files that pi-heif opens (it looks at the major brand alone).
        if major in _HEVC_BRANDS or (major in _HEIF_BRANDS and brands & _HEVC_BRANDS):
            return HEIC
        if major in _HEIF_BRANDS:
            return HEIF
        raise NotAnImage(NOT_SUPPORTED)

    def _set_dimensions(self, width: int, height: int, frames: int = 1) -> None:
        if width <= 0 or height <= 0:
            assert self.format is not None
            raise NotAnImage(f"the {self.format.name} header declares an empty image")
        self.width, self.height, self.frames = width, height, frames
        self.dimensions_known = True

    # --- JPEG -------------------------------------------------------------------------------

    def _jpeg(self, head: bytes) -> _Parser:
        # Walk the marker segments after SOI (FFD8) until a start-of-frame gives the size.
        cursor = _Cursor(head[2:])
        while True:
            if (yield from cursor.read(1)) != b"\xff":
                raise NotAnImage("the jpeg image is malformed")
            marker = (yield from cursor.read(1))[0]
            while marker == 0xFF:  # fill bytes
                marker = (yield from cursor.read(1))[0]
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
                continue
            if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame
                raise NotAnImage("the jpeg image has no frame header")
            length = struct.unpack(">H", (yield from cursor.read(2)))[0]
            if length < 2:
                raise NotAnImage("the jpeg image is malformed")
            if marker in _JPEG_SOF:
                segment = yield from cursor.read(length - 2)
                if len(segment) < 5:
                    raise NotAnImage("the jpeg image is malformed")
                height, width = struct.unpack(">HH", segment[1:5])
                self._set_dimensions(width, height)
                return
            yield from cursor.skip(length - 2)

    # --- PNG / APNG -------------------------------------------------------------------------

    def _png(self, head: bytes) -> _Parser:
        cursor = _Cursor(head[8:])
        length, kind = struct.unpack(">I4s", (yield from cursor.read(8)))
        if kind != b"IHDR" or length != 13:
            raise NotAnImage("the png image is malformed")
        width, height = struct.unpack(">II", (yield from cursor.read(8)))
        if width > 2**31 - 1 or height > 2**31 - 1:
            raise NotAnImage("the png header declares an impossible size")
        self._set_dimensions(width, height)
        yield from cursor.skip(13 - 8 + 4)  # rest of IHDR + CRC
        # Frames: an APNG announces its frame count in acTL, which must precede IDAT.
        while True:
            length, kind = struct.unpack(">I4s", (yield from cursor.read(8)))
            if kind == b"acTL" and length == 8:
                self.frames = max(1, struct.unpack(">I", (yield from cursor.read(4)))[0])
                return
            if kind in (b"IDAT", b"IEND"):
                return
            yield from cursor.skip(length + 4)  # data + CRC

    # --- GIF --------------------------------------------------------------------------------

    def _gif(self, head: bytes) -> _Parser:
        cursor = _Cursor(head[6:])
        width, height, packed = struct.unpack("<HHBxx", (yield from cursor.read(7)))
        self._set_dimensions(width, height, frames=0)
        if packed & 0x80:  # global colour table
            yield from cursor.skip(3 * (2 ** ((packed & 0x07) + 1)))
        while True:
            introducer = (yield from cursor.read(1))[0]
            if introducer == 0x21:  # extension: label + data sub-blocks
                yield from cursor.skip(1)
                yield from _gif_sub_blocks(cursor)
            elif introducer == 0x2C:  # image descriptor: one frame
                descriptor = yield from cursor.read(9)
                self.frames += 1
                # Decoders grow the canvas to hold every frame: a 1x1 screen with an
                # 8000x8000 frame decodes as 8000x8000, so that is the size to limit.
                left, top, width, height = struct.unpack("<HHHH", descriptor[:8])
                self.width = max(self.width, left + width)
                self.height = max(self.height, top + height)
                if descriptor[8] & 0x80:  # local colour table
                    yield from cursor.skip(3 * (2 ** ((descriptor[8] & 0x07) + 1)))
                yield from cursor.skip(1)  # LZW minimum code size
                yield from _gif_sub_blocks(cursor)
            else:
                break  # trailer (0x3B) or trailing garbage: the frames counted so far stand
        if self.frames == 0:
            raise NotAnImage("the gif image has no frames")

    # --- WebP -------------------------------------------------------------------------------

    def _webp(self, head: bytes) -> _Parser:
        riff_size = struct.unpack("<I", head[4:8])[0]
        remaining = riff_size - 4  # after "WEBP"
        cursor = _Cursor(head[12:])
        animated = False
        while remaining >= 8:
            kind, size = struct.unpack("<4sI", (yield from cursor.read(8)))
            padded = size + (size & 1)
            remaining -= 8 + padded
            if kind in (b"VP8 ", b"VP8L", b"VP8X") and not self.dimensions_known:
                chunk = yield from cursor.read(min(size, 10))
                padded -= len(chunk)
                width, height, animated = _webp_dimensions(kind, chunk)
                self._set_dimensions(width, height, frames=0 if animated else 1)
                if not animated:
                    return
            elif kind == b"ANMF":
                self.frames += 1
            yield from cursor.skip(padded)
        if not self.dimensions_known:
            raise NotAnImage("the webp image has no image data")
        if animated and self.frames == 0:
            raise NotAnImage("the animated webp image has no frames")

    # --- AVIF / HEIC / HEIF (ISOBMFF) -------------------------------------------------------

    def _isobmff(self, head: bytes) -> _Parser:
        # Walk top-level boxes: `meta` holds the items (the primary image's size, the other
        # top-level images), `moov` (image sequences only) the frame count; `mdat` and the
        # rest pass unbuffered.
        cursor = _Cursor(head)
        sequence = head[8:12] in _SEQUENCE_BRANDS
        have_track = False
        while True:
            size, kind = struct.unpack(">I4s", (yield from cursor.read(8)))
            header = 8
            if size == 1:
                size = struct.unpack(">Q", (yield from cursor.read(8)))[0]
                header = 16
            elif size == 0:
                break  # the box runs to the end of the file: nothing more to walk
            body_size = size - header
            if body_size < 0:
                raise NotAnImage("the image container is malformed")
            if kind not in (b"meta", b"moov"):
                yield from cursor.skip(body_size)
                continue
            if body_size > MAX_HEADER_READ:
                raise NotAnImage("the image header is too large")
            body = yield from cursor.read(body_size)
            if kind == b"meta":
                # libheif applies a HEIF's crop and rotation while decoding, so its size is
                # the one after them; libavif leaves them to Pillow, which reports the coded
                # size and hands the rotation over as an EXIF orientation (as for a JPEG).
                items = meta_items(body[4:], transformed=self.format is not AVIF)
                if items.size:
                    if self.format is not AVIF and items.primary_type not in HEVC_ITEMS:
                        raise NotAnImage("the heif image is not HEVC-coded: it cannot be decoded")
                    self._set_dimensions(*items.size, frames=max(self.frames, items.images))
                    self.frame_pixels = max(self.frame_pixels, items.coded_pixels)
            else:
                frames, track_size = track_facts(body)
                self.frames = max(frames, self.frames, 1)
                have_track = True
                # Sequences decode at the track's size: limit whichever is larger.
                if track_size and track_size[0] * track_size[1] > self.width * self.height:
                    self._set_dimensions(*track_size, frames=self.frames)
            if self.dimensions_known and (have_track or not sequence):
                return
        if not self.dimensions_known:
            raise NotAnImage("the image container has no image size")


class _Cursor:
    """Reads from replayed bytes first, then from the stream, as sub-generators."""

    def __init__(self, replay: bytes) -> None:
        self.pending = bytearray(replay)

    def read(self, n: int) -> Generator[_Request, bytes | None, bytes]:
        if n > MAX_HEADER_READ:
            raise NotAnImage("the image header is too large")
        if len(self.pending) >= n:
            out = bytes(self.pending[:n])
            del self.pending[:n]
            return out
        more = yield _Read(n - len(self.pending))
        assert more is not None
        out = bytes(self.pending) + more
        self.pending.clear()
        return out

    def skip(self, n: int) -> Generator[_Request, bytes | None, None]:
        if len(self.pending) >= n:
            del self.pending[:n]
            return
        remaining = n - len(self.pending)
        self.pending.clear()
        yield _Skip(remaining)


def _gif_sub_blocks(cursor: _Cursor) -> Generator[_Request, bytes | None, None]:
    while True:
        size = (yield from cursor.read(1))[0]
        if size == 0:
            return
        yield from cursor.skip(size)


_COUNTED = (GIF, WEBP, AVIF, HEIC, HEIF)
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def _webp_dimensions(kind: bytes, chunk: bytes) -> tuple[int, int, bool]:
    if kind == b"VP8 ":
        if len(chunk) < 10 or chunk[3:6] != b"\x9d\x01\x2a":
            raise NotAnImage("the webp image is malformed")
        width, height = struct.unpack("<HH", chunk[6:10])
        return width & 0x3FFF, height & 0x3FFF, False
    if kind == b"VP8L":
        if len(chunk) < 5 or chunk[0] != 0x2F:
            raise NotAnImage("the webp image is malformed")
        bits = int.from_bytes(chunk[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, False
    if len(chunk) < 10:
        raise NotAnImage("the webp image is malformed")
    flags = chunk[0]
    width = int.from_bytes(chunk[4:7], "little") + 1
    height = int.from_bytes(chunk[7:10], "little") + 1
    return width, height, bool(flags & 0x02)
