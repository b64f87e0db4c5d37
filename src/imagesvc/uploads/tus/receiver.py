"""The bytes of one tus PATCH on their way to the store.

The body follows the upload's parked tail: fragments, one object per earlier PATCH whose
bytes did not complete a part. They are read back only when a part is cut (then once, in
order, ahead of the body), never to be rewritten: a PATCH whose bytes do not complete a
part stores only its own bytes, as one more fragment, so parking costs each byte one write
and one read however small the chunks (it used to be one tail object, read back and
rewritten whole by every PATCH: quadratic up to a part). Once the header is known,
each part whose size is known in advance is *streamed*: opened in the store
(`ObjectStore.open_part`, one UploadPart whose body is sent while it arrives) and fed the
fragments, then the body's chunks, as they come. A part's size is known when the PATCH
declared its Content-Length: a full part while the fragments + the rest of the body hold
one, a part of 5 MiB or more that would otherwise be parked at the end, and the upload's
last part (any size) when this body ends the upload. A tus client sends its next chunk
only after our 204, so receiving and storing overlap only this way. Bytes that will be a
fragment (< 5 MiB at the end of a non-final PATCH) and bodies without Content-Length take
the buffered path: a part is gathered whole, then uploaded, one in flight while the next
fills.

A streamed part keeps references to the chunks written into it until it is full (memory: at
most one part per PATCH), so a body cut inside it still keeps what arrived: the part is
given up and its bytes are parked like any others (below).

What is left when the body ends is parked: with the fragments, a part of its own if they
reach the store's 5 MiB minimum, else a new fragment of this PATCH's bytes (a fresh key)
appended to the list. Nothing here is visible to anyone until the service commits the
returned `Progress`: parts uploaded under numbers the row does not list are replaced by the
next PATCH or dropped when the upload completes, an uncommitted fragment is deleted (or
found by gc), and fragments read into a part are deleted only once the row no longer names
them. That is what makes a 460 or a lost lease harmless. The list is bounded
(`_MAX_FRAGMENTS`): a PATCH that would go past it reads the fragments back and parks them
with its own bytes as one (only clients sending chunks of a few KiB ever do that).

The probe: until the header is known the probe sees every byte from offset 0. No part is
cut before that, so the fragments hold every byte so far, and they are fewer than the
header budget (else the upload was refused with 415); a PATCH that starts without the
header reads them for the probe first (and stops reading once it is found). They stay
parked: a part cut later in the same PATCH reads them again, a second read of at most the
header budget, only in the PATCH that finds the header. A header not found within the
first part is 415.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from imagesvc.config import S3_MIN_PART_SIZE
from imagesvc.errors import UnsupportedMediaType
from imagesvc.imaging.probe import ImageInfo
from imagesvc.observability.metrics import RECEIVED_BYTES
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import ObjectStore, PartWriter, StorageUnavailable
from imagesvc.uploads.ingest import MeasuredUpload, UploadLimits
from imagesvc.uploads.tus.protocol import Checksum, ChecksumMismatch, ChunkTooLong
from imagesvc.uploads.tus.repository import Fragment

_RECEIVED = RECEIVED_BYTES.labels("tus")
# Bytes handed to a streamed part in one write at most: a single huge chunk (a whole parked
# tail, or a body an ASGI client sent in one piece) would otherwise sit whole in the HTTP
# transport's buffer, a second copy of it.
_PIECE = 1024 * 1024
# Fragments a record names at most (its JSON stays a few KiB in a TEXT column): 64 PATCHes
# below a part, e.g. chunks of 80 KiB or more, never consolidate before a 5 MiB part.
_MAX_FRAGMENTS = 64


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
    tail: tuple[Fragment, ...]  # the parked tail, in order
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
        declared: int | None = None,
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
        self.declared = declared  # the body's Content-Length, when sent
        # Every byte from offset 0 measured in this process (size, sha256, frames), when
        # this process saw them all: completion then need not read the object back.
        self.chain = chain
        self.etags = list(start.etags)
        self.multipart_id = start.multipart_id
        self.info = start.info
        # Fed from offset 0 while the header is unknown.
        self.probe: MeasuredUpload | None = None if start.info else MeasuredUpload(limits)
        # Bytes not yet in any part: the tail, then the body, in pieces of at most _PIECE.
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._in_flight: asyncio.Task[None] | None = None  # the last part, being stored
        self._part: PartWriter | None = None  # the streamed part being written
        self._part_number = 0
        self._part_left = 0
        self._part_chunks: list[bytes] = []  # its bytes so far, should the body be cut
        self.received = 0  # bytes of this request's body
        # The committed fragments whose bytes are not read back (not in the buffer).
        self.parked: list[Fragment] = list(start.tail)
        self.new_tail: str | None = None  # the fragment written by this PATCH, uncommitted

    @property
    def header_budget(self) -> int:
        return min(self.limits.header_budget, self.part_size)

    @property
    def limit(self) -> int:
        return self.start.length if self.start.length is not None else self.limits.max_upload_bytes

    @property
    def parked_size(self) -> int:
        return sum(fragment.size for fragment in self.parked)

    async def probe_tail(self) -> None:
        """Before the body, while the header is unknown: the fragments are every byte so
        far (no part was cut yet), so the probe reads them first. Only the probe: they stay
        parked (see the module's docstring)."""
        for fragment in self.parked:
            if self.probe is None:
                return  # found
            self._probe(await self._read(fragment))

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
            if self.info is not None:
                await self._pump()

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

    async def park(self, *, content_type: str) -> list[Fragment]:
        """The body ended before the upload did: with the fragments, what is buffered goes
        to a part (5 MiB or more), else it becomes one more fragment. Returns the parked
        tail to commit."""
        await self._give_up_part()  # a body cut inside a streamed part: keep its bytes
        if self.info is not None and self.parked_size + self._buffered >= S3_MIN_PART_SIZE:
            await self._unpark()
        elif self._buffered and len(self.parked) >= _MAX_FRAGMENTS:
            await self._unpark()  # consolidate: the buffer is parked as one fragment
        rest = self._take(self._buffered)
        if self.info is not None and len(rest) >= S3_MIN_PART_SIZE:
            await self._send_part(rest)
            rest = b""
        await self.drain()
        if not rest:
            return list(self.parked)
        self.lease.check()
        key = self.layout.tail(self.start.image_id)
        self.new_tail = key
        await self.store.put_object(key, rest, content_type="application/octet-stream")
        return [*self.parked, Fragment(key, len(rest))]

    async def flush(self, *, content_type: str) -> None:
        """The last byte is here: every byte goes to the store, as the last part of the
        multipart upload, or as the whole object when no part was cut. (The service
        assembles the parts once the row says `completing`.)"""
        await self._give_up_part()  # (none is open: with the last byte every part is full)
        await self._unpark()  # (with Content-Length a streamed last part took them already)
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
        """Stop the parts being written (after a failure); they are never committed."""
        task, self._in_flight = self._in_flight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        part, self._part, self._part_chunks = self._part, None, []
        if part is not None:
            await part.abort()

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

    # --- the buffer ------------------------------------------------------------------------

    async def _read(self, fragment: Fragment) -> bytes:
        stream = await self.store.open_read(fragment.key)  # ObjectMissing: the upload is gone
        try:
            data = b"".join([chunk async for chunk in stream])
        finally:
            await stream.aclose()
        if len(data) != fragment.size:
            raise StorageUnavailable("the store lost part of this upload; retry shortly")
        return data

    async def _unpark(self) -> None:
        """A part is about to be cut: it begins with the fragments, read back once, in
        order, ahead of the body's bytes already buffered. (Fewer than 5 MiB of them, or
        the header budget: memory stays within about a part.) The row still names them
        until the service commits; it deletes them after."""
        pieces: list[bytes] = []
        for fragment in self.parked:
            data = await self._read(fragment)
            pieces.extend(data[i : i + _PIECE] for i in range(0, len(data), _PIECE))
        self._buffer.extendleft(reversed(pieces))
        self._buffered += self.parked_size
        self.parked = []

    def _append(self, data: bytes) -> None:
        if len(data) > _PIECE:  # cut once here, so later takes never re-copy a long rest
            self._buffer.extend(data[i : i + _PIECE] for i in range(0, len(data), _PIECE))
        else:
            self._buffer.append(data)
        self._buffered += len(data)

    def _pop(self, limit: int) -> bytes:
        """The buffer's first piece, or its first `limit` bytes."""
        piece = self._buffer.popleft()
        if len(piece) > limit:
            self._buffer.appendleft(piece[limit:])
            piece = piece[:limit]
        self._buffered -= len(piece)
        return piece

    def _take(self, size: int) -> bytes:
        pieces = []
        while size > 0 and self._buffer:
            pieces.append(self._pop(size))
            size -= len(pieces[-1])
        return b"".join(pieces)

    # --- streamed parts ----------------------------------------------------------------------

    async def _pump(self) -> None:
        """Move buffered bytes into parts, as far as their sizes are known."""
        while self._buffer:
            if self._part is not None:
                await self._write_part(self._pop(self._part_left))
                continue
            size = self._streamed_size()
            if size is not None:
                await self._unpark()
                await self._open_part(size)
            elif self.declared is None and self.parked_size + self._buffered >= self.part_size:
                await self._unpark()
                await self._send_part(self._take(self.part_size))  # no Content-Length
            else:
                return  # the tail to be parked, or the whole object of a small upload

    def _streamed_size(self) -> int | None:
        """The size of the next part when it is known now, else None (buffer the bytes)."""
        if self.declared is None:
            return None
        # The bytes not in any part yet: the fragments, the buffer and the rest of the body.
        left = self.parked_size + self._buffered + max(0, self.declared - self.received)
        if left >= self.part_size:
            return self.part_size
        length = self.start.length
        if length is not None and self.start.offset + self.declared == length:
            # The upload's last part, of any size; with no multipart upload at all, `flush`
            # puts the whole (small) object instead.
            return left if self.multipart_id is not None else None
        # What park would send as a part at the end, rather than as a tail.
        return left if left >= S3_MIN_PART_SIZE else None

    async def _open_part(self, size: int) -> None:
        number = await self._next_number()
        self._part = await self.store.open_part(
            self.start.storage_key, self._multipart(), number, size
        )
        self._part_number, self._part_left = number, size

    async def _write_part(self, data: bytes) -> None:
        assert self._part is not None
        self._part_chunks.append(data)
        self._part_left -= len(data)
        await self._part.write(data)
        if self._part_left:
            return
        part, number = self._part, self._part_number
        self._part, self._part_chunks = None, []  # every byte is on its way: none to keep
        await self.drain()  # the part before: its failure surfaces before another goes
        self._in_flight = asyncio.create_task(self._finish_part(part, number))

    async def _finish_part(self, part: PartWriter, number: int) -> None:
        try:
            self.etags[number - 1] = await part.finish()
        except BaseException:
            await part.abort()
            raise

    async def _give_up_part(self) -> None:
        """The body ended inside a streamed part (it was cut short): the part cannot be
        finished, so it is aborted and its bytes go back to the buffer, to be parked."""
        part, self._part = self._part, None
        if part is None:
            return
        await part.abort()
        assert self._part_number == len(self.etags)
        self.etags.pop()  # its number is the last; the next part takes it again
        chunks, self._part_chunks = self._part_chunks, []
        self._buffer.extendleft(reversed(chunks))
        self._buffered += sum(len(chunk) for chunk in chunks)

    # --- buffered parts ----------------------------------------------------------------------

    async def _send_part(self, part: bytes) -> None:
        await self.drain()  # its failure surfaces here, before another part goes
        number = await self._next_number()
        self._in_flight = asyncio.create_task(self._upload(number, part))

    async def _upload(self, number: int, part: bytes) -> None:
        etag = await self.store.upload_part(self.start.storage_key, self._multipart(), number, part)
        self.etags[number - 1] = etag

    async def _next_number(self) -> int:
        """Claim the next part number, once the lease allows starting a part at all."""
        self.lease.check()
        if self.multipart_id is None:
            assert self.info is not None
            self.multipart_id = await self.store.create_multipart(
                self.start.storage_key, content_type=self.info.format.content_type
            )
            await self.record_multipart(self.multipart_id)
            self.lease.check()
        self.etags.append("")
        return len(self.etags)

    def _multipart(self) -> str:
        assert self.multipart_id is not None
        return self.multipart_id
