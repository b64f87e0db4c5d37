"""HTTP routes of direct uploads: `POST /v1/images/direct`, `POST /v1/images/{id}/complete`,
and the local backend's upload URL `PUT /v1/direct-uploads/{token}`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from starlette.requests import ClientDisconnect

from imagesvc.auth.dependencies import OwnerDep
from imagesvc.errors import problem_responses
from imagesvc.images.models import Visibility
from imagesvc.images.schemas import ImageId, ImageOut
from imagesvc.uploads.body import ClientGone
from imagesvc.uploads.direct.schemas import DirectUploadIn, DirectUploadOut
from imagesvc.uploads.direct.service import DirectRequest, DirectUploads


async def get_direct(request: Request) -> DirectUploads:
    service: DirectUploads = request.app.state.runtime.direct
    return service


DirectDep = Annotated[DirectUploads, Depends(get_direct)]

router = APIRouter(tags=["images"])


@router.post(
    "/v1/images/direct",
    status_code=201,
    operation_id="createDirectUpload",
    summary="Start a direct upload (bytes straight to the store)",
    description=(
        "Reserves the image id and answers a URL to PUT exactly `byte_size` bytes to, with "
        "exactly the given `headers`, until `expires_at` (`IMAGESVC_DIRECT_UPLOAD_TTL`): a "
        "presigned S3 PUT, or a URL of this service with the local backend. Then call "
        "`completeDirectUpload`. Until completed the image is not listed and `getImage` is "
        "404. `byte_size` over the limit: 413 at once."
    ),
    responses={
        201: {
            "headers": {
                "Idempotent-Replayed": {
                    "description": "`true` when this is the stored first response.",
                    "schema": {"type": "string"},
                }
            }
        },
        **problem_responses(409, 413, 422, 503),
    },
)
async def create_direct_upload(
    body: DirectUploadIn,
    request: Request,
    response: Response,
    service: DirectDep,
    owner: OwnerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description=(
                "The same key and body within 24 hours return the first response (same id, "
                "same URL) and create nothing new (1-255 visible ASCII characters)."
            ),
        ),
    ] = None,
) -> DirectUploadOut:
    direct = DirectRequest(
        owner=owner,
        byte_size=body.byte_size,
        content_type=body.content_type,
        filename=body.filename,
        visibility=body.visibility or Visibility.PRIVATE,
        sha256=body.sha256.lower() if body.sha256 else None,
    )
    created = await service.create(direct, idempotency_key=idempotency_key)
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return DirectUploadOut.of(created.upload)


@router.post(
    "/v1/images/{image_id}/complete",
    operation_id="completeDirectUpload",
    summary="Finish a direct upload: check the bytes, make the image ready",
    description=(
        "Checks that the object has exactly the declared size, reads it once to detect "
        "the type, check the pixels and compute the sha256 (which must match the declared "
        "one) and the placeholder, then answers the ready Image. 415 (not an image), 413 "
        "(too large) and 422 (`upload_size_mismatch`, `sha256_mismatch`) remove the "
        "object and the upload. 409 `upload_incomplete`: nothing uploaded yet, nothing "
        "removed (retry after the PUT); 409 `upload_in_progress`: another request is on it "
        "(`Retry-After`). 410 `upload_expired`: past `expires_at`. Completing a ready "
        "image answers it again."
    ),
    responses=problem_responses(404, 409, 410, 413, 415, 422, 503),
)
async def complete_direct_upload(
    image_id: ImageId, service: DirectDep, owner: OwnerDep
) -> ImageOut:
    return ImageOut.of(await service.complete(owner=owner, image_id=image_id))


# The URL `createDirectUpload` hands out on the local backend. Not in the OpenAPI document:
# like a presigned S3 URL it is opaque (the token is its only credential), and clients must
# use it as given rather than build it.
uploads_router = APIRouter()


@uploads_router.put("/v1/direct-uploads/{token}", include_in_schema=False)
async def receive_direct_upload(
    token: Annotated[str, Path(max_length=128)], request: Request, service: DirectDep
) -> Response:
    await service.receive(
        token,
        content_length=request.headers.get("content-length"),
        content_type=request.headers.get("content-type"),
        chunks=_body(request),
    )
    return Response(status_code=200)


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ClientGone("the client disconnected before the upload finished") from None
