"""The OpenAPI document, shaped for client generators (openapi-python-client,
openapi-typescript) and for contract testing (schemathesis).

FastAPI's defaults are adjusted in one place:
- every error response is the shared `Problem` schema as `application/problem+json`
  (FastAPI would describe 422 as its own `HTTPValidationError` JSON, which we never send);
- every /v1 operation documents what any request may get: 401, 429, 503 (and 422);
- operations that public images allow without a key say so (`security: [{ApiKey: []}, {}]`);
- uploads carry `format: binary` (set on the route), so generated clients send files.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imagesvc.errors import PROBLEM_JSON

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# A body or response of raw bytes, as generators turn it into a file/bytes type.
BINARY = {"schema": {"type": "string", "format": "binary"}}
_ALWAYS = {
    "401": "Missing, malformed, unknown or revoked API key (`WWW-Authenticate: Bearer`).",
    "422": "Invalid parameters.",
    "429": "Too many requests for this key, or render queue full (`Retry-After`).",
    "503": "Database or object store unavailable (`Retry-After`).",
}
# Reachable without a key when the image is public.
# (HEAD too; and with a signed link, `exp` + `sig`, any image without a key.)
_PUBLIC_READS = {"getImageContent", "getImageVariant", "headImageContent", "headImageVariant"}
# tus discovery: answered to anyone, a key or not.
_NO_KEY_NEEDED = {"tusOptions", "tusUploadOptions"}

DESCRIPTION = """
Upload, serve, list, render and delete images: bytes in S3-compatible storage, facts in SQL.

Authenticate with `Authorization: Bearer <api key>` (keys come from
`imagesvc keys create --owner NAME`). Every error is `application/problem+json`
(RFC 9457) with a stable `code`. Image ids are opaque.
""".strip()


_HEADERS = {
    "401": {
        "WWW-Authenticate": {
            "description": '`Bearer realm="imagesvc"`, ...',
            "schema": {"type": "string"},
        }
    },
    "409": {
        "Retry-After": {
            "description": "Seconds, when the first request is in progress.",
            "schema": {"type": "integer"},
        }
    },
    "429": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
    "503": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
}


def problem_response(description: str, status: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=DESCRIPTION,
            routes=app.routes,
            tags=[
                {"name": "images", "description": "The image lifecycle and renditions."},
                {
                    "name": "uploads",
                    "description": "Resumable uploads: tus 1.0.0 (creation, creation-with-upload, "
                    "creation-defer-length, termination, expiration, checksum).",
                },
                {"name": "operations", "description": "Health and readiness probes."},
            ],
        )
        _adjust(document)
        app.openapi_schema = document
        return document

    app.openapi = build  # type: ignore[method-assign]


BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key from `imagesvc keys create --owner NAME`: `Bearer isk_...`.",
}


def _adjust(document: dict[str, Any]) -> None:
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})["ApiKey"] = BEARER
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for path, operations in document["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, response in list(responses.items()):
                if status.startswith(("4", "5")):
                    responses[status] = problem_response(
                        response.get("description") or _ALWAYS.get(status, "Error."), status
                    )
            if path.startswith("/v1/"):
                operation["security"] = [{"ApiKey": []}]
                for status, description in _ALWAYS.items():
                    responses.setdefault(status, problem_response(description, status))
            if "requestBody" in operation:
                responses.setdefault("400", problem_response("The body cannot be parsed."))
            if operation.get("operationId") in _PUBLIC_READS | _NO_KEY_NEEDED:
                operation["security"] = [{"ApiKey": []}, {}]
