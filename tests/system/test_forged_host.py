"""A forged `Host` (or `X-Forwarded-Host`, `Forwarded`) never reaches a response (issue
#14): no redirect, `Location` or body is built from request headers. Sent over a raw
socket to a real server process, since HTTP clients (httpx) normalise the Host header."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import mysql_url
from tests.samples import jpeg
from tests.services import (
    MariaDB,
    Process,
    create_key,
    s3_env,
    start_imagesvc,
)

EVIL = "evil.example"
FORGED = (
    f"Host: {EVIL}\r\nX-Forwarded-Host: {EVIL}\r\nX-Forwarded-Proto: https\r\n"
    f"Forwarded: host={EVIL};proto=https\r\n"
)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, mariadb: MariaDB | str, rclone: tuple[Process, str]
) -> Iterator[tuple[str, str]]:
    _, endpoint = rclone
    env = {
        **s3_env(mysql_url(mariadb), endpoint, "imagesvc-rclone"),
        "IMAGESVC_S3_KEY_PREFIX": "host/",
    }
    process, url = start_imagesvc(tmp_path_factory.mktemp("forged-host"), env)
    try:
        yield url, f"Bearer {create_key(env, 'forged-host')}"
    finally:
        process.stop()


def raw_request(url: str, request_line: str, headers: str = "", body: bytes = b"") -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"{request_line} HTTP/1.1\r\n{FORGED}{headers}Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def assert_untouched(
    raw: bytes, configured: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """No trace of the forged host; a Location is relative, or (a signed URL of the
    store) starts with the `configured` endpoint."""
    status, headers, body = parse(raw)
    assert EVIL.encode() not in raw, raw[:2000]
    location = headers.get("location")
    if location is not None and not (configured and location.startswith(configured + "/")):
        # A relative reference: no scheme and no authority (`/console`, `console`).
        parts = urlsplit(location)
        assert not parts.scheme, location
        assert not parts.netloc, location
        assert not location.startswith("//"), location
    return status, headers, body


@pytest.fixture(scope="module")
def image_id(server: tuple[str, str]) -> str:
    url, auth = server
    created = httpx.post(
        f"{url}/v1/images",
        content=jpeg(),
        headers={"Authorization": auth, "Content-Type": "image/jpeg"},
    )
    assert created.status_code == 201, created.text
    image: str = created.json()["id"]
    return image


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/images/"),
        ("POST", "/v1/images/"),
        ("GET", "/v1/images/{id}/"),
        ("DELETE", "/v1/images/{id}/"),
        ("GET", "/v1/images/{id}/content/"),
        ("GET", "/v1/images/{id}/variants/64x64/"),
        ("GET", "/healthz/"),
        ("GET", "/readyz/"),
        ("GET", "/metrics/"),
        ("GET", "/openapi.json/"),
        ("GET", "/docs/"),
    ],
)
def test_trailing_slash_is_a_404_problem_never_a_redirect(
    server: tuple[str, str], image_id: str, method: str, path: str
) -> None:
    url, auth = server
    raw = raw_request(
        url, f"{method} {path.format(id=image_id)}", f"Authorization: {auth}\r\n", b"x"
    )
    status, headers, body = assert_untouched(raw)
    assert status == 404
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "not_found"


def test_a_201_location_is_relative(server: tuple[str, str]) -> None:
    url, auth = server
    raw = raw_request(
        url,
        "POST /v1/images",
        f"Authorization: {auth}\r\nContent-Type: image/jpeg\r\n",
        jpeg(),
    )
    status, headers, body = assert_untouched(raw)
    assert status == 201
    assert headers["location"] == f"/v1/images/{json.loads(body)['id']}"


def test_no_route_answers_with_the_forged_host(
    server: tuple[str, str], image_id: str, rclone: tuple[Process, str]
) -> None:
    """Every documented path (and `/`, where a console redirect may live), with and without
    a trailing slash: nothing echoes the forged host; every Location is relative, but for
    signed URLs of the store, whose origin is configuration."""
    url, auth = server
    store = rclone[1]
    document = httpx.get(f"{url}/openapi.json").json()
    paths = {"/", "/console", "/docs", "/openapi.json", *document["paths"]}
    for template in sorted(paths):
        path = template.replace("{image_id}", image_id).replace("{spec}", "64x64")
        for variant in {path, path.rstrip("/") + "/"}:
            for headers in ("", f"Authorization: {auth}\r\n"):
                assert_untouched(raw_request(url, f"GET {variant}", headers), store)


def test_a_direct_upload_url_is_never_built_from_the_host(
    server: tuple[str, str], rclone: tuple[Process, str]
) -> None:
    """The URL a direct upload answers comes from configuration (the store's endpoint, or
    IMAGESVC_PUBLIC_API_URL), never from `Host`: a forged one would receive the bytes."""
    url, auth = server
    body = json.dumps({"byte_size": 10, "content_type": "image/jpeg"}).encode()
    raw = raw_request(
        url,
        "POST /v1/images/direct",
        f"Authorization: {auth}\r\nContent-Type: application/json\r\n",
        body,
    )
    status, _, answer = assert_untouched(raw, rclone[1])
    assert status == 201, answer
    assert json.loads(answer)["upload"]["url"].startswith(rclone[1] + "/")
