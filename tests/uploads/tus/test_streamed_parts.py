"""Parts streamed to the store while a PATCH's bytes arrive (uploads/tus/receiver.py), on
every backend: byte-identical uploads in part-sized chunks and in one shot; and what a body
cut inside a streamed part, a checksum mismatch and a lease lost mid-part leave (the
committed offset, then an exact resume).

The app here has 5 MiB parts on every backend and room for 40 MiB uploads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from imagesvc.config import Settings
from imagesvc.db import utcnow
from imagesvc.images.models import ResumableUpload
from imagesvc.uploads.tus import lease as lease_module
from tests.conftest import Inspector, app_with, bearer
from tests.uploads.tus.helpers import (
    CHUNK,
    MIB,
    create,
    head,
    image_of,
    patch,
    send_all,
    sha256,
)
from tests.uploads.tus.test_protocol import id_of, record, stored

PART = 5 * MIB
ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@pytest.fixture(scope="module")
async def streaming(settings: Settings) -> AsyncIterator[FastAPI]:
    async with app_with(settings, s3_part_size=PART, max_upload_bytes=40 * MIB) as app:
        yield app


@asynccontextmanager
async def client_of(app: FastAPI, owner: str, *, cut_after: int | None = None) -> Any:
    """A client with a real key of `owner`. With `cut_after`, the app sees the client
    disconnect after that many body bytes (what the server hears of a dropped socket)."""
    asgi: Any = app if cut_after is None else cutting(app, cut_after)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi),
        base_url="http://imagesvc.test",
        headers=await bearer(app, owner),
    ) as client:
        yield client


def cutting(app: FastAPI, after: int) -> ASGI:
    async def cut(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen = 0

        async def receive_until_cut() -> dict[str, Any]:
            nonlocal seen
            if scope["type"] != "http" or seen < after:
                message: dict[str, Any] = await receive()
                if message["type"] == "http.request" and scope["method"] == "PATCH":
                    body = message.get("body", b"")[: after - seen]
                    seen += len(body)
                    message = {**message, "body": body, "more_body": True}
                return message
            return {"type": "http.disconnect"}

        await app(scope, receive_until_cut, send)

    return cut


def count_calls(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> dict[str, int]:
    """How many parts the store was asked for each way (streamed or buffered)."""
    store = app.state.runtime.resumable.store
    calls = {"open_part": 0, "upload_part": 0}
    for name in calls:
        original = getattr(store, name)

        def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(store, name, counted)
    return calls


def checksum(data: bytes) -> dict[str, str]:
    return {"Upload-Checksum": f"sha256 {base64.b64encode(hashlib.sha256(data).digest()).decode()}"}


async def assert_image(client: httpx.AsyncClient, url: str, data: bytes) -> None:
    image = (await client.get(f"/v1/images/{id_of(url)}")).json()
    assert (image["byte_size"], image["sha256"]) == (len(data), sha256(data))


@pytest.mark.parametrize(
    ("chunk", "streamed"),
    [(8 * MIB, 6), (PART, 6), (32 * MIB, 6)],
    ids=["8MiB-chunks", "part-size", "one-shot"],
)
async def test_uploads_in_chunks_stream_their_parts_byte_identical(
    streaming: FastAPI,
    owner: str,
    inspector: Inspector,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    streamed: int,
) -> None:
    data = image_of(27 * MIB + 12345)
    calls = count_calls(monkeypatch, streaming)
    async with client_of(streaming, owner) as client:
        url, _ = await create(client, len(data))
        last = await send_all(client, url, data, chunk)
        assert last.headers["image-id"] == id_of(url)
        await assert_image(client, url, data)
    # Five full parts and the last one, every one streamed (8 MiB chunks park 3 MiB tails
    # in between, written first into the next PATCH's part).
    assert calls == {"open_part": streamed, "upload_part": 0}
    assert inspector.read(streaming.state.runtime.resumable.layout.original(id_of(url))) == data


async def test_a_part_of_5_mib_or_more_at_the_end_of_a_patch_is_streamed_not_parked(
    settings: Settings, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image_of(20 * MIB)
    async with (
        app_with(settings, s3_part_size=8 * MIB, max_upload_bytes=40 * MIB) as app,
        client_of(app, owner) as client,
    ):
        calls = count_calls(monkeypatch, app)
        url, _ = await create(client, len(data))
        # 14 MiB: an 8 MiB part, then 6 MiB that would have been buffered and parked as a
        # part of its own at the end; its size is known, so it is streamed too.
        assert (await patch(client, url, 0, data[: 14 * MIB])).status_code == 204
        kept = await record(app, id_of(url))
        assert kept is not None
        assert (len(kept.parts.split(",")), kept.tail_size) == (2, 0)
        await send_all(client, url, data, 8 * MIB, start=14 * MIB)
        await assert_image(client, url, data)
    assert calls == {"open_part": 3, "upload_part": 0}


@pytest.mark.parametrize("with_checksum", [False, True], ids=["keeps-what-arrived", "checksum"])
async def test_a_body_cut_inside_a_streamed_part(
    streaming: FastAPI, owner: str, inspector: Inspector, with_checksum: bool
) -> None:
    data = image_of(20 * MIB + 3)
    async with client_of(streaming, owner) as client:
        url, _ = await create(client, len(data))
        assert (await patch(client, url, 0, data[:MIB])).status_code == 204
    # The PATCH declares 9 MiB: part 1 is the 1 MiB tail + 4 MiB, part 2 a full 5 MiB part
    # that is being streamed when the client goes, 2.5 MiB into it.
    sent = 4 * MIB + 5 * MIB // 2
    chunk = data[MIB : 10 * MIB]
    extra = checksum(chunk) if with_checksum else {}
    async with client_of(streaming, owner, cut_after=sent) as cut:
        answer = await patch(cut, url, MIB, chunk, **extra)
    kept = await record(streaming, id_of(url))
    assert kept is not None
    async with client_of(streaming, owner) as client:
        offset = int((await head(client, url)).headers["upload-offset"])
        if with_checksum:
            # Cannot be verified: none of it counts (the streamed part 1 is not committed).
            assert answer.status_code == 400
            assert (offset, kept.parts, kept.tail_size) == (MIB, "[]", MIB)
        else:
            # Part 1 is committed; what arrived of part 2 is parked as the new tail.
            assert answer.status_code == 204
            assert offset == MIB + sent
            assert (len(kept.parts.split(",")), kept.tail_size) == (1, 5 * MIB // 2)
        await send_all(client, url, data, 8 * MIB, start=offset)
        await assert_image(client, url, data)
    assert [k for k in stored(inspector) if id_of(url) in k and "/tus/" in k] == []


async def test_a_checksum_mismatch_with_streamed_parts_is_460_and_commits_nothing(
    streaming: FastAPI, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image_of(18 * MIB + 5)
    calls = count_calls(monkeypatch, streaming)
    async with client_of(streaming, owner) as client:
        url, _ = await create(client, len(data))
        first = data[: 6 * MIB]
        assert (await patch(client, url, 0, first, **checksum(first))).status_code == 204
        before = await record(streaming, id_of(url))
        # Two full parts go to the store before the body ends; neither may count.
        rest = data[6 * MIB :]
        wrong = await patch(client, url, 6 * MIB, rest, **checksum(rest[:-1] + b"?"))
        assert wrong.status_code == 460
        assert calls["open_part"] >= 3
        after = await record(streaming, id_of(url))
        assert before is not None
        assert after is not None
        assert (after.upload_offset, after.parts, after.tail_size) == (
            6 * MIB,
            before.parts,
            before.tail_size,
        )
        assert (await head(client, url)).headers["upload-offset"] == str(6 * MIB)
        # The retry streams the same part numbers again, over the uncommitted ones.
        right = await patch(client, url, 6 * MIB, rest, **checksum(rest))
        assert right.status_code == 204, right.text
        await assert_image(client, url, data)


async def test_a_lease_lost_mid_part_stops_before_the_next_part_and_commits_nothing(
    settings: Settings, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image_of(12 * MIB + 9)
    # Spy on the heartbeat: tell the body when a refresh found the lease gone. (The
    # heartbeat marks the lease lost in the same step as the refresh returns, before the
    # body's task runs again.)
    lost = asyncio.Event()
    refresh = lease_module._refresh

    async def spied(*args: Any, **kwargs: Any) -> bool:
        kept = await refresh(*args, **kwargs)
        if not kept:
            lost.set()
        return kept

    monkeypatch.setattr(lease_module, "_refresh", spied)
    async with (
        app_with(
            settings, s3_part_size=PART, max_upload_bytes=40 * MIB, upload_lease_seconds=1.0
        ) as app,
        client_of(app, owner) as client,
    ):
        url, _ = await create(client, len(data))
        calls = count_calls(monkeypatch, app)

        async def body() -> AsyncIterator[bytes]:
            yield data[: 3 * MIB]  # part 1 is being streamed
            # Another PATCH takes the upload over (our lease ran out meanwhile).
            async with app.state.runtime.db.engine.begin() as conn:
                await conn.execute(
                    update(ResumableUpload)
                    .where(ResumableUpload.id == id_of(url))
                    .values(lease_token="someone-else", lease_expires_at=utcnow() - timedelta(1))
                )
            await asyncio.wait_for(lost.wait(), 30)
            yield data[3 * MIB :]

        answer = await client.patch(
            url,
            content=body(),
            headers={**CHUNK, "Upload-Offset": "0", "Content-Length": str(len(data))},
        )
        assert answer.status_code == 503, answer.text
        assert calls["open_part"] == 1  # part 2 was never started
        kept = await record(app, id_of(url))
        assert kept is not None
        assert (kept.upload_offset, kept.parts, kept.tail_key) == (0, "[]", None)
        # (The lease "someone else" holds has run out: the client resumes at once.)
        await send_all(client, url, data, 8 * MIB)
        await assert_image(client, url, data)
