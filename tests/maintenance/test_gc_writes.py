"""gc and writes in flight: `imagesvc gc --grace 0` run during a render or a copy of a ready
image (which writes a temp file that no row names until it lands) must not pull the file
from under it. On the local backend, where those temp files exist while the write runs (S3
buffers a small object and sends it in one PutObject at the end)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.api import upload
from tests.samples import jpeg


async def test_gc_with_no_grace_leaves_a_write_in_flight_alone(
    client: httpx.AsyncClient, app: FastAPI, backend: str
) -> None:
    if backend != "local":
        pytest.skip("only the local backend keeps a temp file while a small write runs")
    image = await upload(client, jpeg((40, 30)))
    runtime = app.state.runtime
    key = runtime.resumable.layout.variant(image["id"], (20, 20), "contain", "webp")
    writer = await runtime.store.open_write(key, content_type="image/webp")
    await writer.write(b"RIFF" + b"\0" * 4000)  # a render's bytes, on their way
    report = await runtime.reconciler.run(grace=0)
    assert not [u for u in report.unfinished_multipart_uploads if image["id"] in u]
    await writer.complete()
    assert (await runtime.store.head(key)) is not None
    # Once landed, an object no variant row names is an orphan for gc as before.
    report = await runtime.reconciler.run(grace=0)
    assert key in report.orphan_objects
