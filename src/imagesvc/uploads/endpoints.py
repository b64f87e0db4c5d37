"""HTTP route of uploads through the API: `POST /v1/images` (multipart or raw body)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from imagesvc.auth.dependencies import OwnerDep
from imagesvc.errors import problem_responses
from imagesvc.images.models import Visibility
from imagesvc.images.schemas import ImageOut
from imagesvc.openapi import BINARY
from imagesvc.uploads.body import read_upload
from imagesvc.uploads.service import UploadService


async def get_uploads(request: Request) -> UploadService:
    service: UploadService = request.app.state.runtime.uploads
    return service


UploadsDep = Annotated[UploadService, Depends(get_uploads)]

router = APIRouter(prefix="/v1/images", tags=["images"])

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "Either `multipart/form-data` with a `file` part (and optional text part "
            "`visibility`), or the raw image bytes with `Content-Type: image/*` or "
            "`application/octet-stream` and an optional `X-Filename` header. The type is "
            "detected from the bytes: JPEG, PNG, GIF, WebP, AVIF."
        ),
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "visibility": {"type": "string", "enum": ["private", "public"]},
                    },
                },
                "encoding": {"file": {"contentType": "image/*, application/octet-stream"}},
            },
            # Raw bodies may also be sent as `image/jpeg`, `image/png`, ...: documented as
            # octet-stream only, because client generators do not take `image/*` here.
            "application/octet-stream": BINARY,
        },
    },
    "parameters": [
        {
            "name": "X-Filename",
            "in": "header",
            "required": False,
            "description": "Filename for a raw upload (percent-encode non-ASCII). Metadata only.",
            "schema": {"type": "string"},
        }
    ],
}


@router.post(
    "",
    status_code=201,
    operation_id="createImage",
    summary="Upload an image",
    description=(
        "Streams the upload to object storage. 201 means the bytes are durably stored and "
        "match the returned `sha256` and `byte_size`. The body is never held in memory or "
        "spooled to disk."
    ),
    openapi_extra=UPLOAD_BODY,
    responses={
        201: {
            "headers": {
                "Location": {"description": "The new image.", "schema": {"type": "string"}},
                "Idempotent-Replayed": {
                    "description": "`true` when this is the stored first response.",
                    "schema": {"type": "string"},
                },
            }
        },
        **problem_responses(400, 409, 413, 415, 422, 503),
    },
)
async def create_image(
    request: Request,
    response: Response,
    service: UploadsDep,
    owner: OwnerDep,
    visibility: Annotated[
        Visibility | None, Query(description="Overrides the `visibility` form field.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description=(
                "Retry-safe uploads: the same key and the same upload within 24 hours "
                "return the first result and create nothing new (1-255 visible ASCII "
                "characters; scoped to the caller)."
            ),
        ),
    ] = None,
) -> ImageOut:
    upload = await read_upload(
        request, owner=owner, visibility=visibility, max_file_bytes=service.limits.max_upload_bytes
    )
    created = await service.create(upload, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/images/{created.image.id}"
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return ImageOut.of(created.image)
