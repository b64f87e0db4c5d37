"""tus 1.0.0 on the wire: the headers we parse and send, Upload-Metadata, Upload-Checksum,
and the protocol's own statuses (412, 423, 460...). No I/O here: the endpoints read a
request's headers through these functions and the service never sees a header."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from imagesvc.errors import BadRequest, PayloadTooLarge, ProblemError, UnsupportedMediaType

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
)
CHUNK_TYPE = "application/offset+octet-stream"
CHECKSUMS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
}
# Upload-Metadata is echoed back on HEAD; a bound keeps the header (and the row) small.
METADATA_MAX = 4096
_UINT = re.compile(r"[0-9]{1,19}")
_METADATA_KEY = re.compile(r"[!-+\--~]+")  # visible ASCII but the comma (space excluded)
_VISIBLE = re.compile(r"[ -~]*")


class PreconditionFailed(ProblemError):
    """No (or another) `Tus-Resumable`: the request is not processed."""

    status, code, title = 412, "tus_version_unsupported", "Precondition failed"

    def __init__(self) -> None:
        super().__init__(
            f"send `Tus-Resumable: {TUS_VERSION}`: this server speaks tus {TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )


class UploadGone(ProblemError):
    status, code, title = 410, "upload_expired", "Gone"


class UploadLocked(ProblemError):
    status, code, title = 423, "upload_locked", "Locked"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class OffsetConflict(ProblemError):
    status, code, title = 409, "upload_offset_mismatch", "Conflict"


class ChunkTooLong(PayloadTooLarge):
    """413 for one chunk (it goes past the upload's length): the upload itself stays."""


class ChecksumMismatch(ProblemError):
    status, code, title = 460, "checksum_mismatch", "Checksum mismatch"


def check_resumable(headers: Mapping[str, str]) -> None:
    if headers.get("tus-resumable") != TUS_VERSION:
        raise PreconditionFailed()


def discovery_headers(max_size: int) -> dict[str, str]:
    """What OPTIONS answers, on any URL of the API."""
    return {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    }


def parse_uint(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not _UINT.fullmatch(value):
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(value)


@dataclass(frozen=True, slots=True)
class Creation:
    """The parsed headers of a creation request."""

    length: int | None  # None: deferred
    metadata_header: str | None  # as sent, to echo on HEAD
    filename: str | None
    visibility: str | None


def parse_creation(headers: Mapping[str, str]) -> Creation:
    length = parse_uint(headers.get("upload-length"), "Upload-Length")
    deferred = headers.get("upload-defer-length")
    if deferred is not None and deferred.strip() != "1":
        raise BadRequest("Upload-Defer-Length must be 1")
    if (length is None) == (deferred is None):
        raise BadRequest("send exactly one of Upload-Length and Upload-Defer-Length: 1")
    if length == 0:
        raise BadRequest("the upload is empty: an image has at least one byte")
    raw = headers.get("upload-metadata")
    metadata = parse_metadata(raw)
    return Creation(
        length=length,
        metadata_header=raw.strip() if raw and raw.strip() else None,
        filename=metadata.get("filename"),
        visibility=metadata.get("visibility"),
    )


def parse_metadata(header: str | None) -> dict[str, str]:
    """`key base64,key base64,key` (a key may have no value). Keys we do not use are kept
    only in the echoed header; `filetype` is ignored: the bytes decide the type."""
    if header is None or not header.strip():
        return {}  # tuspy sends an empty header when there is no metadata
    if len(header) > METADATA_MAX or not _VISIBLE.fullmatch(header):
        raise BadRequest(f"Upload-Metadata must be printable ASCII of at most {METADATA_MAX}")
    values: dict[str, str] = {}
    for pair in header.split(","):
        key, _, encoded = pair.strip().partition(" ")
        if not _METADATA_KEY.fullmatch(key) or " " in encoded.strip() or key in values:
            raise BadRequest("Upload-Metadata: pairs are `key base64value`, keys unique")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
            values[key] = decoded.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise BadRequest(f"Upload-Metadata: the value of {key!r} is not base64 UTF-8") from None
    return values


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    digest: bytes

    def hasher(self) -> Any:
        return CHECKSUMS[self.algorithm]()


def parse_checksum(header: str | None) -> Checksum | None:
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise BadRequest(
            f"Upload-Checksum: unsupported algorithm; use one of {', '.join(CHECKSUMS)}"
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise BadRequest("Upload-Checksum: the digest is not base64") from None
    if len(digest) != CHECKSUMS[algorithm]().digest_size:
        raise BadRequest(f"Upload-Checksum: not a {algorithm} digest")
    return Checksum(algorithm, digest)


def check_chunk_type(content_type: str | None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media != CHUNK_TYPE:
        raise UnsupportedMediaType(f"a PATCH body must be sent as Content-Type: {CHUNK_TYPE}")


def is_chunk(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == CHUNK_TYPE


def http_date(moment: datetime) -> str:
    """RFC 9110 IMF-fixdate, as Upload-Expires wants it."""
    return format_datetime(moment.replace(microsecond=0), usegmt=True)
