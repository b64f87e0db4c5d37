"""Domain errors that carry their HTTP status, and the one place that renders problem+json.

Every error leaves the service as RFC 9457 `application/problem+json` with a stable `code`
and the request id. Nothing below ever puts a stack trace, an SQL fragment, a storage key or a
credential in a body: details are written by us, never copied from an exception.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details, as every error of this API is rendered."""

    type: str = Field(description="A URI reference naming the problem type.")
    title: str = Field(description="Short, human-readable summary of the problem type.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request.")
    code: str = Field(description="Stable machine-readable code, e.g. `unsupported_media_type`.")
    request_id: str | None = Field(description="Quote it when reporting a problem.")
    errors: list[dict[str, str]] | None = Field(
        default=None, description="Validation problems: `location` and `message` of each."
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the given error statuses."""
    return {
        status: {
            "model": Problem,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            "description": _STATUS_TITLES.get(status, ("error", "Error"))[1],
        }
        for status in statuses
    }


class ProblemError(Exception):
    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequest(ProblemError):
    status, code, title = 400, "bad_request", "Bad request"


class NotFound(ProblemError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(ProblemError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ProblemError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(ProblemError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class RangeNotSatisfiable(ProblemError):
    status, code, title = 416, "range_not_satisfiable", "Range not satisfiable"


class InvalidParameter(ProblemError):
    status, code, title = 422, "invalid_parameter", "Invalid parameter"


class ServiceUnavailable(ProblemError):
    status, code, title = 503, "service_unavailable", "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


_STATUS_TITLES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    410: ("gone", "Gone"),
    412: ("precondition_failed", "Precondition failed"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    416: ("range_not_satisfiable", "Range not satisfiable"),
    422: ("invalid_parameter", "Invalid parameter"),
    423: ("locked", "Locked"),
    429: ("too_many_requests", "Too many requests"),
    460: ("checksum_mismatch", "Checksum mismatch"),
    500: ("internal_error", "Internal server error"),
    503: ("service_unavailable", "Service unavailable"),
}


def request_id_of(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"/problems/{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id_of(request),
    }
    body.update(extra or {})
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON
    )


async def handle_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
        extra=exc.extra,
    )


def _describe_validation(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # Only where and what: the offending input is left out so that nothing a client sent
    # (which could be large or sensitive) is echoed back.
    described = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        described.append({"location": ".".join(loc), "message": str(error.get("msg", ""))})
    return described


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _describe_validation(exc.errors())
    first = errors[0] if errors else {"location": "request", "message": "invalid"}
    return problem_response(
        request,
        status=422,
        code="invalid_parameter",
        title="Invalid parameter",
        detail=f"{first['location']}: {first['message']}",
        extra={"errors": errors},
    )


async def _handle_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _STATUS_TITLES.get(exc.status_code, ("error", "Error"))
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    if exc.status_code == 404 and detail in (None, "Not Found"):
        detail = "no such resource"
    if exc.status_code == 405:
        detail = f"method {request.method} is not allowed on this resource"
    return problem_response(
        request,
        status=exc.status_code,
        code=code,
        title=title,
        detail=detail or title.lower(),
        headers=exc.headers,
    )


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"request_id": request_id_of(request)})
    return problem_response(
        request,
        status=500,
        code="internal_error",
        title="Internal server error",
        detail="the server failed to handle this request; it has been logged",
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, handle_problem)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(Exception, handle_unexpected)
