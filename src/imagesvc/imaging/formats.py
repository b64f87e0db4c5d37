"""The image formats the service accepts, and what the header probe reports of one."""

from __future__ import annotations

from dataclasses import dataclass


class NotAnImage(Exception):
    """The bytes are not a supported image (message is safe to show to the client)."""


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    content_type: str


JPEG = Format("jpeg", "image/jpeg")
PNG = Format("png", "image/png")
GIF = Format("gif", "image/gif")
WEBP = Format("webp", "image/webp")
AVIF = Format("avif", "image/avif")
HEIC = Format("heic", "image/heic")  # HEVC-coded HEIF: every iPhone photo
HEIF = Format("heif", "image/heif")  # a HEIF that does not claim HEVC (`mif1` brands only)

FORMATS = (JPEG, PNG, GIF, WEBP, AVIF, HEIC, HEIF)


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
