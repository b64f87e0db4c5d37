"""Test images made with Pillow, and bytes that only pretend to be images."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from PIL import Image


def encode(
    fmt: str,
    size: tuple[int, int] = (64, 48),
    *,
    color: Any = (200, 60, 20),
    frames: int = 1,
    **options: Any,
) -> bytes:
    buffer = io.BytesIO()
    first = Image.new("RGB", size, color)
    if frames > 1:
        rest = [Image.new("RGB", size, (i * 37 % 255, 90, 30)) for i in range(1, frames)]
        first.save(buffer, fmt, save_all=True, append_images=rest, **options)
    else:
        first.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg(size: tuple[int, int] = (64, 48), color: Any = (200, 60, 20)) -> bytes:
    return encode("JPEG", size, color=color)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a size (the pixel data is a token: never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>"
)
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
