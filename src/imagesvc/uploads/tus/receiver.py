"""The bytes of one tus PATCH on their way to the store.

The body is appended to the upload's parked tail (read back first) in one buffer; each time
the buffer holds a part, the part goes to the store's multipart upload, with at most one
part in flight while the next fills (memory: about two parts per PATCH). What is left when
the body ends becomes the next tail: a part of its own if it reaches the store's 5 MiB
minimum, else a fresh tail object. Nothing here is visible to anyone until the service
commits the returned `Progress`: parts uploaded under numbers the row does not list are
replaced by the next PATCH or dropped when the upload completes, and an uncommitted tail
object is deleted (or found by gc). That is what makes a 460 or a lost lease harmless.

Until the header is known the probe sees every byte from offset 0 (no part is cut before
that, so the tail holds them all), and a header not found within the first part is 415.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from imagesvc.config import S3_MIN_PART_SIZE
from imagesvc.errors import UnsupportedMediaType
from imagesvc.imaging.probe import ImageInfo
from imagesvc.observability.metrics import RECEIVED_BYTES
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import ObjectStore, StorageUnavailable, read_object
from imagesvc.uploads.ingest import MeasuredUpload, UploadLimits
from imagesvc.uploads.tus.protocol import Checksum, ChecksumMismatch, ChunkTooLong

_RECEIVED = RECEIVED_BYTES.labels("tus")


class LeaseLost(StorageUnavailable):
    """The lease was not confirmed recently enough to keep writing parts safely."""

    def __init__(self) -> None:
        super().__init__("the upload's lease was lost; retry the PATCH")


@dataclass(slots=True)
class Lease:
    """Our hold on the upload, as the heartbeat last confirmed it."""

    seconds: float
    confirmed: float = field(default_factory=time.monotonic)
    lost: bool = False

    def check(self) -> None:
        # A part may take a while; only start one with half the lease still certainly ours,
        # so no other PATCH can have claimed the upload while it is written.
        if self.lost or time.monotonic() - self.confirmed > self.seconds / 2:
            raise LeaseLost()


@dataclass(frozen=True, slots=True)
class Start:
    """The committed state a PATCH begins from."""

    image_id: str
    storage_key: str
    offset: int
    length: int | None  # known length (from creation or this PATCH's Upload-Length)
    etags: list[str]
    multipart_id: str | None
    tail_key: str | None
    tail_size: int
    info: ImageInfo | None  # the header, once probed


class Receiver:
    def __init__(
        self,
        store: ObjectStore,
        layout: KeyLayout,
        limits: UploadLimits,
        *,
        part_size: int,
        start: Start,
        lease: Lease,
        checksum: Checksum | None,
        record_multipart: Callable[[str], Awaitable[None]],
        chain: MeasuredUpload | None = None,
    ) -> None:
        self.store = store
        self.layout = layout
        self.limits = limits
        self.part_size = part_size
        self.start = start
        self.lease = lease
        self.checksum = checksum
        self.hasher = checksum.hasher() if checksum else None
        self.record_multipart = record_multipart
        # Every byte from offset 0 measured in this process (size, sha256, frames), when
        # this process saw them all: completion then need not read the object back.
        self.chain = chain
        self.etags = list(start.etags)
        self.multipart_id = start.multipart_id
        self.info = start.info
        # Fed from offset 0 while the header is unknown.
        self.probe: MeasuredUpload | None = None if start.info else MeasuredUpload(limits)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._in_flight: asyncio.Task[None] | None = None
        self.received = 0  # bytes of this request's body
        self.new_tail: str | None = None  # written by this PATCH, not yet committed

    @property
    def header_budget(self) -> int:
        return min(self.limits.header_budget, self.part_size)

    @property
    def limit(self) -> int:
        return self.start.length if self.start.length is not None else self.limits.max_upload_bytes

    async def load_tail(self) -> None:
        if not self.start.tail_key or not self.start.tail_size:
            return
        tail = await read_object(
            self.store, self.start.tail_key, size=self.start.tail_size, limit=self.part_size
        )
        if len(tail) != self.start.tail_size:
            raise StorageUnavailable("the store lost part of this upload; retry shortly")
        if self.probe is not None:
            self._probe(tail)  # the tail is every byte so far: no part was cut yet
        self._append(tail)

    async def receive(self, chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            if not chunk:
                continue
            self.received += len(chunk)
            _RECEIVED.inc(len(chunk))
            if self.start.offset + self.received > self.limit:
                raise ChunkTooLong(f"the chunk goes past the upload's length of {self.limit} bytes")
            if self.hasher is not None:
                self.hasher.update(chunk)
            if self.probe is not None:
                self._probe(chunk)
            if self.chain is not None:
                self.chain.take(chunk)
            self._append(chunk)
            while self.info is not None and self._buffered >= self.part_size:
                await self._send_part(self._take(self.part_size))

    def verify(self) -> None:
        """The body ended: its checksum decides whether anything of it counts."""
        checksum, hasher = self.checksum, self.hasher
        if checksum is not None and hasher is not None and hasher.digest() != checksum.digest:
            raise ChecksumMismatch(
                f"the chunk's {checksum.algorithm} does not match Upload-Checksum; "
                "it was discarded and the offset is unchanged"
            )

    @property
    def offset(self) -> int:
        return self.start.offset + self.received

    def finish_probe(self) -> ImageInfo:
        """At the last byte, before anything is assembled: the header must be known."""
        if self.info is None:
            assert self.probe is not None
            self.info = self.probe.finish()
        return self.info

    async def park(self, *, content_type: str) -> tuple[str | None, int]:
        """The body ended before the upload did: keep what is buffered as a part (5 MiB or
        more) or as a new tail object. Returns the tail (key, size) to commit."""
        rest = self._take(self._buffered)
        if self.info is not None and len(rest) >= S3_MIN_PART_SIZE:
            await self._send_part(rest)
            rest = b""
        await self.drain()
        if not rest:
            return None, 0
        self.lease.check()
        key = self.layout.tail(self.start.image_id)
        self.new_tail = key
        await self.store.put_object(key, rest, content_type="application/octet-stream")
        return key, len(rest)

    async def flush(self, *, content_type: str) -> None:
        """The last byte is here: every byte goes to the store, as the last part of the
        multipart upload, or as the whole object when no part was cut. (The service
        assembles the parts once the row says `completing`.)"""
        rest = self._take(self._buffered)
        if self.multipart_id is None:
            self.lease.check()
            await self.store.put_object(self.start.storage_key, rest, content_type=content_type)
            return
        if rest:
            await self._send_part(rest)  # the last part may be of any size
        await self.drain()

    async def drain(self) -> None:
        if self._in_flight is not None:
            task, self._in_flight = self._in_flight, None
            await task

    async def cancel(self) -> None:
        """Stop the part in flight (after a failure); its upload is never committed."""
        task, self._in_flight = self._in_flight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def _probe(self, data: bytes) -> None:
        assert self.probe is not None
        self.probe.take(data)  # 415 not an image, 413 pixels over the limit
        info = self.probe.probe.info
        if info is not None:
            self.info = info
            self.probe = None
        elif self.probe.size > self.header_budget:
            raise UnsupportedMediaType(
                f"no image header was found in the first {self.header_budget} bytes"
            )

    def _append(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)

    def _take(self, size: int) -> bytes:
        joined = b"".join(self._buffer)
        part, rest = joined[:size], joined[size:]
        self._buffer = [rest] if rest else []
        self._buffered = len(rest)
        return part

    async def _send_part(self, part: bytes) -> None:
        self.lease.check()
        if self.multipart_id is None:
            assert self.info is not None
            self.multipart_id = await self.store.create_multipart(
                self.start.storage_key, content_type=self.info.format.content_type
            )
            await self.record_multipart(self.multipart_id)
        await self.drain()  # its failure surfaces here, before another part goes
        self.lease.check()
        number = len(self.etags) + 1
        self.etags.append("")
        self._in_flight = asyncio.create_task(self._upload(number, part))

    async def _upload(self, number: int, part: bytes) -> None:
        assert self.multipart_id is not None
        etag = await self.store.upload_part(self.start.storage_key, self.multipart_id, number, part)
        self.etags[number - 1] = etag
