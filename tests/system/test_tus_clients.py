"""tus with independent clients against real `imagesvc serve` processes (SPEC §10): tuspy
(PyPI) and tus-js-client 4 on Node, on MariaDB + rclone S3 and on SQLite + the local
backend; aborts and resumes from new processes, a server restart, two workers, a body cut
mid-chunk and a SIGKILL mid-PATCH. Every finished image is byte-identical to its file."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tusclient import client as tus

from imagesvc.config import MIB
from tests.conftest import boto_client, mysql_url
from tests.samples import jpeg
from tests.services import (
    MariaDB,
    Process,
    create_key,
    s3_env,
    start_imagesvc,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKET = "imagesvc-rclone"
LEASE = 2.0
needs_node = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")


@dataclass
class Server:
    process: Process
    url: str
    env: dict[str, str]
    key: str
    backend: str

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v1/uploads"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _env(backend: str, workdir: Path, mariadb: MariaDB | str, rclone_url: str) -> dict[str, str]:
    common = {
        "IMAGESVC_S3_PART_SIZE": str(5 * MIB),
        "IMAGESVC_MAX_UPLOAD_BYTES": str(64 * MIB),
        "IMAGESVC_UPLOAD_LEASE_SECONDS": str(LEASE),
        "IMAGESVC_LOG_FORMAT": "console",
    }
    if backend == "local":
        state = workdir / "tus-local"
        state.mkdir(exist_ok=True)
        env = {
            **common,
            "IMAGESVC_DATABASE_URL": f"sqlite+aiosqlite:///{state / 'imagesvc.db'}",
            "IMAGESVC_STORAGE_LOCAL_ROOT": str(state / "objects"),
        }
        subprocess.run(
            [str(BIN / "imagesvc"), "migrate"],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        return env
    return {
        **common,
        **s3_env(mysql_url(mariadb), rclone_url, BUCKET),
        "IMAGESVC_S3_KEY_PREFIX": "tus-clients/",
    }


@pytest.fixture(scope="module", params=["s3", "local"])
def server(
    request: pytest.FixtureRequest,
    workdir: Path,
    mariadb: MariaDB | str,
    rclone: tuple[Process, str],
) -> Iterator[Server]:
    env = _env(request.param, workdir, mariadb, rclone[1])
    process, url = start_imagesvc(workdir, env)
    yield Server(process, url, env, create_key(env, "tus-clients"), request.param)
    process.stop()


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/tus-node with tus-js-client@4 installed from the npm registry (lock file)."""
    work = tmp_path_factory.mktemp("tus-node") / "tus-node"
    shutil.copytree(
        ROOT / "clients" / "tus-node", work, ignore=shutil.ignore_patterns("node_modules")
    )
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return work


def photo(tmp_path: Path, size: int, name: str = "photo.jpg") -> tuple[Path, str]:
    head = jpeg((800, 600), color=(size % 251, 120, 30))
    data = head + os.urandom(size - len(head))
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def node(work: Path, *args: str) -> dict[str, object]:
    result = subprocess.run(
        ["node", str(work / "upload.mjs"), *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def stored_sha256(server: Server, image_id: str) -> str:
    response = httpx.get(
        f"{server.url}/v1/images/{image_id}/content",
        headers=server.auth,
        follow_redirects=True,
        timeout=60,
    )
    assert response.status_code == 200
    return hashlib.sha256(response.content).hexdigest()


def image_of(server: Server, image_id: str) -> dict[str, object]:
    response = httpx.get(f"{server.url}/v1/images/{image_id}", headers=server.auth, timeout=30)
    assert response.status_code == 200, response.text
    image: dict[str, object] = response.json()
    return image


def offset_of(server: Server, url: str) -> int:
    response = httpx.head(url, headers={**server.auth, "Tus-Resumable": "1.0.0"}, timeout=30)
    assert response.status_code == 200, response.status_code
    return int(response.headers["upload-offset"])


def leftovers(server: Server, image_id: str) -> tuple[list[str], list[str]]:
    """(keys, open multipart uploads) of the image's machinery: tails and parts."""
    if server.backend == "local":
        root = Path(server.env["IMAGESVC_STORAGE_LOCAL_ROOT"])
        keys = [str(p) for p in root.rglob("*") if image_id in str(p) and "/tus/" in str(p)]
        incoming = [p.name for p in (root / ".incoming").glob("*") if image_id in p.name]
        return keys, incoming
    s3 = boto_client(server.env["IMAGESVC_S3_ENDPOINT_URL"])
    prefix = f"tus-clients/img/{image_id}/"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    keys = [o["Key"] for o in listed if o["Key"] != prefix + "original"]
    try:
        uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    except s3.exceptions.NoSuchUpload:
        uploads = []
    return keys, [u["Key"] for u in uploads]


def url_of(uploader: Any) -> str:
    # tuspy types `url` as None until the upload exists.
    return str(uploader.url)


def image_id_of(uploader: Any) -> str:
    return str(uploader.request.response_headers["image-id"])


def gc(server: Server) -> str:
    result = subprocess.run(
        [str(BIN / "imagesvc"), "gc", "--grace", "0"],
        env={**os.environ, **server.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# --- tuspy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [MIB, 5 * MIB], ids=["1MiB", "5MiB"])
def test_tuspy_stops_at_an_offset_and_a_new_uploader_resumes(
    server: Server, tmp_path: Path, chunk: int
) -> None:
    path, digest = photo(tmp_path, 9 * MIB + 4321)
    stop = 4 * MIB + 12345  # not on a part or chunk boundary
    first = tus.TusClient(server.endpoint, headers=server.auth).uploader(
        file_path=str(path),
        chunk_size=chunk,
        metadata={"filename": "tuspy.jpg"},
        upload_checksum=True,
    )
    first.upload(stop_at=stop)
    url = url_of(first)
    assert offset_of(server, url) == stop
    # A new client and uploader from the stored URL: it HEADs, then PATCHes from there.
    again = tus.TusClient(server.endpoint, headers=server.auth).uploader(
        file_path=str(path), url=url, chunk_size=chunk
    )
    assert again.offset == stop
    again.upload()
    image_id = image_id_of(again)
    assert url.endswith(f"/v1/uploads/{image_id}")
    image = image_of(server, image_id)
    assert (image["sha256"], image["filename"]) == (digest, "tuspy.jpg")
    assert stored_sha256(server, image_id) == digest
    assert leftovers(server, image_id) == ([], [])


def test_resume_across_a_server_restart(server: Server, tmp_path: Path) -> None:
    path, digest = photo(tmp_path, 7 * MIB + 99)
    first = tus.TusClient(server.endpoint, headers=server.auth).uploader(
        file_path=str(path), chunk_size=MIB
    )
    first.upload(stop_at=3 * MIB + 7)
    server.process.stop()  # SIGTERM; the same command (same port) starts it again
    server.process.start()
    again = tus.TusClient(server.endpoint, headers=server.auth).uploader(
        file_path=str(path), url=url_of(first), chunk_size=2 * MIB
    )
    assert again.offset == 3 * MIB + 7
    again.upload()
    image_id = image_id_of(again)
    assert stored_sha256(server, image_id) == digest


# --- tus-js-client ----------------------------------------------------------------------------


@needs_node
@pytest.mark.parametrize("chunk", [MIB, 5 * MIB], ids=["1MiB", "5MiB"])
def test_tus_js_client_aborts_at_40_percent_and_a_new_process_resumes(
    server: Server, node_client: Path, tmp_path: Path, chunk: int
) -> None:
    path, digest = photo(tmp_path, 12 * MIB + 777)
    aborted = node(node_client, "abort", str(path), server.endpoint, server.key, str(chunk), "0.4")
    url = str(aborted["url"])
    resumed = node(node_client, "resume", str(path), url, server.key, str(chunk))
    image_id = str(resumed["imageId"])
    assert url.endswith(f"/v1/uploads/{image_id}")
    image = image_of(server, image_id)
    assert image["sha256"] == digest
    assert (image["content_type"], image["filename"]) == ("image/jpeg", "resumed.jpg")
    assert stored_sha256(server, image_id) == digest
    assert leftovers(server, image_id) == ([], [])


@needs_node
@pytest.mark.parametrize("during_creation", [False, True], ids=["one-patch", "in-the-post"])
def test_tus_js_client_uploads_a_whole_file_at_once(
    server: Server, node_client: Path, tmp_path: Path, during_creation: bool
) -> None:
    path, digest = photo(tmp_path, 11 * MIB + 5)
    flags = ["--during-creation"] if during_creation else []
    done = node(node_client, "whole", str(path), server.endpoint, server.key, *flags)
    image_id = str(done["imageId"])
    assert image_of(server, image_id)["sha256"] == digest
    assert stored_sha256(server, image_id) == digest


@needs_node
def test_two_workers_serve_one_upload(
    server: Server, node_client: Path, tmp_path: Path, workdir: Path
) -> None:
    process, url = start_imagesvc(workdir, server.env, workers=2)
    try:
        endpoint = f"{url}/v1/uploads"
        path, digest = photo(tmp_path, 9 * MIB + 1)
        aborted = node(node_client, "abort", str(path), endpoint, server.key, str(MIB), "0.4")
        resumed = node(node_client, "resume", str(path), str(aborted["url"]), server.key, "1048576")
        image_id = str(resumed["imageId"])
        assert stored_sha256(server, image_id) == digest
    finally:
        process.stop()


# --- cut bodies and killed servers ------------------------------------------------------------


def _send_partial_patch(
    server: Server, url: str, offset: int, data: bytes, declared: int
) -> socket.socket:
    """A PATCH announcing `declared` bytes that sends only `data`; close the socket to cut."""
    path = url.split(server.url, 1)[1]
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: t\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: Bearer {server.key}\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {declared}\r\n\r\n"
        ).encode()
        + data
    )
    return sock


async def _wait_for_offset(server: Server, url: str, at_least: int) -> int:
    for _ in range(100):
        offset = offset_of(server, url)
        if offset >= at_least:
            return offset
        await asyncio.sleep(0.1)
    return offset_of(server, url)


async def test_a_body_cut_mid_chunk_keeps_what_arrived(server: Server, tmp_path: Path) -> None:
    path, digest = photo(tmp_path, 6 * MIB + 3)
    data = path.read_bytes()
    first = tus.TusClient(server.endpoint, headers=server.auth).uploader(
        file_path=str(path), chunk_size=MIB
    )
    first.upload(stop_at=MIB)
    sent = 1_500_001
    sock = _send_partial_patch(server, url_of(first), MIB, data[MIB : MIB + sent], 4 * MIB)
    await asyncio.sleep(0.5)
    sock.close()
    offset = await _wait_for_offset(server, url_of(first), MIB + sent)
    assert offset == MIB + sent  # an odd offset: the cut bytes are parked as a tail
    again = tus.TusClient(server.endpoint, headers=server.auth).uploader(
        file_path=str(path), url=url_of(first), chunk_size=5 * MIB, retries=5, retry_delay=1
    )
    again.upload()
    assert stored_sha256(server, image_id_of(again)) == digest


async def test_sigkill_mid_patch_then_resume_leaves_no_orphan(
    server: Server, tmp_path: Path
) -> None:
    path, digest = photo(tmp_path, 14 * MIB + 11)
    data = path.read_bytes()
    first = tus.TusClient(server.endpoint, headers=server.auth).uploader(
        file_path=str(path), chunk_size=MIB
    )
    first.upload(stop_at=2 * MIB)
    # 8 MiB of a 12 MiB chunk: at least one 5 MiB part is in the store when the kill lands.
    sock = _send_partial_patch(server, url_of(first), 2 * MIB, data[2 * MIB : 10 * MIB], 12 * MIB)
    await asyncio.sleep(1.0)
    server.process.stop(signal.SIGKILL)
    sock.close()
    server.process.start()
    assert offset_of(server, url_of(first)) == 2 * MIB  # nothing of the killed PATCH counts
    again = tus.TusClient(server.endpoint, headers=server.auth).uploader(
        file_path=str(path), url=url_of(first), chunk_size=5 * MIB, retries=10, retry_delay=1
    )
    again.upload()  # 423 until the dead PATCH's lease runs out, then it goes through
    image_id = image_id_of(again)
    assert stored_sha256(server, image_id) == digest
    await asyncio.sleep(LEASE)
    report = gc(server)
    assert leftovers(server, image_id) == ([], []), report
