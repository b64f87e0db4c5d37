"""HTTP route of renditions: `GET /v1/images/{id}/variants/{w}x{h}`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from imagesvc.auth.dependencies import ViewerDep
from imagesvc.errors import problem_responses
from imagesvc.images.schemas import ImageId
from imagesvc.imaging.render import Fit
from imagesvc.serving.http import (
    CONDITION_HEADERS,
    CONTENT_RESPONSES,
    DELIVERY_PARAMETERS,
    HEAD_RESPONSES,
    ConditionsDep,
    DeliveryDep,
    content_response,
)
from imagesvc.serving.schemas import SPEC_PATTERN, VariantFormat
from imagesvc.variants.service import VariantService


async def get_variants(request: Request) -> VariantService:
    variants: VariantService = request.app.state.runtime.variants
    return variants


VariantsDep = Annotated[VariantService, Depends(get_variants)]

router = APIRouter(prefix="/v1/images", tags=["images"])


async def get_image_variant(
    image_id: ImageId,
    spec: Annotated[
        str,
        Path(
            pattern=SPEC_PATTERN,
            description="`{width}x{height}` of the box, e.g. `256x256`.",
            examples=["256x256"],
        ),
    ],
    variants: VariantsDep,
    viewer: ViewerDep,
    conditions: ConditionsDep,
    delivery: DeliveryDep,
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
        delivery=delivery,
    )
    return content_response(result, vary_accept=format == "auto", delivery=delivery)


# GET and HEAD: one endpoint, two operations (see serving/endpoints.py). HEAD of a
# rendition not made yet renders it, as GET would: its headers need its bytes.
_ERRORS = problem_responses(401, 403, 404, 413, 416, 422, 429, 503)
router.add_api_route(
    "/{image_id}/variants/{spec}",
    get_image_variant,
    methods=["GET"],
    operation_id="getImageVariant",
    summary="Get a resized rendition",
    description=(
        "Renders once (EXIF orientation applied, metadata stripped, sRGB, first frame of "
        "animations), stores it, and serves it like `/content` afterwards. Sizes larger "
        "than `IMAGESVC_VARIANT_MAX_DIMENSION` are clamped (proportions kept) and never "
        "upscale the image. `format=auto` picks AVIF, then WebP, from `Accept`, else the "
        "source's family, and the response varies on `Accept`. `download=1` and signed "
        "links (`exp`, `sig`) work as on `/content`."
    ),
    response_class=Response,
    responses={**CONTENT_RESPONSES, **_ERRORS},
    openapi_extra={"parameters": [*CONDITION_HEADERS, *DELIVERY_PARAMETERS]},
)
router.add_api_route(
    "/{image_id}/variants/{spec}",
    get_image_variant,
    methods=["HEAD"],
    operation_id="headImageVariant",
    summary="A rendition's headers, without the bytes",
    description="Exactly what GET answers (status and headers), without a body; the "
    "rendition's object is not read (one not rendered yet is rendered first).",
    response_class=Response,
    responses={**HEAD_RESPONSES, **_ERRORS},
    openapi_extra={"parameters": [*CONDITION_HEADERS, *DELIVERY_PARAMETERS]},
)
