"""HTTP route of renditions: `GET /v1/images/{id}/variants/{w}x{h}`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from imagesvc.auth.dependencies import ViewerDep
from imagesvc.errors import problem_responses
from imagesvc.images.schemas import ImageId
from imagesvc.imaging.render import Fit
from imagesvc.serving.http import (
    CONDITION_HEADERS,
    CONTENT_RESPONSES,
    ConditionsDep,
    content_response,
)
from imagesvc.variants.service import VariantService


async def get_variants(request: Request) -> VariantService:
    variants: VariantService = request.app.state.runtime.variants
    return variants


VariantsDep = Annotated[VariantService, Depends(get_variants)]
VariantFormat = Literal["auto", "jpeg", "png", "webp", "avif"]

router = APIRouter(prefix="/v1/images", tags=["images"])


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
    variants: VariantsDep,
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
