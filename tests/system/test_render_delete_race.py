"""Deletes that race renders (issue #14), on a real `imagesvc serve` (2 workers) against
MariaDB and rclone's S3: a render whose image is deleted meanwhile answers 404, never a
5xx, and once every request has answered, nothing of a deleted image is left in the store
(no gc run). Renders and deletes are started with varied offsets so the delete lands
before, during and after the renders' writes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import boto_client, mysql_url
from tests.samples import jpeg
from tests.services import (
    MariaDB,
    Process,
    create_key,
    s3_env,
    start_imagesvc,
)

BUCKET = "imagesvc-rclone"
PREFIX = "race/"
SIZES = ["64x64", "96x96", "128x128", "160x120", "200x200", "256x256", "320x240", "400x300"]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, mariadb: MariaDB | str, rclone: tuple[Process, str]
) -> Iterator[tuple[str, dict[str, str], str]]:
    _, endpoint = rclone
    env = {
        **s3_env(mysql_url(mariadb), endpoint, BUCKET),
        "IMAGESVC_S3_KEY_PREFIX": PREFIX,
        "IMAGESVC_SERVE_MODE": "proxy",
        "IMAGESVC_RENDER_QUEUE": "64",
    }
    process, url = start_imagesvc(tmp_path_factory.mktemp("race"), env, workers=2)
    keys = {owner: f"Bearer {create_key(env, owner)}" for owner in ("ann", "bob", "cy")}
    try:
        yield url, keys, endpoint
    finally:
        process.stop()


def objects_of(endpoint: str, image_id: str) -> list[str]:
    listed = boto_client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}img/{image_id}/")
    return [item["Key"] for item in listed.get("Contents", [])]


async def upload(client: httpx.AsyncClient, data: bytes) -> str:
    created = await client.post("/v1/images", content=data, headers={"Content-Type": "image/jpeg"})
    assert created.status_code == 201, created.text
    image_id: str = created.json()["id"]
    return image_id


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06, 0.1, 0.2])
async def test_renders_racing_a_delete_answer_404_and_leave_nothing(
    server: tuple[str, dict[str, str], str], delay: float
) -> None:
    url, keys, endpoint = server
    source = jpeg((1600, 1200))
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=limits, headers={"Authorization": keys["ann"]}
    ) as client:
        image_id = await upload(client, source)

        async def render(size: str) -> int:
            response = await client.get(f"/v1/images/{image_id}/variants/{size}")
            return response.status_code

        async def delete() -> int:
            await asyncio.sleep(delay)
            return (await client.delete(f"/v1/images/{image_id}")).status_code

        *renders, deleted = await asyncio.gather(*(render(s) for s in SIZES), delete())
    assert deleted == 204
    assert set(renders) <= {200, 404}, renders
    assert objects_of(endpoint, image_id) == []


async def test_mixed_traffic_from_several_owners_no_5xx_and_deletes_leave_nothing(
    server: tuple[str, dict[str, str], str],
) -> None:
    url, keys, endpoint = server
    rng = random.Random(14)
    source = jpeg((1200, 900))
    statuses: list[tuple[str, int]] = []
    deleted: list[str] = []
    limits = httpx.Limits(max_connections=64)

    async def owner_traffic(auth: str) -> None:
        async with httpx.AsyncClient(
            base_url=url, timeout=60, limits=limits, headers={"Authorization": auth}
        ) as client:

            async def one_image() -> None:
                image_id = await upload(client, source)
                base = f"/v1/images/{image_id}"
                calls = [client.get(base), client.get(f"{base}/content")]
                calls += [client.get(f"{base}/variants/{size}") for size in rng.sample(SIZES, 4)]
                calls += [client.get("/v1/images", params={"limit": 5})]
                calls += [
                    client.post(
                        "/v1/images", content=source, headers={"Content-Type": "image/jpeg"}
                    )
                ]

                async def delete_later() -> httpx.Response:
                    await asyncio.sleep(rng.uniform(0, 0.15))
                    return await client.delete(base)

                calls.append(delete_later())
                for response in await asyncio.gather(*calls):
                    statuses.append(
                        (
                            f"{response.request.method} {response.request.url.path}",
                            response.status_code,
                        )
                    )
                    if response.request.method == "DELETE" and response.status_code == 204:
                        deleted.append(image_id)

            await asyncio.gather(*(one_image() for _ in range(4)))

    await asyncio.gather(*(owner_traffic(auth) for auth in keys.values()))
    server_errors = [entry for entry in statuses if entry[1] >= 500]
    assert server_errors == []
    assert len(deleted) == 12
    left = {image_id: objects_of(endpoint, image_id) for image_id in deleted}
    assert left == {image_id: [] for image_id in deleted}
