"""Request bodies of known length for the S3 adapter, built so that no byte of an upload is
copied on its way to the store (issue #14: three copies of every byte in flight were the
bulk of the server's memory under concurrent uploads).

- `ChunksBody`: one buffered part, kept as the chunks it arrived in. Joining them would copy
  the part; and a single `bytes` of a whole part handed to the HTTP client is written to
  the socket in one call, so the transport keeps a second copy of whatever the socket could
  not take at once. botocore rewinds it (`seek`/`tell`) for a retry; aiohttp sends it
  chunk by chunk (`__aiter__`), and waits for the socket between chunks. botocore reads
  it (`read`, 1 MiB at a time, short-lived copies) only to sign its payload, which the
  adapter does only where the transport does not protect it (`S3ObjectStore.held_client`).
- `PipeBody`: a body pulled from the upload as it arrives (a single PutObject whose length
  the client declared), through a one-chunk hand-off: nothing of it is buffered. It cannot
  be rewound once sending began, so such a request is not retried; a signed payload, which
  needs the whole body hashed before sending, is impossible for it.

Neither imports an SDK: the HTTP client sees an async iterable with a length.
"""

from __future__ import annotations

import asyncio
import bisect
import io
from collections.abc import AsyncIterator, Sequence


class ChunksBody:
    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = list(chunks)
        self._starts: list[int] = []  # offset of each chunk
        offset = 0
        for chunk in self._chunks:
            self._starts.append(offset)
            offset += len(chunk)
        self._size = offset
        self._position = 0

    def __len__(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, min(self._size, base + offset))
        return self._position

    def _locate(self) -> tuple[int, int]:
        """(chunk index, offset inside it) of the current position."""
        index = bisect.bisect_right(self._starts, self._position) - 1
        return index, self._position - self._starts[index]

    def read(self, size: int = -1) -> bytes:
        """botocore accepts only bytes or file-like bodies (ones with `read`), and reads
        one only to sign its payload (in 1 MiB steps): short-lived copies, the chunks stay
        as they are. Unsigned payloads are sent without calling this."""
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        if end <= self._position:
            return b""
        pieces = []
        index, skip = self._locate()
        while self._position < end:
            chunk = self._chunks[index]
            take = min(len(chunk) - skip, end - self._position)
            pieces.append(chunk[skip : skip + take] if skip or take < len(chunk) else chunk)
            self._position += take
            index, skip = index + 1, 0
        return b"".join(pieces)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._position >= self._size:
            return
        index, skip = self._locate()
        while index < len(self._chunks):
            chunk = self._chunks[index]
            self._position += len(chunk) - skip
            yield chunk[skip:] if skip else chunk  # a cut chunk only after a rewind mid-way
            index, skip = index + 1, 0


class PipeBody:
    """Exactly `size` bytes, handed over one chunk at a time by `put()` while the request
    is being sent."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slot: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)
        self.started = False
        self.accepted = 0  # bytes given to put()

    def __len__(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # botocore rewinds a body before it retries a request: possible only while nothing
        # has been sent (a connection that failed before the body), never after.
        if offset != 0 or whence != io.SEEK_SET or self.started:
            raise io.UnsupportedOperation("a streamed body cannot be rewound")
        return 0

    def tell(self) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        # botocore takes only bytes or "file-like" bodies (ones with `read`); it reads one
        # only to hash a signed payload, and streamed bodies are always sent unsigned.
        raise io.UnsupportedOperation("a streamed body is sent, never read")

    def room_for(self, length: int) -> bool:
        return self.accepted + length <= self.size

    def offer(self, chunk: bytes) -> bool:
        """Hand the chunk over if the sender took the previous one (the usual case)."""
        if self._slot.full():
            return False
        self._slot.put_nowait(chunk)
        self.accepted += len(chunk)
        return True

    async def put(self, chunk: bytes) -> None:
        """Wait until the sender took the previous chunk, then hand this one over."""
        await self._slot.put(chunk)
        self.accepted += len(chunk)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        sent = 0
        while sent < self.size:
            chunk = await self._slot.get()
            sent += len(chunk)
            yield chunk
