"""The upload body, parsed as it streams: multipart/form-data or a raw image body.

FastAPI's `UploadFile` spools the whole file to disk before the handler runs; here the body is
read from `request.stream()` and fed chunk by chunk to python-multipart's incremental parser
(the parser Starlette itself uses), so the file's bytes reach the object store as they arrive
and at most one network chunk is held per parse step.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from imagesvc.errors import BadRequest, PayloadTooLarge, ProblemError, UnsupportedMediaType
from imagesvc.observability.metrics import RECEIVED_BYTES
from imagesvc.uploads.ingest import UploadRequest

# Text parts are tiny (visibility=public); a bigger one is abuse, not a form.
MAX_FIELD_BYTES = 1024
MAX_PARTS = 16
MAX_BOUNDARY = 70  # RFC 2046 §5.1.1
# Room for boundaries, part headers and text fields on top of the file's own bytes.
MULTIPART_OVERHEAD = 64 * 1024
RAW_TYPES = ("application/octet-stream",)
_RECEIVED = RECEIVED_BYTES.labels("post")


class ClientGone(ProblemError):
    """The client disconnected mid-upload; nobody will read this response."""

    status, code, title = 400, "client_disconnected", "Client disconnected"


async def read_upload(
    request: Request, *, owner: str, visibility: str | None, max_file_bytes: int
) -> UploadRequest:
    """The upload in `request`'s body, as its bytes arrive: the file part of a multipart
    body (text parts before it are read, those after it once the file ends), or a raw
    body with an optional X-Filename."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    media = content_type.decode("latin-1").lower()
    if media == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise BadRequest(
                f"malformed multipart body: the Content-Type needs a boundary of 1 to "
                f"{MAX_BOUNDARY} characters"
            )
        limit = max_file_bytes + MULTIPART_OVERHEAD
        reader = _MultipartReader(_counted(request, limit), boundary)
        return await reader.start(owner=owner, visibility=visibility)
    if media and not (media.startswith("image/") or media in RAW_TYPES):
        raise UnsupportedMediaType(
            "send multipart/form-data with a `file` part, or the image itself with "
            "Content-Type image/* or application/octet-stream"
        )
    declared = request.headers.get("content-length")
    size = int(declared) if declared and declared.isdigit() else None
    if size is not None and size > max_file_bytes:
        raise PayloadTooLarge(f"the upload is larger than the limit of {max_file_bytes} bytes")
    return UploadRequest(
        owner=owner,
        chunks=_counted(request, None),
        filename=_x_filename(request),
        fields={},
        visibility=visibility,
        # The server delivers exactly Content-Length bytes or a disconnect, so the store
        # may stream a body that fits in one part straight into one PutObject.
        size=size or None,
    )


def _x_filename(request: Request) -> str | None:
    """X-Filename: percent-encoded UTF-8 (portable), or raw UTF-8 bytes (what many clients
    send; Starlette hands header bytes over as latin-1, so undo that first)."""
    raw = request.headers.get("x-filename")
    if not raw:
        return None
    with contextlib.suppress(UnicodeError):  # else it is genuinely latin-1
        raw = raw.encode("latin-1").decode("utf-8")
    return unquote(raw, errors="replace")


async def _counted(request: Request, limit: int | None) -> AsyncIterator[bytes]:
    """The request body's chunks; a disconnect becomes ClientGone, and past `limit` total
    body bytes (a multipart Content-Length says nothing about the file) a 413."""
    seen = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            seen += len(chunk)
            _RECEIVED.inc(len(chunk))
            if limit is not None and seen > limit:
                raise PayloadTooLarge(
                    f"the upload is larger than the limit of {limit - MULTIPART_OVERHEAD} bytes"
                )
            yield chunk
    except ClientDisconnect:
        raise ClientGone("the client disconnected before the upload finished") from None


class _MultipartReader:
    """Drives MultipartParser over the body and turns its callbacks into a file stream."""

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes) -> None:
        self._body = body
        self._events: list[tuple[str, bytes]] = []
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": lambda: self._events.append(("begin", b"")),
                "on_header_field": self._on("field"),
                "on_header_value": self._on("value"),
                "on_header_end": lambda: self._events.append(("header_end", b"")),
                "on_headers_finished": lambda: self._events.append(("headers_done", b"")),
                "on_part_data": self._on("data"),
                "on_part_end": lambda: self._events.append(("end", b"")),
                "on_end": lambda: self._events.append(("finished", b"")),
            },
        )
        self.fields: dict[str, str] = {}
        self._parts = 0
        self._finished = False
        # State of the part being parsed.
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._part_name: str | None = None
        self._in_file = False
        self._file_seen = False
        self._field_value = bytearray()
        # One event stream for the whole body: start() reads up to the file part, then
        # _file_chunks() continues from exactly there.
        self._outputs = self._pump()

    def _on(self, kind: str) -> Callable[[bytes, int, int], None]:
        def callback(data: bytes, start: int, end: int) -> None:
            self._events.append((kind, data[start:end]))

        return callback

    async def start(self, *, owner: str, visibility: str | None) -> UploadRequest:
        """Parse until the `file` part's headers are read; text parts before it are kept.
        The file's bytes are then pulled from the same event stream, as they arrive."""
        async for kind, data in self._outputs:
            if kind == "file_start":
                filename = data.decode("utf-8", errors="replace") if data else None
                return UploadRequest(
                    owner=owner,
                    chunks=self._file_chunks(),
                    filename=filename,
                    fields=self.fields,
                    visibility=visibility,
                )
        self._check_finished()
        raise BadRequest("the multipart body has no `file` part")

    async def _file_chunks(self) -> AsyncIterator[bytes]:
        async for kind, data in self._outputs:
            if kind == "file_data":
                yield data
        self._check_finished()

    def _check_finished(self) -> None:
        if not self._finished:
            raise BadRequest("malformed multipart body: it ends before the closing boundary")

    async def _pump(self) -> AsyncIterator[tuple[str, bytes]]:
        """Feed body chunks to the parser; yield file_start / file_data as they appear."""
        while not self._finished:
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                return
            try:
                self._parser.write(chunk)
            except FormParserError:
                raise BadRequest("malformed multipart body") from None
            events, self._events = self._events, []
            for kind, data in events:
                out = self._handle(kind, data)
                if out is not None:
                    yield out

    def _handle(self, kind: str, data: bytes) -> tuple[str, bytes] | None:
        if kind == "begin":
            self._parts += 1
            if self._parts > MAX_PARTS:
                raise BadRequest(f"the multipart body has more than {MAX_PARTS} parts")
            self._headers = {}
            self._part_name, self._in_file = None, False
            self._field_value = bytearray()
        elif kind == "field":
            self._header_name += data
        elif kind == "value":
            self._header_value += data
        elif kind == "header_end":
            name = self._header_name.decode("latin-1").strip().lower()
            self._headers[name] = bytes(self._header_value).strip()
            self._header_name, self._header_value = bytearray(), bytearray()
        elif kind == "headers_done":
            return self._begin_part()
        elif kind == "data":
            if self._in_file:
                return ("file_data", data)
            self._field_value += data
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise BadRequest(
                    f"form field {self._part_name!r} is longer than {MAX_FIELD_BYTES} bytes"
                )
        elif kind == "end":
            if not self._in_file and self._part_name is not None:
                self.fields[self._part_name] = self._field_value.decode("utf-8", errors="replace")
            self._in_file = False
        elif kind == "finished":
            self._finished = True
        return None

    def _begin_part(self) -> tuple[str, bytes] | None:
        disposition, params = parse_options_header(self._headers.get("content-disposition"))
        if disposition.lower() != b"form-data" or b"name" not in params:
            raise BadRequest("malformed multipart body: a part has no form-data name")
        self._part_name = params[b"name"].decode("utf-8", errors="replace")
        if self._part_name != "file":
            return None
        if self._file_seen:
            raise BadRequest("the multipart body has more than one `file` part")
        self._file_seen = self._in_file = True
        extended = extended_filename(self._headers.get("content-disposition", b""))
        if extended is not None:  # RFC 7578 §4.2 / RFC 8187: it wins over `filename=`
            return ("file_start", extended.encode())
        return ("file_start", params.get(b"filename", b""))


_CHARSETS = ("utf-8", "iso-8859-1")


def _parameters(header: str) -> list[str]:
    """The `;`-separated parts of a header value, `;` inside a quoted string kept (a
    hostile `filename="a; filename*=..."` is one parameter, not two)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in header:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def extended_filename(disposition: bytes) -> str | None:
    """`filename*=UTF-8''na%C3%AFve.jpg` of a part's Content-Disposition, decoded; None when
    absent or unusable (another charset, bad percent-encoding), so `filename=` applies.
    python-multipart drops `*` parameters, so they are read here from the raw header."""
    for part in _parameters(disposition.decode("latin-1"))[1:]:
        name, equals, value = part.partition("=")
        if not equals or name.strip().lower() != "filename*":
            continue
        charset, first, rest = value.strip().partition("'")
        _language, second, encoded = rest.partition("'")
        if not (first and second) or charset.lower() not in _CHARSETS:
            return None
        try:
            return unquote(encoded, encoding=charset.lower(), errors="strict") or None
        except UnicodeDecodeError:
            return None
    return None
