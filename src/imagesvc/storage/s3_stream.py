"""One S3 request whose body is sent while it arrives (a PipeBody of declared length):
the streamed PutObject of `S3Writer` and the streamed UploadPart of a tus PATCH
(`S3PartWriter`, the adapter's PartWriter) both go through `PipedRequest`.

The request starts with the first byte (its payload unsigned, as every body the adapter
sends: SigV4 would otherwise hash the whole body before sending any of it). It cannot be
rewound, so it is not retried once its body started; a request that ends early (the store
refused it, the connection dropped) surfaces as StorageUnavailable at the next write or at
`result()`, never as a write that waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from imagesvc.storage.bodies import PipeBody
from imagesvc.storage.port import StorageUnavailable
from imagesvc.storage.s3_calls import call as _call

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")


class PipedRequest(Generic[T]):
    def __init__(self, size: int, send: Callable[[PipeBody], Awaitable[T]]) -> None:
        self.pipe = PipeBody(size)
        self._send = send
        self._task: asyncio.Task[T] | None = None

    def _started(self) -> asyncio.Task[T]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._send(self.pipe))
        return self._task

    async def write(self, data: bytes) -> None:
        pipe = self.pipe
        if not pipe.room_for(len(data)):
            raise ValueError("more bytes than the size this write was opened with")
        started = self._task is not None
        task = self._started()
        if started and task.done():
            await task  # raises StorageUnavailable if it failed
            raise StorageUnavailable()  # it ended without taking every byte
        if pipe.offer(data):
            return
        handoff = asyncio.ensure_future(pipe.put(data))
        try:
            # Never wait on a request that already ended: its failure surfaces here.
            await asyncio.wait((handoff, task), return_when=asyncio.FIRST_COMPLETED)
            taken = handoff.done()
        finally:
            if not handoff.done():
                handoff.cancel()
        if not taken:
            await task  # raises StorageUnavailable if it failed
            raise StorageUnavailable()  # it ended without taking every byte

    async def result(self) -> T:
        if self.pipe.accepted != self.pipe.size:
            raise ValueError("fewer bytes than the size this write was opened with")
        return await self._started()

    async def abort(self) -> None:
        """Cancelling the request closes its connection before the declared length was
        sent: the store keeps nothing of it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class S3PartWriter:
    """A part of a multipart upload, streamed as one UploadPart (see port.PartWriter)."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        size: int,
    ) -> None:
        async def send(body: PipeBody) -> str:
            response = await _call(
                "upload_part",
                client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,  # type: ignore[arg-type]  # an async iterable of known length
                    ContentLength=body.size,
                ),
            )
            return response["ETag"]

        async def exists() -> None:
            await _call(
                "list_parts",
                client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, MaxParts=1),
            )

        self._request = PipedRequest(size, send)
        self._exists = exists

    async def write(self, data: bytes) -> None:
        try:
            await self._request.write(data)
        except StorageUnavailable:
            await self._why()
            raise

    async def finish(self) -> str:
        try:
            return await self._request.result()
        except StorageUnavailable:
            await self._why()
            raise

    async def _why(self) -> None:
        """A store may refuse a part of an upload that is gone (aborted, completed) before
        reading its body and drop the connection (moto does); the request cannot be retried
        to hear why. Ask: ObjectMissing then, as from a buffered upload_part."""
        await self._exists()

    async def abort(self) -> None:
        await self._request.abort()
