"""HTTP routes of /v1/images: parse, call one service method, shape the response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from imagesvc.auth.dependencies import OwnerDep, ViewerDep
from imagesvc.errors import problem_responses
from imagesvc.images.cursor import decode_cursor, encode_cursor
from imagesvc.images.http_content import (
    BINARY,
    CONDITION_HEADERS,
    CONTENT_RESPONSES,
    ConditionsDep,
    content_response,
)
from imagesvc.images.ingest import UploadRequest
from imagesvc.images.models import Visibility
from imagesvc.images.schemas import ImageList, ImageOut, ImagePatch
from imagesvc.images.service import ImageService
from imagesvc.images.upload import read_upload
from imagesvc.images.variants import VariantService
from imagesvc.imaging.render import Fit


async def get_service(request: Request) -> ImageService:
    service: ImageService = request.app.state.images
    return service


ServiceDep = Annotated[ImageService, Depends(get_service)]
ImageId = Annotated[str, Path(max_length=64, description="The image id (`img_...`).")]

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
    service: ServiceDep,
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
    body = await read_upload(request, max_file_bytes=service.limits.max_upload_bytes)
    upload = UploadRequest(
        owner=owner,
        chunks=body.chunks,
        filename=body.filename,
        fields=body.fields,
        visibility=visibility,
    )
    created = await service.create(upload, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/images/{created.image.id}"
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return ImageOut.of(created.image)


@router.get(
    "",
    operation_id="listImages",
    summary="List images, newest first",
    description="Keyset pagination: pass `next_cursor` back as `cursor` until it is null.",
    responses=problem_responses(422, 503),
)
async def list_images(
    service: ServiceDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> ImageList:
    after = decode_cursor(cursor) if cursor else None
    page = await service.list(owner=owner, after=after, limit=limit)
    return ImageList(
        items=[ImageOut.of(image) for image in page.items],
        next_cursor=encode_cursor(page.last_id) if page.last_id else None,
    )


@router.get(
    "/{image_id}",
    operation_id="getImage",
    summary="Get an image's metadata",
    description="The Image resource, for the owner's key only (another owner's image is 404).",
    responses=problem_responses(404, 503),
)
async def get_image(image_id: ImageId, service: ServiceDep, owner: OwnerDep) -> ImageOut:
    return ImageOut.of(await service.get(owner=owner, image_id=image_id))


@router.patch(
    "/{image_id}",
    operation_id="updateImage",
    summary="Change visibility or filename",
    description="JSON merge patch: fields left out are unchanged; `filename: null` clears it.",
    responses=problem_responses(404, 422, 503),
)
async def update_image(
    image_id: ImageId, patch: ImagePatch, service: ServiceDep, owner: OwnerDep
) -> ImageOut:
    changes = patch.model_dump(exclude_unset=True)
    image = await service.update(owner=owner, image_id=image_id, changes=changes)
    return ImageOut.of(image)


@router.get(
    "/{image_id}/content",
    operation_id="getImageContent",
    summary="Get the image bytes",
    description=(
        "S3 backend in `redirect` mode: 302 to a signed URL valid for "
        "`IMAGESVC_SIGNED_URL_TTL` seconds (public images: to `IMAGESVC_PUBLIC_BASE_URL` "
        "when set). Otherwise the bytes, with `ETag`, `Cache-Control`, single `Range` "
        "requests (206) and `If-None-Match` (304). Public images need no API key."
    ),
    response_class=Response,
    responses={**CONTENT_RESPONSES, **problem_responses(401, 404, 416, 429, 503)},
    openapi_extra={"parameters": CONDITION_HEADERS},
)
async def get_image_content(
    image_id: ImageId, service: ServiceDep, viewer: ViewerDep, conditions: ConditionsDep
) -> Response:
    result = await service.content(viewer=viewer, image_id=image_id, conditions=conditions)
    return content_response(result)


async def get_variants(request: Request) -> VariantService:
    variants: VariantService = request.app.state.variants
    return variants


VariantFormat = Literal["auto", "jpeg", "png", "webp", "avif"]


@router.get(
    "/{image_id}/variants/{spec}",
    operation_id="getImageVariant",
    summary="Get a resized rendition",
    description=(
        "Renders once (EXIF orientation applied, metadata stripped, sRGB, first frame of "
        "animations), stores it, and serves it like `/content` afterwards. Sizes larger "
        "than `IMAGESVC_VARIANT_MAX_DIMENSION` are clamped (proportions kept) and never "
        "upscale the image. `format=auto` picks AVIF, then WebP, from `Accept`, else the "
        "source's family, and the response varies on `Accept`."
    ),
    response_class=Response,
    responses={**CONTENT_RESPONSES, **problem_responses(401, 404, 413, 416, 422, 429, 503)},
    openapi_extra={"parameters": CONDITION_HEADERS},
)
async def get_image_variant(
    image_id: ImageId,
    spec: Annotated[
        str,
        Path(
            pattern=r"^[0-9]{1,5}x[0-9]{1,5}$",
            description="`{width}x{height}` of the box, e.g. `256x256`.",
            examples=["256x256"],
        ),
    ],
    variants: Annotated[VariantService, Depends(get_variants)],
    viewer: ViewerDep,
    conditions: ConditionsDep,
    fit: Annotated[
        Fit,
        Query(description="`contain` (inside the box), `cover` (fills it, cropped), `fill`."),
    ] = Fit.CONTAIN,
    format: Annotated[VariantFormat, Query(description="Output format.")] = "auto",
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    width, height = (int(side) for side in spec.split("x"))
    result = await variants.content(
        viewer=viewer,
        image_id=image_id,
        size=(width, height),
        fit=fit,
        output=format,
        accept=accept,
        conditions=conditions,
    )
    return content_response(result, vary_accept=format == "auto")


@router.delete(
    "/{image_id}",
    status_code=204,
    operation_id="deleteImage",
    summary="Delete an image and all its objects",
    description="Removes the row and every stored object of the image. A second delete is 404.",
    response_class=Response,
    responses=problem_responses(404, 503),
)
async def delete_image(image_id: ImageId, service: ServiceDep, owner: OwnerDep) -> Response:
    await service.delete(owner=owner, image_id=image_id)
    return Response(status_code=204)
