"""The API's JSON shapes (SPEC §1-§2)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path, Response
from pydantic import BaseModel, ConfigDict, Field, field_serializer

from imagesvc.images.models import FILENAME_MAX, Image, Visibility

# Longer ids are refused (422) before anything is looked up; ours are 30 characters.
IMAGE_ID_MAX_LENGTH = 64
ImageId = Annotated[
    str, Path(max_length=IMAGE_ID_MAX_LENGTH, description="The image id (`img_...`).")
]

_IMAGE_EXAMPLE: dict[str, Any] = {
    "id": "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S",
    "status": "ready",
    "content_type": "image/jpeg",
    "byte_size": 482113,
    "width": 1600,
    "height": 1200,
    "frames": 1,
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "filename": "holiday.jpg",
    "visibility": "private",
    "blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj",
    "dominant_color": "#7a5c3e",
    "created_at": "2026-11-27T09:12:44.123Z",
    "links": {
        "self": "/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S",
        "content": "/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S/content",
    },
}


def _absent(value: object) -> bool:
    return value is None


class ImageLinks(BaseModel):
    self_: str = Field(alias="self", serialization_alias="self", description="This resource.")
    content: str = Field(description="The image bytes (302 to a signed URL, or the bytes).")
    # Only with `?links=WxH` (SPEC §9): links that work without a key, for `<img>` tags.
    signed_content: str | None = Field(
        default=None,
        exclude_if=_absent,
        description="With `?links=`: a signed link to the bytes (no key needed; expires).",
    )
    signed_variant: str | None = Field(
        default=None,
        exclude_if=_absent,
        description="With `?links=WxH`: a signed link to that rendition (default fit and format).",
    )

    model_config = ConfigDict(populate_by_name=True)


class ImageOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_IMAGE_EXAMPLE]})

    id: str = Field(description="Opaque, unguessable id. Do not parse it.")
    status: str = Field(description="Always `ready` for images returned by the API.")
    content_type: str = Field(description="Detected from the bytes, never from the request.")
    byte_size: int = Field(description="Size of the stored bytes.")
    width: int = Field(description="Width in pixels, from the image header.")
    height: int = Field(description="Height in pixels, from the image header.")
    frames: int = Field(description="Number of frames (1 unless animated).")
    sha256: str = Field(description="Hex SHA-256 of the stored bytes.")
    filename: str | None = Field(description="The client's filename, sanitised; metadata only.")
    visibility: Visibility
    blurhash: str | None = Field(
        description="BlurHash (4x3) of the image, to paint a placeholder before the bytes "
        "arrive; null if it could not be computed."
    )
    dominant_color: str | None = Field(
        description="Dominant colour as #rrggbb; null if it could not be computed."
    )
    created_at: datetime
    links: ImageLinks

    @field_serializer("created_at")
    def _iso_millis(self, value: datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"

    @classmethod
    def of(cls, image: Image, signed: tuple[str, str] | None = None) -> ImageOut:
        """`signed`: the (content, variant) signed links, for `?links=`."""
        assert image.byte_size is not None
        assert image.sha256 is not None
        base = f"/v1/images/{image.id}"
        return cls(
            id=image.id,
            status=image.status,
            content_type=image.content_type,
            byte_size=image.byte_size,
            width=image.width,
            height=image.height,
            frames=image.frames,
            sha256=image.sha256,
            filename=image.filename,
            visibility=Visibility(image.visibility),
            blurhash=image.blurhash,
            dominant_color=image.dominant_color,
            created_at=image.created_at,
            links=ImageLinks.model_validate(
                {
                    "self": base,
                    "content": f"{base}/content",
                    "signed_content": signed[0] if signed else None,
                    "signed_variant": signed[1] if signed else None,
                }
            ),
        )


def image_response(image: Image, signed: tuple[str, str] | None = None) -> Response:
    """An Image as JSON, exactly as FastAPI would send the response model (pydantic's JSON,
    by alias); one function, so the fast path (web/hot_reads.py) sends the same bytes."""
    return Response(
        ImageOut.of(image, signed).model_dump_json(by_alias=True), media_type="application/json"
    )


class ImageList(BaseModel):
    items: list[ImageOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class ImagePatch(BaseModel):
    """JSON merge patch of the mutable fields; absent fields are left unchanged."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"visibility": "public"}]}
    )

    visibility: Visibility | None = None
    filename: str | None = Field(default=None, max_length=4 * FILENAME_MAX)
