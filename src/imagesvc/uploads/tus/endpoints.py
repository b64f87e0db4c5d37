"""HTTP routes of tus 1.0.0 at `/v1/uploads` (SPEC §10): parse the headers, call one service
method, answer with tus headers. Every answer but OPTIONS carries `Tus-Resumable`, errors
included; every request but OPTIONS without `Tus-Resumable: 1.0.0` is a 412."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from imagesvc.auth.dependencies import OwnerDep
from imagesvc.errors import BadRequest, ProblemError, problem_responses
from imagesvc.images.schemas import ImageId
from imagesvc.uploads.tus import protocol
from imagesvc.uploads.tus.protocol import TUS_VERSION
from imagesvc.uploads.tus.service import ResumableService
from imagesvc.uploads.tus.state import Body, UploadState


class TusRoute(APIRoute):
    """Checks `Tus-Resumable` before anything else runs (authentication included: the
    request must not be processed) and adds it to every answer."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method == "OPTIONS":
                return await handler(request)
            try:
                protocol.check_resumable(request.headers)
                response = await handler(request)
            except ProblemError as exc:
                exc.headers.setdefault("Tus-Resumable", TUS_VERSION)
                exc.headers.setdefault("Cache-Control", "no-store")
                raise
            response.headers["Tus-Resumable"] = TUS_VERSION
            return response

        return route


async def get_resumable(request: Request) -> ResumableService:
    service: ResumableService = request.app.state.runtime.resumable
    return service


ResumableDep = Annotated[ResumableService, Depends(get_resumable)]

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], route_class=TusRoute)


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string", **(schema or {})}}


def _param(
    name: str, description: str, schema: dict[str, Any] | None = None, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", **(schema or {})},
    }


TUS_RESUMABLE = _param(
    "Tus-Resumable", "The protocol version; 412 without it.", {"enum": [TUS_VERSION]}, required=True
)
UINT: dict[str, Any] = {"pattern": "^[0-9]{1,19}$"}
CHUNK_BODY: dict[str, Any] = {
    "content": {protocol.CHUNK_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}
_OFFSET = _header("Upload-Offset", "Bytes the service has stored.", UINT)
_EXPIRES = _header("Upload-Expires", "When an unfinished upload expires (HTTP date).")
_RESUMABLE = _header("Tus-Resumable", "`1.0.0`.")
_IMAGE_ID = _header("Image-Id", "The image's id, once the upload is complete.")
_TUS_ERRORS = {
    412: {"description": "No `Tus-Resumable: 1.0.0` (the answer names `Tus-Version`)."},
    410: {"description": "The upload expired."},
    423: {"description": "Another PATCH of this upload is in progress (`Retry-After`)."},
    460: {"description": "The chunk does not match its `Upload-Checksum`."},
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    responses = problem_responses(*statuses)
    for status in statuses:
        if status in _TUS_ERRORS:
            responses[status]["description"] = _TUS_ERRORS[status]["description"]
    return responses


def _discovery(service: ResumableService) -> Response:
    return Response(status_code=204, headers=protocol.discovery_headers(service.max_size))


_DISCOVERY_DOC: dict[str, Any] = {
    "status_code": 204,
    "response_class": Response,
    "summary": "tus discovery",
    "description": (
        "204 with `Tus-Version`, `Tus-Extension`, `Tus-Max-Size` and "
        "`Tus-Checksum-Algorithm`; needs no key and looks nothing up."
    ),
    "responses": {
        204: {
            "description": "What this server speaks.",
            "headers": {
                "Tus-Version": _header("Tus-Version", "`1.0.0`."),
                "Tus-Extension": _header("Tus-Extension", "The supported extensions."),
                "Tus-Max-Size": _header("Tus-Max-Size", "Largest upload in bytes.", UINT),
                "Tus-Checksum-Algorithm": _header("Tus-Checksum-Algorithm", "`sha1,md5,sha256`."),
            },
        }
    },
}


@router.options("", operation_id="tusOptions", **_DISCOVERY_DOC)
async def options_uploads(service: ResumableDep) -> Response:
    return _discovery(service)


@router.options("/{upload_id}", operation_id="tusUploadOptions", **_DISCOVERY_DOC)
async def options_upload(upload_id: str, service: ResumableDep) -> Response:
    return _discovery(service)


def _state_headers(state: UploadState) -> dict[str, str]:
    headers = {"Upload-Offset": str(state.offset)}
    if state.expires_at is not None:
        headers["Upload-Expires"] = protocol.http_date(state.expires_at)
    if state.image_id is not None:
        headers["Image-Id"] = state.image_id
    return headers


def _body(request: Request) -> Body:
    cut = False

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal cut
        try:
            async for chunk in request.stream():
                yield chunk
        except ClientDisconnect:
            cut = True  # keep what arrived (tus: store as much as possible)

    declared = protocol.parse_uint(request.headers.get("content-length"), "Content-Length")
    return Body(chunks(), declared, lambda: cut)


async def _patch(
    request: Request, service: ResumableService, owner: str, upload_id: str
) -> UploadState:
    headers = request.headers
    protocol.check_chunk_type(headers.get("content-type"))
    offset = protocol.parse_uint(headers.get("upload-offset"), "Upload-Offset")
    if offset is None:
        raise BadRequest("a PATCH needs Upload-Offset")
    length = protocol.parse_uint(headers.get("upload-length"), "Upload-Length")
    # Past Tus-Max-Size no upload can be at that offset or of that length; said here, before
    # a number wider than any SQL integer reaches the database.
    if offset > service.max_size:
        raise protocol.OffsetConflict(f"Upload-Offset {offset} is past Tus-Max-Size")
    if length is not None and length > service.max_size:
        raise protocol.ChunkTooLong(f"Upload-Length is over the limit of {service.max_size} bytes")
    return await service.patch(
        owner=owner,
        upload_id=upload_id,
        offset=offset,
        length=length,
        checksum=protocol.parse_checksum(headers.get("upload-checksum")),
        body=_body(request),
    )


_CREATE_PARAMS = [
    TUS_RESUMABLE,
    _param("Upload-Length", "Size of the whole upload in bytes.", UINT),
    _param("Upload-Defer-Length", "`1`: the length comes with a later PATCH.", {"enum": ["1"]}),
    _param(
        "Upload-Metadata",
        "`key base64,...`: `filename` and `visibility` (`private`, `public`) are used; "
        "`filetype` is ignored (the bytes decide the type).",
    ),
]


@router.post(
    "",
    status_code=201,
    response_class=Response,
    operation_id="createUpload",
    summary="Create a resumable upload (tus)",
    description=(
        "Creates a tus upload whose id is the id the image will have. With a body sent as "
        "`application/offset+octet-stream` (creation-with-upload) the bytes are taken as a "
        "first PATCH. Over `Tus-Max-Size`: 413, nothing stored."
    ),
    openapi_extra={
        "parameters": _CREATE_PARAMS,
        "requestBody": {"required": False, **CHUNK_BODY},
    },
    responses={
        201: {
            "description": "Created.",
            "headers": {
                "Location": _header("Location", "The upload's URL, `/v1/uploads/{id}`."),
                "Upload-Offset": _OFFSET,
                "Upload-Expires": _EXPIRES,
                "Tus-Resumable": _RESUMABLE,
            },
        },
        **_errors(400, 410, 412, 413, 415, 423, 460),
    },
)
async def create_upload(request: Request, service: ResumableDep, owner: OwnerDep) -> Response:
    creation = protocol.parse_creation(request.headers)
    state = await service.create(owner=owner, creation=creation)
    if protocol.is_chunk(request.headers.get("content-type")):
        try:
            state = await service.patch(
                owner=owner,
                upload_id=state.id,
                offset=0,
                length=None,
                checksum=protocol.parse_checksum(request.headers.get("upload-checksum")),
                body=_body(request),
            )
        except ProblemError as error:
            # The upload exists unless its bytes ended it (not an image, too large): then
            # the client hears why; else it gets its upload and resumes from its offset.
            try:
                state = await service.status(owner=owner, upload_id=state.id)
            except ProblemError:
                raise error from None
    headers = {"Location": f"/v1/uploads/{state.id}", **_state_headers(state)}
    return Response(status_code=201, headers=headers)


@router.post("/", status_code=201, response_class=Response, include_in_schema=False)
async def create_upload_slash(request: Request, service: ResumableDep, owner: OwnerDep) -> Response:
    # tus-js-client keeps an endpoint's trailing slash; no redirect (it would be built
    # from the Host header).
    return await create_upload(request, service, owner)


@router.api_route(
    "/{upload_id}",
    methods=["HEAD"],
    response_class=Response,
    operation_id="getUploadOffset",
    summary="Offset of a resumable upload (tus HEAD)",
    description=(
        "The offset to resume from (`Upload-Offset`), `Upload-Length` (or "
        "`Upload-Defer-Length: 1`), `Upload-Metadata` as sent, `Upload-Expires`; once "
        "complete, `Image-Id`. Never cached. Of an upload whose every byte is stored but "
        "whose completion failed (a 503 on its last PATCH), HEAD finishes the completion "
        "and answers `Image-Id` (423 while another request is finishing it). 404 once the "
        "image is deleted."
    ),
    openapi_extra={"parameters": [TUS_RESUMABLE]},
    responses={
        200: {
            "description": "The upload's state.",
            "headers": {
                "Upload-Offset": _OFFSET,
                "Upload-Length": _header("Upload-Length", "When known.", UINT),
                "Upload-Metadata": _header("Upload-Metadata", "As sent at creation."),
                "Upload-Expires": _EXPIRES,
                "Image-Id": _IMAGE_ID,
                "Tus-Resumable": _RESUMABLE,
            },
        },
        **_errors(404, 410, 412, 423, 503),
    },
)
async def head_upload(upload_id: ImageId, service: ResumableDep, owner: OwnerDep) -> Response:
    state = await service.status(owner=owner, upload_id=upload_id)
    headers = {**_state_headers(state), "Cache-Control": "no-store"}
    if state.length is not None:
        headers["Upload-Length"] = str(state.length)
    else:
        headers["Upload-Defer-Length"] = "1"
    if state.metadata:
        headers["Upload-Metadata"] = state.metadata
    return Response(status_code=200, headers=headers)


_PATCH_DOC: dict[str, Any] = {
    "status_code": 204,
    "response_class": Response,
    "summary": "Append a chunk to a resumable upload (tus PATCH)",
    "description": (
        "`Upload-Offset` must be the upload's offset (else 409, nothing changed). The bytes "
        "stream to the store; the last byte completes the image (answer with `Image-Id`). "
        "`Upload-Checksum` (`sha1`, `md5`, `sha256`): a mismatch is 460 and the chunk is "
        "discarded. Bytes that are not an image end the upload with 415 (pixels over the "
        "limit: 413) and nothing is left of it."
    ),
    "openapi_extra": {
        "parameters": [
            TUS_RESUMABLE,
            _param("Upload-Offset", "The upload's current offset.", UINT, required=True),
            _param("Upload-Length", "The length, if it was deferred.", UINT),
            _param("Upload-Checksum", "`<algorithm> <base64 digest>` of this chunk."),
        ],
        "requestBody": {"required": True, **CHUNK_BODY},
    },
    "responses": {
        204: {
            "description": "Stored.",
            "headers": {
                "Upload-Offset": _OFFSET,
                "Upload-Expires": _EXPIRES,
                "Image-Id": _IMAGE_ID,
                "Tus-Resumable": _RESUMABLE,
            },
        },
        **_errors(400, 404, 409, 410, 412, 413, 415, 423, 460),
    },
}


@router.patch("/{upload_id}", operation_id="appendUploadChunk", **_PATCH_DOC)
async def patch_upload(
    upload_id: ImageId, request: Request, service: ResumableDep, owner: OwnerDep
) -> Response:
    state = await _patch(request, service, owner, upload_id)
    return Response(status_code=204, headers=_state_headers(state))


@router.delete(
    "/{upload_id}",
    status_code=204,
    response_class=Response,
    operation_id="terminateUpload",
    summary="Terminate a resumable upload (tus DELETE)",
    description=(
        "Removes an unfinished upload and everything it stored; afterwards 404. Of a "
        "finished upload only the upload record goes: the image stays."
    ),
    openapi_extra={"parameters": [TUS_RESUMABLE]},
    responses={204: {"description": "Removed."}, **_errors(404, 412, 423)},
)
async def delete_upload(upload_id: ImageId, service: ResumableDep, owner: OwnerDep) -> Response:
    await service.terminate(owner=owner, upload_id=upload_id)
    return Response(status_code=204)


@router.post("/{upload_id}", include_in_schema=False, response_class=Response)
async def override_method(
    upload_id: ImageId, request: Request, service: ResumableDep, owner: OwnerDep
) -> Response:
    """`X-HTTP-Method-Override` (tus-js-client's `overridePatchMethod`), honoured on POST only,
    so that a GET or HEAD never turns into a DELETE."""
    method = (request.headers.get("x-http-method-override") or "").upper()
    if method == "PATCH":
        state = await _patch(request, service, owner, upload_id)
        return Response(status_code=204, headers=_state_headers(state))
    if method == "DELETE":
        await service.terminate(owner=owner, upload_id=upload_id)
        return Response(status_code=204)
    raise BadRequest("POST on an upload needs X-HTTP-Method-Override: PATCH or DELETE")
