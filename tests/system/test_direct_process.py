"""The local backend's direct-upload URL on a real `imagesvc serve` process (two workers,
so the lease and the token must hold across processes): a client that vanishes mid-body
leaves nothing, a second PUT while one streams is refused, and the absolute URL the
service answers is reachable as given."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.samples import jpeg
from tests.services import create_key, start_imagesvc

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    state = tmp_path_factory.mktemp("direct-local")
    env = {
        "IMAGESVC_DATABASE_URL": f"sqlite+aiosqlite:///{state / 'imagesvc.db'}",
        "IMAGESVC_STORAGE_LOCAL_ROOT": str(state / "objects"),
        "IMAGESVC_LOG_FORMAT": "console",
    }
    subprocess.run(
        [str(BIN / "imagesvc"), "migrate"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    key = create_key(env, "direct")
    process, url = start_imagesvc(state, env, workers=2)
    yield url, key, state / "objects"
    process.stop()


def incoming(objects: Path) -> list[str]:
    return [p.name for p in (objects / ".incoming").glob("*")]


async def test_a_client_gone_mid_body_leaves_nothing_and_a_second_put_waits(
    local_server: tuple[str, str, Path],
) -> None:
    url, key, objects = local_server
    data = jpeg((900, 700)) + b"\x00" * (3 * 1024 * 1024)  # trailing bytes: still a JPEG
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as client:
        created = await client.post(
            "/v1/images/direct", json={"byte_size": len(data), "content_type": "image/jpeg"}
        )
        assert created.status_code == 201
        image_id, upload = created.json()["id"], created.json()["upload"]
        # Relative (IMAGESVC_PUBLIC_API_URL unset): resolved against the API, as a client does.
        assert upload["url"].startswith("/v1/direct-uploads/")
        target = httpx.URL(url).join(upload["url"])

        # Half the body, then silence: the PUT holds the upload's lease meanwhile.
        sock = socket.create_connection((target.host, target.port or 80))
        sock.sendall(
            f"PUT {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.host}\r\n".encode()
            + f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data[: len(data) // 2]
        )
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=30) as outside:
            second = await outside.put(str(target), content=data, headers=upload["headers"])
        assert second.status_code == 409, second.text
        assert second.json()["code"] == "upload_in_progress"
        sock.close()  # the client is gone

        for _ in range(100):  # the server notices and aborts the write
            await asyncio.sleep(0.05)
            if not incoming(objects):
                break
        assert incoming(objects) == []
        assert not any(image_id in str(p) for p in objects.rglob("*"))
        early = await client.post(f"/v1/images/{image_id}/complete")
        assert early.status_code == 409
        assert early.json()["code"] == "upload_incomplete"

        # The lease was given back: the client may simply try again, on any worker.
        async with httpx.AsyncClient(timeout=30) as outside:
            again = await outside.put(str(target), content=data, headers=upload["headers"])
        assert again.status_code == 200, again.text
        done = await client.post(f"/v1/images/{image_id}/complete")
        assert done.status_code == 200, done.text
        assert done.json()["byte_size"] == len(data)
        content = await client.get(f"/v1/images/{image_id}/content")
        assert content.content == data


async def test_the_local_upload_url_refuses_what_it_was_not_made_for(
    local_server: tuple[str, str, Path],
) -> None:
    url, key, _ = local_server
    data = jpeg()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as api:
        created = await api.post("/v1/images/direct", json={"byte_size": len(data)})
        upload = created.json()["upload"]
    target = httpx.URL(url).join(upload["url"])
    forged = target.copy_with(path=target.path[:-4] + "AAAA")
    other_id = target.path.replace(created.json()["id"], "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S")
    async with httpx.AsyncClient(timeout=30) as outside:
        for where in (
            forged,
            target.copy_with(path=other_id),
            target.copy_with(path="/v1/direct-uploads/x"),
        ):
            refused = await outside.put(where, content=data, headers=upload["headers"])
            assert refused.status_code == 403, (where, refused.text)
            assert refused.json()["code"] == "upload_refused"

        async def body() -> AsyncIterator[bytes]:
            yield data

        chunked = await outside.put(
            target,
            content=body(),  # no Content-Length: chunked
            headers={"Content-Type": upload["headers"]["Content-Type"]},
        )
        assert chunked.status_code == 403
        assert (
            await outside.put(target, content=data, headers=upload["headers"])
        ).status_code == 200
