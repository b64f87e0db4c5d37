"""Bytes that reached the store without streaming through `Ingest` (direct uploads, tus):
read back once and measured exactly as a streamed upload is (type and pixels from the
header probe, frames, size and sha256 of every byte), so the same limits and the same
facts hold whichever way the bytes came."""

from __future__ import annotations

from dataclasses import dataclass

from imagesvc.errors import BadRequest
from imagesvc.imaging.probe import ImageInfo
from imagesvc.storage.port import ObjectStore
from imagesvc.uploads.ingest import INLINE_PLACEHOLDER, MeasuredUpload, UploadLimits


@dataclass(frozen=True, slots=True)
class Measured:
    upload: MeasuredUpload  # size, sha256
    info: ImageInfo  # type, width, height, frames
    # The bytes, when small enough to keep for the placeholder decode (else None: the
    # placeholder reads them back).
    source: bytes | None


async def measure_stored(store: ObjectStore, key: str, limits: UploadLimits) -> Measured:
    """One streamed read of `key`. Raises ObjectMissing, UnsupportedMediaType (not an
    image), PayloadTooLarge (bytes or pixels over the limits), BadRequest (empty)."""
    upload = MeasuredUpload(limits)
    kept: list[bytes] | None = []
    stream = await store.open_read(key)
    try:
        async for chunk in stream:
            upload.take(chunk)
            if kept is not None and upload.size <= INLINE_PLACEHOLDER:
                kept.append(chunk)
            else:
                kept = None
    finally:
        await stream.aclose()
    if upload.size == 0:
        raise BadRequest("the stored object is empty")
    info = upload.finish()
    return Measured(upload, info, b"".join(kept) if kept is not None else None)
