"""JSON shapes of signed links (`POST /v1/images/{id}/links`, SPEC §9)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from imagesvc.imaging.render import Fit

SPEC_PATTERN = r"^[0-9]{1,5}x[0-9]{1,5}$"
VariantSpec = Annotated[str, Field(pattern=SPEC_PATTERN, examples=["256x256"])]
VariantFormat = Literal["auto", "jpeg", "png", "webp", "avif"]


def parse_spec(spec: str) -> tuple[int, int]:
    width, _, height = spec.partition("x")
    return int(width), int(height)


class LinkRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"variant": "256x256", "fit": "cover"}, {}]},
    )

    variant: VariantSpec | None = Field(
        default=None, description="`{w}x{h}` for a rendition; null or absent: the original."
    )
    fit: Fit | None = Field(default=None, description="A rendition's fit (default `contain`).")
    format: VariantFormat | None = Field(
        default=None, description="A rendition's format (default `auto`, from `Accept`)."
    )
    expires_in: int = Field(
        default=3600,
        ge=1,
        description="Seconds the link works; at most `IMAGESVC_LINK_MAX_TTL` (7 days). When "
        "absent: 3600, or `IMAGESVC_LINK_MAX_TTL` if that is shorter. The "
        "expiry is rounded up to `IMAGESVC_LINK_WINDOW` (300 s), so asking again within a "
        "window gives the same URL.",
    )
    download: bool = Field(
        default=False, description="The link answers with `Content-Disposition: attachment`."
    )


class LinkOut(BaseModel):
    url: str = Field(
        description="Relative to the API's origin; works without a key until `expires_at`, "
        "for exactly this path and query (any change: 403)."
    )
    expires_at: datetime

    @field_serializer("expires_at")
    def _iso(self, value: datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")

    @classmethod
    def at(cls, url: str, expires_at: int) -> LinkOut:
        return cls(url=url, expires_at=datetime.fromtimestamp(expires_at, UTC))
