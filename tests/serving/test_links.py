"""Signed links (SPEC §9) on every backend: they show a private image without a key, for
exactly what was signed and until they expire; any change of the URL is a 403, a deleted
image's link a 404; keys rotate; replicas with no configured key agree."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from alembic import command
from imagesvc.cli import alembic_config
from imagesvc.config import Settings
from tests.api import follow, upload
from tests.conftest import app_with, client_for, mysql_url
from tests.samples import jpeg
from tests.services import MariaDB

OLD_KEY = "old-signing-key-" + "o" * 32
NEW_KEY = "new-signing-key-" + "n" * 32


async def mint(client: httpx.AsyncClient, image_id: str, **body: object) -> str:
    response = await client.post(f"/v1/images/{image_id}/links", json=body)
    assert response.status_code == 200, response.text
    url: str = response.json()["url"]
    return url


async def shown(app: FastAPI, url: str, **headers: str) -> httpx.Response:
    """What an `<img>` gets for this URL: no key, the redirect to the store followed."""
    async with client_for(app, None) as anonymous:
        return await follow(await anonymous.get(url, headers=headers))


def assert_forbidden(response: httpx.Response, code: str = "link_invalid") -> None:
    assert response.status_code == 403, (response.request.url, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


def with_param(url: str, name: str, value: str) -> str:
    """The URL with one query parameter changed, the order kept (sig stays last)."""
    parts = urlsplit(url)
    params = [(k, value if k == name else v) for k, v in parse_qsl(parts.query)]
    return parts.path + "?" + "&".join(f"{k}={v}" for k, v in params)


async def test_a_link_shows_a_private_image_without_a_key(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    data = jpeg((120, 80))
    image = await upload(client, data)
    url = await mint(client, image["id"], expires_in=600)
    parts = urlsplit(url)
    assert parts.path == f"/v1/images/{image['id']}/content"
    assert [name for name, _ in parse_qsl(parts.query)] == ["exp", "sig"]
    window = app.state.runtime.settings.link_window
    exp = int(dict(parse_qsl(parts.query))["exp"])
    assert exp % window == 0
    assert time.time() + 600 <= exp < time.time() + 600 + window + 1
    # The same request within a window: the same URL (cacheable by browsers and CDNs).
    assert await mint(client, image["id"], expires_in=600) == url

    for _ in range(2):  # computed, then replayed by the hot reads
        response = await shown(app, url)
        assert response.status_code == 200
        assert response.content == data
    async with client_for(app, None) as anonymous:
        direct = await anonymous.get(url)
        assert direct.headers["cache-control"].startswith("public, max-age=")
        assert (await anonymous.get(f"/v1/images/{image['id']}/content")).status_code == 404
        # A key that is sent must still be valid.
        bad_key = await anonymous.get(url, headers={"Authorization": "Bearer nope"})
        assert bad_key.status_code == 401
        head = await anonymous.head(url)
        assert head.status_code == direct.status_code
        assert head.content == b""

    variant = await mint(client, image["id"], variant="60x60", fit="cover", format="png")
    assert urlsplit(variant).path == f"/v1/images/{image['id']}/variants/60x60"
    rendered = await shown(app, variant)
    assert rendered.status_code == 200
    assert rendered.headers["content-type"] == "image/png"

    download = await mint(client, image["id"], download=True)
    assert "download=1" in download
    saved = await shown(app, download)
    assert saved.headers["content-disposition"].startswith("attachment;")


async def test_any_change_of_the_url_is_a_403(app: FastAPI, client: httpx.AsyncClient) -> None:
    image = await upload(client, jpeg((90, 60)))
    other = await upload(client, jpeg((90, 60)))
    content = await mint(client, image["id"])
    thumb = await mint(client, image["id"], variant="64x64", fit="cover", format="webp")
    download = await mint(client, image["id"], download=True)
    assert (await shown(app, content)).status_code == 200
    assert (await shown(app, thumb)).status_code == 200
    exp = dict(parse_qsl(urlsplit(content).query))["exp"]
    sig = dict(parse_qsl(urlsplit(content).query))["sig"]
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    window = str(app.state.runtime.settings.link_window)
    tampered = [
        content.replace(image["id"], other["id"]),  # path: another image
        content.replace("/content", "/variants/64x64"),  # path: a rendition
        content.replace(f"/v1/images/{image['id']}", f"/v1/images/{image['id'].lower()}"),
        thumb.replace("/64x64", "/65x64"),  # size
        thumb.replace("/64x64", "/640x640"),
        with_param(thumb, "fit", "contain"),  # fit
        with_param(thumb, "format", "png"),  # format
        with_param(content, "exp", str(int(exp) + int(window))),  # expiry, later
        with_param(content, "exp", str(int(exp) - 1)),  # expiry, earlier
        with_param(content, "exp", "0" + exp),  # the same number, spelt otherwise
        content.replace("?exp=", "?download=1&exp="),  # download added
        download.replace("download=1&", ""),  # download removed
        download.replace("download=1", "download=0"),
        with_param(content, "sig", flipped),  # signature
        with_param(content, "sig", sig[:-1]),
        with_param(content, "sig", ""),
        content.split("&sig=")[0],  # no signature
        content + "&sig=" + sig,  # a second one
        content + "&x=1",  # anything after the signature
        f"{urlsplit(content).path}?sig={sig}&exp={exp}",  # reordered
        f"{urlsplit(content).path}?exp={exp}&exp={exp}&sig={sig}",  # repeated
        content.replace("?exp=", "?zz=1&exp="),  # an extra parameter
        thumb.replace("&fit=cover", ""),  # a parameter dropped
    ]
    for url in tampered:
        response = await shown(app, url)
        if url.startswith(f"/v1/images/{image['id'].lower()}"):
            assert response.status_code in (403, 404), url  # another (missing) image
        else:
            assert response.status_code == 403, url
            assert_forbidden(response)
    # A keyed request with a stray `exp` or `sig` is a link attempt too.
    assert_forbidden(await client.get(f"/v1/images/{image['id']}/content?exp={exp}"))


async def test_expired_and_deleted(app: FastAPI, client: httpx.AsyncClient) -> None:
    image = await upload(client, jpeg())
    signer = await app.state.runtime.links.keys.signer()
    path = f"/v1/images/{image['id']}/content"
    expired = signer.sign(path, {"exp": str(int(time.time()) - 5)})
    assert_forbidden(await shown(app, expired), "link_expired")
    fresh = signer.sign(path, {"exp": str(int(time.time()) + 60)})
    assert (await shown(app, fresh)).status_code == 200

    url = await mint(client, image["id"])
    thumb = await mint(client, image["id"], variant="32x32")
    assert (await shown(app, url)).status_code == 200
    assert (await client.delete(f"/v1/images/{image['id']}")).status_code == 204
    for gone in (url, thumb):
        response = await shown(app, gone)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


async def test_minting_is_the_owners_and_validated(app: FastAPI, client: httpx.AsyncClient) -> None:
    image = await upload(client, jpeg())
    async with client_for(app, f"stranger-{uuid.uuid4().hex[:8]}") as stranger:
        theirs = await stranger.post(f"/v1/images/{image['id']}/links", json={})
        assert theirs.status_code == 404
    async with client_for(app, None) as anonymous:
        assert (await anonymous.post(f"/v1/images/{image['id']}/links", json={})).status_code == 401
    max_ttl = app.state.runtime.settings.link_max_ttl
    for body in (
        {"expires_in": max_ttl + 1},
        {"expires_in": 0},
        {"variant": "big"},
        {"variant": "0x10"},
        {"fit": "cover"},  # fit without a variant
        {"variant": "64x64", "format": "tiff"},
        {"unknown": True},
    ):
        response = await client.post(f"/v1/images/{image['id']}/links", json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
    longest = await client.post(f"/v1/images/{image['id']}/links", json={"expires_in": max_ttl})
    assert longest.status_code == 200
    assert longest.json()["expires_at"].endswith("Z")


async def test_the_default_expiry_fits_a_short_max_ttl(settings: Settings) -> None:
    """No `expires_in`: an hour, or IMAGESVC_LINK_MAX_TTL when that is shorter (never a 422
    for a request that asked for nothing); an explicit one over the maximum is still 422."""
    async with (
        app_with(settings, link_max_ttl=600, link_window=60) as short,
        client_for(short, f"short-{uuid.uuid4().hex[:8]}") as client,
    ):
        image = await upload(client, jpeg())
        default = await client.post(f"/v1/images/{image['id']}/links", json={})
        assert default.status_code == 200, default.text
        exp = int(dict(parse_qsl(urlsplit(default.json()["url"]).query))["exp"])
        assert time.time() + 500 < exp <= time.time() + 600 + 60
        asked = await client.post(f"/v1/images/{image['id']}/links", json={"expires_in": 3600})
        assert asked.status_code == 422
        assert (await shown(short, default.json()["url"])).status_code == 200


async def test_links_on_get_and_list_paint_a_gallery(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    first = await upload(client, jpeg((100, 50)))
    second = await upload(client, jpeg((50, 100)))
    plain = (await client.get(f"/v1/images/{first['id']}")).json()
    assert set(plain["links"]) == {"self", "content"}
    listed = (await client.get("/v1/images", params={"links": "40x40"})).json()["items"]
    assert {item["id"] for item in listed} == {first["id"], second["id"]}
    one = (await client.get(f"/v1/images/{first['id']}", params={"links": "40x40"})).json()
    assert one["links"]["signed_content"] == listed[1]["links"]["signed_content"]
    for item in listed:
        links = item["links"]
        assert urlsplit(links["signed_variant"]).path.endswith("/variants/40x40")
        assert (await shown(app, links["signed_content"])).status_code == 200
        thumb = await shown(app, links["signed_variant"])
        assert thumb.status_code == 200
        assert thumb.headers["content-type"].startswith("image/")
    for bad in ("40", "40x", "0x0"):
        assert (await client.get("/v1/images", params={"links": bad})).status_code == 422


async def test_keys_rotate_without_breaking_live_links(settings: Settings) -> None:
    async with app_with(settings, url_signing_keys=OLD_KEY) as old:
        async with client_for(old, f"rotor-{uuid.uuid4().hex[:8]}") as client:
            image = await upload(client, jpeg())
            signed_with_old = await mint(client, image["id"])
        assert (await shown(old, signed_with_old)).status_code == 200
    async with app_with(settings, url_signing_keys=f"{NEW_KEY},{OLD_KEY}") as rotating:
        assert (await shown(rotating, signed_with_old)).status_code == 200  # still valid
        signer = await rotating.state.runtime.links.keys.signer()
        signed_with_new = signer.sign(
            f"/v1/images/{image['id']}/content", {"exp": str(int(time.time()) + 60)}
        )
    async with app_with(settings, url_signing_keys=NEW_KEY) as new:
        assert_forbidden(await shown(new, signed_with_old))  # the old key is retired
        assert (await shown(new, signed_with_new)).status_code == 200
    async with app_with(settings) as database_key:  # no configured key: the database's
        assert_forbidden(await shown(database_key, signed_with_new))


@pytest.fixture(params=["sqlite", "mariadb"])
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """A new, migrated database with no signing key yet, and a local store."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'replicas.db'}"
    else:
        server = request.getfixturevalue("mariadb")
        if not isinstance(server, MariaDB):
            pytest.skip("needs the throwaway MariaDB to create a database")
        name = f"replicas_{uuid.uuid4().hex[:8]}"
        server.sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        url = mysql_url(server).rsplit("/", 1)[0] + f"/{name}"
    command.upgrade(alembic_config(url), "head")  # runs its own event loop: not in one
    return Settings(database_url=url, storage_local_root=str(tmp_path / "objects"))


async def test_replicas_without_configured_keys_agree(fresh_database: Settings) -> None:
    async with app_with(fresh_database) as one, app_with(fresh_database) as two:
        # Both need the key at the same moment: one creates it, the other uses it.
        first, second = await asyncio.gather(
            one.state.runtime.links.keys.signer(), two.state.runtime.links.keys.signer()
        )
        assert first.keys == second.keys
        assert len(first.keys[0]) >= 32
        async with client_for(one, "replica-owner") as client:
            image = await upload(client, jpeg())
            url = await mint(client, image["id"])
        assert (await shown(two, url)).status_code == 200
    async with app_with(fresh_database) as restarted:  # and it survives restarts
        assert (await restarted.state.runtime.links.keys.signer()).keys == first.keys
