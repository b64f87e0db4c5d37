"""The image formats the service accepts, and what the header probe reports of one."""

from __future__ import annotations

from dataclasses import dataclass


class NotAnImage(Exception):
    """The bytes are not a supported image (message is safe to show to the client)."""


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    content_type: str
    extension: str  # of file names the service makes up (downloads, variant keys)


JPEG = Format("jpeg", "image/jpeg", "jpg")
PNG = Format("png", "image/png", "png")
GIF = Format("gif", "image/gif", "gif")
WEBP = Format("webp", "image/webp", "webp")
AVIF = Format("avif", "image/avif", "avif")
HEIC = Format("heic", "image/heic", "heic")  # HEVC-coded HEIF: every iPhone photo
HEIF = Format("heif", "image/heif", "heif")  # a HEIF not claiming HEVC (`mif1` brands only)

FORMATS = (JPEG, PNG, GIF, WEBP, AVIF, HEIC, HEIF)
_EXTENSIONS = {f.content_type: f.extension for f in FORMATS}


def extension_for(content_type: str) -> str:
    return _EXTENSIONS.get(content_type, "bin")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: Format
    width: int
    height: int
    frames: int
    # Pixels a decoder may allocate per frame when that is more than width x height: a
    # HEIF's largest coded image, before its crop (`clap`) shrinks it to the output size.
    frame_pixels: int = 0

    @property
    def pixels(self) -> int:
        """What the pixel limit counts: width x height (or more, see frame_pixels) x frames."""
        return max(self.width * self.height, self.frame_pixels) * self.frames
