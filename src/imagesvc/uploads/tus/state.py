"""What the tus service hands back and takes in: an upload's state as HEAD reports it, a
PATCH body, and the internal signals of the state machine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

from imagesvc.errors import ProblemError
from imagesvc.images.models import Image, ResumableState, ResumableUpload
from imagesvc.imaging.probe import FORMATS, ImageInfo


@dataclass(frozen=True, slots=True)
class UploadState:
    """What HEAD (and every successful answer) reports."""

    id: str
    offset: int
    length: int | None
    metadata: str | None
    expires_at: datetime | None  # None once done
    image_id: str | None  # set once the image is ready


@dataclass(frozen=True, slots=True)
class Body:
    """A PATCH body as the endpoint hands it over: the chunks, and after them whether the
    client cut the body short (disconnected)."""

    chunks: AsyncIterator[bytes]
    declared: int | None  # Content-Length, when sent
    cut: Callable[[], bool]  # after the chunks: did the client disconnect mid-body?


class Refused(Exception):
    """Internal: the bytes ended the upload (415/413); carries the client's error."""

    def __init__(self, error: ProblemError) -> None:
        self.error = error


def state_of(upload: ResumableUpload) -> UploadState:
    done = upload.state == ResumableState.DONE
    return UploadState(
        id=upload.id,
        offset=upload.upload_offset,
        length=upload.upload_length,
        metadata=upload.upload_metadata,
        expires_at=None if done else upload.expires_at,
        image_id=upload.id if done else None,
    )


def info_of(image: Image) -> ImageInfo | None:
    if not image.content_type:
        return None
    fmt = next(f for f in FORMATS if f.content_type == image.content_type)
    return ImageInfo(fmt, image.width, image.height, max(image.frames, 1))


class Finished(Exception):
    """Internal: a PATCH of a finished upload at its end; nothing to do but answer."""

    def __init__(self, state: UploadState) -> None:
        self.state = state


class ChunkCut(ProblemError):
    """A body with Upload-Checksum ended early: it cannot be verified, so none of it counts."""

    status, code, title = 400, "client_disconnected", "Client disconnected"

    def __init__(self) -> None:
        super().__init__("the chunk ended before its Upload-Checksum could be verified")
