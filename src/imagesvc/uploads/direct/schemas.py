"""The JSON shapes of direct uploads (SPEC §11)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from imagesvc.images.models import FILENAME_MAX, Visibility
from imagesvc.uploads.direct.service import ACCEPTED_TYPES, DirectUpload

_REQUEST_EXAMPLE: dict[str, Any] = {
    "byte_size": 482113,
    "content_type": "image/jpeg",
    "filename": "holiday.jpg",
    "visibility": "private",
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
}


class DirectUploadIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_REQUEST_EXAMPLE]})

    byte_size: int = Field(
        ge=1, description="Exact size of the bytes to upload; the URL accepts only this size."
    )
    content_type: str = Field(
        default="application/octet-stream",
        description="A hint, bound into the URL (send it as `Content-Type`): "
        + ", ".join(f"`{t}`" for t in ACCEPTED_TYPES)
        + ". The image's type comes from the bytes.",
    )
    filename: str | None = Field(
        default=None, max_length=4 * FILENAME_MAX, description="Metadata only; sanitised."
    )
    visibility: Visibility | None = None
    sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-fA-F]{64}$",
        description="Hex SHA-256 of the bytes; `complete` refuses others (422).",
    )

    @field_validator("content_type")
    @classmethod
    def _accepted_type(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ACCEPTED_TYPES:
            raise ValueError("must be one of " + ", ".join(ACCEPTED_TYPES))
        return value


class UploadTarget(BaseModel):
    method: str = Field(description="Always `PUT`.")
    url: str = Field(description="Where to send the bytes; use it exactly as given.")
    headers: dict[str, str] = Field(
        description="Send exactly these headers (browsers set `Content-Length` themselves)."
    )
    expires_at: datetime = Field(description="The URL and `complete` work until then.")

    @field_serializer("expires_at")
    def _iso_millis(self, value: datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class DirectUploadOut(BaseModel):
    id: str = Field(description="The id the image will have once completed.")
    upload: UploadTarget

    @classmethod
    def of(cls, direct: DirectUpload) -> DirectUploadOut:
        return cls(
            id=direct.image_id,
            upload=UploadTarget(
                method="PUT", url=direct.url, headers=direct.headers, expires_at=direct.expires_at
            ),
        )
