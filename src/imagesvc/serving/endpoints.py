"""HTTP routes of an image's bytes: `GET`/`HEAD /v1/images/{id}/content`, and signed links
(`POST /v1/images/{id}/links`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from imagesvc.auth.dependencies import OwnerDep, ViewerDep
from imagesvc.errors import InvalidParameter, problem_responses
from imagesvc.images.schemas import ImageId
from imagesvc.serving.http import (
    CONDITION_HEADERS,
    CONTENT_RESPONSES,
    DELIVERY_PARAMETERS,
    HEAD_RESPONSES,
    ConditionsDep,
    DeliveryDep,
    LinksDep,
    content_response,
)
from imagesvc.serving.links import LinkTarget
from imagesvc.serving.schemas import LinkOut, LinkRequest, parse_spec
from imagesvc.serving.service import ContentService


async def get_content(request: Request) -> ContentService:
    service: ContentService = request.app.state.runtime.content
    return service


ContentDep = Annotated[ContentService, Depends(get_content)]

router = APIRouter(prefix="/v1/images", tags=["images"])

_CONTENT_DESCRIPTION = (
    "S3 backend in `redirect` mode: 302 to a signed URL valid for "
    "`IMAGESVC_SIGNED_URL_TTL` seconds (public images: to `IMAGESVC_PUBLIC_BASE_URL` "
    "when set). Otherwise the bytes, with `ETag`, `Cache-Control`, "
    "`X-Content-Type-Options: nosniff`, `Content-Disposition` (`inline`, or `attachment` "
    "with `download=1`), single `Range` requests (206) and `If-None-Match` (304). Public "
    "images need no API key, and neither does a signed link (`exp` and `sig`, from "
    "`createImageLink`)."
)


async def get_image_content(
    image_id: ImageId,
    service: ContentDep,
    viewer: ViewerDep,
    conditions: ConditionsDep,
    delivery: DeliveryDep,
) -> Response:
    result = await service.image_content(
        viewer=viewer, image_id=image_id, conditions=conditions, delivery=delivery
    )
    return content_response(result, delivery=delivery)


# One endpoint for GET and HEAD (HEAD: `delivery.head`, no object opened), registered as
# two operations: FastAPI's `@router.get` answers HEAD with 405, and one route with both
# methods would give two OpenAPI operations the same operationId.
_CONTENT_ERRORS = problem_responses(401, 403, 404, 416, 429, 503)
router.add_api_route(
    "/{image_id}/content",
    get_image_content,
    methods=["GET"],
    operation_id="getImageContent",
    summary="Get the image bytes",
    description=_CONTENT_DESCRIPTION,
    response_class=Response,
    responses={**CONTENT_RESPONSES, **_CONTENT_ERRORS},
    openapi_extra={"parameters": [*CONDITION_HEADERS, *DELIVERY_PARAMETERS]},
)
router.add_api_route(
    "/{image_id}/content",
    get_image_content,
    methods=["HEAD"],
    operation_id="headImageContent",
    summary="The image bytes' headers, without the bytes",
    description="Exactly what GET answers (status and headers), without a body; the "
    "object is not read.",
    response_class=Response,
    responses={**HEAD_RESPONSES, **_CONTENT_ERRORS},
    openapi_extra={"parameters": [*CONDITION_HEADERS, *DELIVERY_PARAMETERS]},
)


@router.post(
    "/{image_id}/links",
    operation_id="createImageLink",
    summary="Make a signed link to the image or one rendition",
    description=(
        "A URL that shows this image (or the rendition `variant`, with `fit` and "
        "`format`) without an API key until `expires_at`: for an `<img>` tag, a download "
        "link, a CDN. HMAC-SHA256 over the canonical path and query; any change of the "
        "URL is a 403, an expired link a 403, and a link of a deleted image a 404. The "
        "owner's key only."
    ),
    response_model=LinkOut,
    responses=problem_responses(404, 422, 503),
)
async def create_image_link(
    image_id: ImageId, body: LinkRequest, service: LinksDep, owner: OwnerDep
) -> LinkOut:
    if body.variant is None:
        if body.fit is not None or body.format is not None:
            raise InvalidParameter("fit and format apply to a variant: set `variant` too")
        target = LinkTarget(download=body.download)
    else:
        target = LinkTarget(
            box=parse_spec(body.variant),
            fit=str(body.fit or "contain"),
            format=body.format or "auto",
            download=body.download,
        )
    asked = body.expires_in if "expires_in" in body.model_fields_set else None
    link = await service.mint(owner=owner, image_id=image_id, target=target, expires_in=asked)
    return LinkOut.at(link.url, link.expires_at)
