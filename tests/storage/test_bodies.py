"""The request bodies the S3 adapter sends (storage/bodies.py): what botocore and aiohttp
see of them. The end-to-end proof is every upload test against moto and rclone."""

from __future__ import annotations

import asyncio
import io
import os

import pytest

from imagesvc.storage.bodies import ChunksBody, PipeBody


async def drained(body: ChunksBody | PipeBody) -> bytes:
    return b"".join([bytes(chunk) async for chunk in body])


async def test_chunks_body_reads_seeks_and_iterates_the_same_bytes() -> None:
    chunks = [os.urandom(n) for n in (1, 70_000, 3, 1 << 20, 5)]
    whole = b"".join(chunks)
    body = ChunksBody(chunks)
    assert len(body) == len(whole)
    # botocore's payload signing: read through in steps, then seek back.
    read = b"".join(iter(lambda: body.read(65_536), b""))
    assert read == whole
    assert body.tell() == len(whole)
    body.seek(0)
    assert await drained(body) == whole
    # A retry rewinds and sends it all again.
    body.seek(0)
    assert await drained(body) == whole
    body.seek(70_000)
    assert body.read(10) == whole[70_000:70_010]
    assert await drained(body) == whole[70_010:]
    assert body.seek(-5, io.SEEK_END) == len(whole) - 5
    assert body.read() == chunks[-1]


async def test_chunks_body_hands_over_its_chunks_uncopied() -> None:
    chunks = [os.urandom(1000) for _ in range(3)]
    sent = [chunk async for chunk in ChunksBody(chunks)]
    assert all(a is b for a, b in zip(sent, chunks, strict=True))


async def test_pipe_body_passes_chunks_through_and_cannot_rewind_once_sending() -> None:
    body = PipeBody(6)
    assert len(body) == 6
    assert body.seek(0) == 0  # nothing sent yet: a retry may still start over
    sender = asyncio.create_task(drained(body))
    assert body.offer(b"abc")
    await body.put(b"def")
    assert await sender == b"abcdef"
    with pytest.raises(io.UnsupportedOperation):
        body.seek(0)
    with pytest.raises(io.UnsupportedOperation):
        body.read()
    assert not body.room_for(1)
