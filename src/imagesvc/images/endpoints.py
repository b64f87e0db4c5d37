"""HTTP routes of the Image resource: list, get, patch, delete (parse, call one service
method, shape the response). Uploads, content and variants have their own folders."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from imagesvc.auth.dependencies import OwnerDep
from imagesvc.errors import problem_responses
from imagesvc.images.cursor import decode_cursor, encode_cursor
from imagesvc.images.schemas import ImageId, ImageList, ImageOut, ImagePatch, image_response
from imagesvc.images.service import ImageService
from imagesvc.serving.http import LinksDep
from imagesvc.serving.links import LinkService
from imagesvc.serving.schemas import SPEC_PATTERN, parse_spec


async def get_images(request: Request) -> ImageService:
    service: ImageService = request.app.state.runtime.images
    return service


ImagesDep = Annotated[ImageService, Depends(get_images)]

router = APIRouter(prefix="/v1/images", tags=["images"])

LinksQuery = Annotated[
    str | None,
    Query(
        pattern=SPEC_PATTERN,
        description="`WxH`: add `links.signed_content` and `links.signed_variant` (that "
        "size, default fit and format), signed links that work without a key, e.g. in "
        "`<img>` tags.",
        examples=["256x256"],
    ),
]


@router.get(
    "",
    operation_id="listImages",
    summary="List images, newest first",
    description="Keyset pagination: pass `next_cursor` back as `cursor` until it is null. "
    "With `links=WxH` every item carries signed links, so a gallery paints from one call.",
    responses=problem_responses(422, 503),
)
async def list_images(
    service: ImagesDep,
    owner: OwnerDep,
    link_service: LinksDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
    links: LinksQuery = None,
) -> ImageList:
    after = decode_cursor(cursor) if cursor else None
    box = _link_box(link_service, links)
    page = await service.list(owner=owner, after=after, limit=limit)
    signed = await link_service.gallery([image.id for image in page.items], box) if box else {}
    return ImageList(
        items=[ImageOut.of(image, signed.get(image.id)) for image in page.items],
        next_cursor=encode_cursor(page.last_id) if page.last_id else None,
    )


@router.get(
    "/{image_id}",
    operation_id="getImage",
    summary="Get an image's metadata",
    description="The Image resource, for the owner's key only (another owner's image is 404). "
    "With `links=WxH`, signed links too (see `listImages`).",
    response_model=ImageOut,
    responses=problem_responses(404, 503),
)
async def get_image(
    image_id: ImageId,
    service: ImagesDep,
    owner: OwnerDep,
    link_service: LinksDep,
    links: LinksQuery = None,
) -> Response:
    box = _link_box(link_service, links)
    image = await service.get(owner=owner, image_id=image_id)
    signed = (await link_service.gallery([image.id], box))[image.id] if box else None
    return image_response(image, signed)


def _link_box(link_service: LinkService, links: str | None) -> tuple[int, int] | None:
    if links is None:
        return None
    box = parse_spec(links)
    link_service.check_box(box)  # a size the variants route refuses: 422 now
    return box


@router.patch(
    "/{image_id}",
    operation_id="updateImage",
    summary="Change visibility or filename",
    description="JSON merge patch: fields left out are unchanged; `filename: null` clears it.",
    responses=problem_responses(404, 422, 503),
)
async def update_image(
    image_id: ImageId, patch: ImagePatch, service: ImagesDep, owner: OwnerDep
) -> ImageOut:
    changes = patch.model_dump(exclude_unset=True)
    image = await service.update(owner=owner, image_id=image_id, changes=changes)
    return ImageOut.of(image)


@router.delete(
    "/{image_id}",
    status_code=204,
    operation_id="deleteImage",
    summary="Delete an image and all its objects",
    description="Removes the row and every stored object of the image. A second delete is 404.",
    response_class=Response,
    responses=problem_responses(404, 503),
)
async def delete_image(image_id: ImageId, service: ImagesDep, owner: OwnerDep) -> Response:
    await service.delete(owner=owner, image_id=image_id)
    return Response(status_code=204)
