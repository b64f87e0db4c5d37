"""Unit tests of the streaming header probe: pure functions over bytes, no services."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest

from imagesvc.imaging.probe import NotAnImage, StreamProbe
from tests.samples import HTML, PDF, SVG, encode, png_claiming


def probe(data: bytes, step: int) -> tuple[str, int, int, int]:
    stream = StreamProbe()
    for start in range(0, len(data), step):
        stream.feed(data[start : start + step])
    info = stream.finish()
    return info.format.content_type, info.width, info.height, info.frames


FORMATS: list[tuple[str, dict[str, Any], str]] = [
    ("JPEG", {}, "image/jpeg"),
    ("JPEG", {"progressive": True}, "image/jpeg"),
    ("PNG", {}, "image/png"),
    ("GIF", {}, "image/gif"),
    ("WEBP", {}, "image/webp"),
    ("WEBP", {"lossless": True}, "image/webp"),
    ("AVIF", {}, "image/avif"),
]


@pytest.mark.parametrize(("fmt", "options", "content_type"), FORMATS)
@pytest.mark.parametrize("step", [1, 3, 64, 1 << 20])
def test_still_images_any_chunking(
    fmt: str, options: dict[str, Any], content_type: str, step: int
) -> None:
    data = encode(fmt, (123, 45), **options)
    assert probe(data, step) == (content_type, 123, 45, 1)


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("GIF", "image/gif"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("AVIF", "image/avif")],
)
@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_animated_frame_counts(fmt: str, content_type: str, step: int) -> None:
    data = encode(fmt, (16, 9), frames=5)
    assert probe(data, step) == (content_type, 16, 9, 5)


def test_jpeg_with_large_exif_and_icc_segments() -> None:
    import io

    from PIL import Image

    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: a near-maximal APP1 segment
    buffer = io.BytesIO()
    Image.new("RGB", (800, 600)).save(
        buffer, "JPEG", exif=exif.tobytes(), icc_profile=os.urandom(200_000)
    )
    assert probe(buffer.getvalue(), 4096) == ("image/jpeg", 800, 600, 1)


def test_dimensions_are_known_before_the_pixel_data() -> None:
    data = encode("PNG", (500, 400))
    stream = StreamProbe()
    stream.feed(data[:40])
    assert stream.info is not None
    assert (stream.info.width, stream.info.height) == (500, 400)


def test_claimed_size_is_read_without_decoding() -> None:
    assert probe(png_claiming(100_000, 100_000), 16)[1:3] == (100_000, 100_000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        SVG,
        HTML,
        PDF,
        os.urandom(1000),
        b"GIF89a" + b"\x00" * 7,  # screen descriptor, then nothing: no frame
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I4s", 13, b"IHDR") + b"\x00" * 17,  # 0x0
        b"RIFF\x10\x00\x00\x00WEBPVP8 \x04\x00\x00\x00\x00\x00\x00\x00" + b"\x00" * 16,
        b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isommp41" + b"\x00" * 32,  # an MP4
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 32,  # no meta box
    ],
)
def test_not_images(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        probe(data, 5)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "AVIF"])
def test_truncated_headers_are_refused(fmt: str) -> None:
    data = encode(fmt, (64, 64))
    with pytest.raises(NotAnImage):
        probe(data[:20], 4)


def test_huge_header_box_is_refused_not_buffered() -> None:
    # An ISOBMFF `meta` box claiming 1 GiB: refused at once, nothing buffered.
    data = b"\x00\x00\x00\x14ftypavif\x00\x00\x00\x00avif" + struct.pack(">I4s", 1 << 30, b"meta")
    with pytest.raises(NotAnImage):
        probe(data + b"\x00" * 64, 64)


def test_tiny_valid_gif_is_accepted() -> None:
    # 29 bytes: shorter than any fixed sniff window would allow.
    data = bytes.fromhex("4749463839610100010000ff002c00000000010001000002024401003b")
    assert probe(data, 3) == ("image/gif", 1, 1, 1)


def test_gif_frames_larger_than_the_screen_count_at_their_size() -> None:
    # A 1x1 logical screen with an 8000x8000 frame decodes as 8000x8000.
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 8000, 8000, 0) + b"\x02\x02\x44\x01\x00"
    assert probe(screen + frame + b"\x3b", 5)[1:] == (8000, 8000, 1)


def test_avif_sequence_limited_at_its_track_size() -> None:
    # Pillow writes tkhd at the real size; patch it larger than the still's ispe.
    data = bytearray(encode("AVIF", (37, 23), frames=4))
    at = data.find(b"tkhd")
    version = data[at + 4]
    offset = at + 4 + (88 if version == 1 else 76)
    data[offset : offset + 8] = struct.pack(">II", 8000 << 16, 8000 << 16)
    assert probe(bytes(data), 100) == ("image/avif", 8000, 8000, 4)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8" + b"\xff" * (4 * 1024 * 1024),  # JPEG fill bytes, forever
        b"GIF89a"
        + struct.pack("<HHBBB", 10, 10, 0, 0, 0)
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 10, 10, 0)
        + b"\x02"
        + b"\x01\x00" * (2 * 1024 * 1024),  # one-byte sub-blocks
    ],
)
def test_fragmented_files_are_refused_quickly(data: bytes) -> None:
    # Refused by the step budget, not after walking megabytes one byte at a time.
    with pytest.raises(NotAnImage, match="fragmented"):
        probe(data, 65536)
