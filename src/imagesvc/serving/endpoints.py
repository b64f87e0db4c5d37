"""HTTP route of an image's bytes: `GET /v1/images/{id}/content`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from imagesvc.auth.dependencies import ViewerDep
from imagesvc.errors import problem_responses
from imagesvc.images.schemas import ImageId
from imagesvc.serving.http import (
    CONDITION_HEADERS,
    CONTENT_RESPONSES,
    ConditionsDep,
    content_response,
)
from imagesvc.serving.service import ContentService


async def get_content(request: Request) -> ContentService:
    service: ContentService = request.app.state.runtime.content
    return service


ContentDep = Annotated[ContentService, Depends(get_content)]

router = APIRouter(prefix="/v1/images", tags=["images"])


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
    image_id: ImageId, service: ContentDep, viewer: ViewerDep, conditions: ConditionsDep
) -> Response:
    result = await service.image_content(viewer=viewer, image_id=image_id, conditions=conditions)
    return content_response(result)
