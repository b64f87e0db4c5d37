"""Streaming one object to S3 (the adapter's ObjectWriter)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from imagesvc.storage.bodies import ChunksBody, PipeBody
from imagesvc.storage.s3_calls import best_effort as _best_effort
from imagesvc.storage.s3_calls import call as _call
from imagesvc.storage.s3_stream import PipedRequest

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef


class S3Writer:
    """Streams one object to S3. Three ways, by what is known of its length:

    - declared (`size`) and within one part: one PutObject whose body is pulled from the
      upload as it arrives (PipeBody); nothing is buffered, and the request is not retried
      once its body started (it cannot be rewound);
    - otherwise, a body that fits in one part: buffered, then one PutObject;
    - larger: a multipart upload, one part filling while at most `concurrency` parts are in
      flight (memory: at most concurrency + 1 parts per upload).

    Buffered parts stay the chunks they arrived in (ChunksBody): never joined, never
    copied on their way to the socket.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        content_type: str,
        part_size: int,
        *,
        concurrency: int = 2,
        size: int | None = None,
        held_client: S3Client | None = None,
    ) -> None:
        # Streamed bodies go through `client` (unsigned payloads); buffered ones through
        # `held_client` (see S3ObjectStore.held_client).
        self._held_client = held_client or client
        self._concurrency = concurrency
        self._client = client
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._part_size = part_size
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._in_flight: list[asyncio.Task[None]] = []
        self._creating: asyncio.Future[None] | None = None
        self._finished = False
        self._streamed: PipedRequest[None] | None = None
        if size is not None and 0 < size <= part_size:
            self._streamed = PipedRequest(size, self._put_streamed)

    async def write(self, data: bytes) -> None:
        if self._streamed is not None:
            await self._streamed.write(data)
            return
        while self._pending_size + len(data) >= self._part_size:
            # Complete the part with the head of this chunk; the tail starts the next one.
            cut = self._part_size - self._pending_size
            self._pending.append(data[:cut])
            data = data[cut:]
            await self._send_part(self._take_pending())
        if data:
            self._pending.append(data)
            self._pending_size += len(data)

    def _take_pending(self) -> ChunksBody:
        body = ChunksBody(self._pending)
        self._pending, self._pending_size = [], 0
        return body

    # --- one PutObject, streamed ----------------------------------------------------------

    async def _put_streamed(self, pipe: PipeBody) -> None:
        await _call(
            "put_object",
            self._client.put_object(
                Bucket=self._bucket,
                Key=self._key,
                Body=pipe,  # type: ignore[arg-type]  # an async iterable of known length
                ContentLength=pipe.size,
                ContentType=self._content_type,
            ),
        )

    # --- multipart ----------------------------------------------------------------------

    async def _send_part(self, part: ChunksBody) -> None:
        if self._upload_id is None:
            # A task, and shielded: if we are cancelled half way, S3 may still open the
            # upload; the task records its id anyway, and abort() waits for it.
            self._creating = asyncio.ensure_future(self._create_upload())
            await asyncio.shield(self._creating)
        while len(self._in_flight) >= self._concurrency:
            # The oldest part first: its failure surfaces here, before more are sent.
            await self._in_flight.pop(0)
        number = len(self._parts) + 1
        self._parts.append({"PartNumber": number})
        self._in_flight.append(asyncio.create_task(self._upload_part(number, part)))

    async def _create_upload(self) -> None:
        created = await _call(
            "create_multipart_upload",
            self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._key, ContentType=self._content_type
            ),
        )
        self._upload_id = created["UploadId"]

    async def _upload_part(self, number: int, part: ChunksBody) -> None:
        assert self._upload_id is not None
        response = await _call(
            "upload_part",
            self._held_client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=part,  # type: ignore[arg-type]  # file-like and async iterable
            ),
        )
        self._parts[number - 1]["ETag"] = response["ETag"]

    async def _wait_in_flight(self) -> None:
        while self._in_flight:
            await self._in_flight.pop(0)

    async def complete(self) -> int | None:
        confirmed: int | None = None
        if self._streamed is not None:
            await self._streamed.result()
            confirmed = self._streamed.pipe.size  # PutObject stores exactly Content-Length
        elif self._upload_id is None:
            body = self._take_pending()
            confirmed = len(body)  # PutObject stores exactly Content-Length bytes, or fails
            await _call(
                "put_object",
                self._held_client.put_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    Body=body,  # type: ignore[arg-type]  # file-like and async iterable
                    ContentType=self._content_type,
                ),
            )
        else:
            if self._pending:
                await self._send_part(self._take_pending())
            await self._wait_in_flight()
            assert self._upload_id is not None
            confirmed = await complete_upload(
                self._client, self._bucket, self._key, self._upload_id, self._parts
            )
        self._finished = True
        return confirmed

    async def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._pending, self._pending_size = [], 0
        tasks, self._in_flight = self._in_flight, []
        if self._streamed is not None:
            await self._streamed.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._creating is not None:
            await asyncio.gather(self._creating, return_exceptions=True)
        if self._upload_id is not None:
            await _best_effort(
                lambda: self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id or ""
                )
            )


async def complete_upload(
    client: S3Client, bucket: str, key: str, upload_id: str, parts: list[CompletedPartTypeDef]
) -> int | None:
    """Complete a multipart upload; return the object's size as the store lists its parts,
    or None when the list did not show every part named (then only a HEAD can tell).

    Asking the store for its parts (ListParts, a few ms) replaces a HEAD of the finished
    object: the first HEAD of a fresh object made rclone re-read and hash all of it (159 ms
    per 104 MiB). Which parts are assembled is the store's judgement, as before: it refuses
    a part it does not hold as named (PartsMismatch)."""
    held = await part_sizes(client, bucket, key, upload_id, len(parts))
    await _call(
        "complete_multipart_upload",
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        ),
    )
    sizes = [held.get(part["PartNumber"]) for part in parts]
    return None if None in sizes else sum(size or 0 for size in sizes)


async def part_sizes(
    client: S3Client, bucket: str, key: str, upload_id: str, count: int
) -> dict[int, int]:
    """Part number -> size for parts 1..count, from ListParts (pages of at most 1000)."""
    sizes: dict[int, int] = {}
    marker: int | None = None
    while True:
        listing = (
            client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
            if marker is None
            else client.list_parts(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
            )
        )
        page = await _call("list_parts", listing)
        for listed in page.get("Parts", []):
            if "PartNumber" in listed and "Size" in listed:
                sizes[listed["PartNumber"]] = listed["Size"]
        following = page.get("NextPartNumberMarker") or max(sizes, default=0)
        if not page.get("IsTruncated") or len(sizes) >= count or following <= (marker or 0):
            return sizes  # all listed, all we need, or a store whose marker does not move
        marker = following
