"""Listing: newest first, keyset cursor, owner scope."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import client_for
from tests.samples import jpeg


async def test_listing_is_newest_first_with_a_stable_cursor(client: httpx.AsyncClient) -> None:
    ids = []
    for index in range(7):
        created = await client.post(
            "/v1/images",
            content=jpeg(color=(index * 30, 0, 0)),
            headers={"Content-Type": "image/jpeg"},
        )
        ids.append(created.json()["id"])
    newest_first = ids[::-1]

    first = (await client.get("/v1/images", params={"limit": 3})).json()
    assert [i["id"] for i in first["items"]] == newest_first[:3]
    assert first["next_cursor"]

    # Concurrent changes between pages: a new image arrives (it belongs before the cursor,
    # so this walk does not see it) and an image of a later page is deleted.
    late = await client.post("/v1/images", content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert late.status_code == 201
    assert (await client.delete(f"/v1/images/{newest_first[4]}")).status_code == 204

    seen = [i["id"] for i in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = (await client.get("/v1/images", params={"limit": 3, "cursor": cursor})).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
    expected = [i for i in newest_first if i != newest_first[4]]
    assert seen == expected  # no duplicates, nothing skipped, order kept

    everything = (await client.get("/v1/images", params={"limit": 100})).json()
    assert everything["items"][0]["id"] == late.json()["id"]
    assert everything["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"cursor": "MTppbWdfMDAw"},  # base64 of a cursor-looking string with a bad id
        {"cursor": "%%%"},
        {"cursor": "x" * 500},
    ],
)
async def test_bad_list_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/v1/images", params=params)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "invalid_parameter"
    assert response.headers["content-type"] == "application/problem+json"


async def test_owner_scope_hides_other_owners_images(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    created = await client.post(
        "/v1/images", content=jpeg(), headers={"Content-Type": "image/jpeg"}
    )
    image_id = created.json()["id"]
    async with client_for(app, "somebody-else") as other:
        await assert_hidden_from(other, image_id)


async def assert_hidden_from(client: httpx.AsyncClient, image_id: str) -> None:
    for method, path in [
        ("GET", f"/v1/images/{image_id}"),
        ("GET", f"/v1/images/{image_id}/content"),
        ("PATCH", f"/v1/images/{image_id}"),
        ("DELETE", f"/v1/images/{image_id}"),
    ]:
        response = await client.request(method, path, json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "not_found"
    listed = (await client.get("/v1/images")).json()
    assert image_id not in [i["id"] for i in listed["items"]]
