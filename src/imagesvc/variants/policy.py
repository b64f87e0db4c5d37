"""Which rendition a request asks for: the box (clamped, allow-listed) and the format
(`auto` negotiated from `Accept`)."""

from __future__ import annotations

from dataclasses import dataclass

from imagesvc.errors import InvalidParameter
from imagesvc.imaging.render import OutputFormat

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class VariantPolicy:
    max_dimension: int
    allowed_sizes: frozenset[tuple[int, int]] | None = None

    def box(self, width: int, height: int) -> tuple[int, int]:
        """The box to render: clamped to the maximum (proportions kept), then checked
        against the allow-list."""
        if width < 1 or height < 1:
            raise InvalidParameter("spec: width and height must be at least 1")
        scale = min(1.0, self.max_dimension / max(width, height))
        box = (max(1, round(width * scale)), max(1, round(height * scale)))
        if self.allowed_sizes is not None and box not in self.allowed_sizes:
            allowed = ", ".join(f"{w}x{h}" for w, h in sorted(self.allowed_sizes))
            raise InvalidParameter(f"spec: {box[0]}x{box[1]} is not an allowed size ({allowed})")
        return box


# Sources whose `auto` rendition is a JPEG (HEIC is never offered as output: only Safari
# shows it).
_PHOTO_TYPES = frozenset({"image/jpeg", "image/heic", "image/heif"})


def choose_format(requested: str, accept: str | None, source_type: str) -> OutputFormat:
    """`auto`: AVIF if the client says it takes it, then WebP, then the source's family
    (JPEG for photos, PNG for everything that may carry transparency). Wildcards do not
    count as saying so: `*/*` gets the safe choice."""
    if requested != AUTO:
        return OutputFormat(requested)
    accepted = _accepted(accept)
    if "image/avif" in accepted:
        return OutputFormat.AVIF
    if "image/webp" in accepted:
        return OutputFormat.WEBP
    return OutputFormat.JPEG if source_type in _PHOTO_TYPES else OutputFormat.PNG


def _accepted(accept: str | None) -> set[str]:
    types = set()
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        refused = any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
        if media and not refused:
            types.add(media.lower())
    return types
