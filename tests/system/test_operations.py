"""Running it like production: JSON request logs without secrets, Prometheus metrics across
workers, graceful shutdown that leaves nothing open, migrations shipped in the wheel, and a
compose file that validates."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagesvc.config import MIB, Settings
from tests.conftest import mysql_url, s3_settings
from tests.consistency import open_uploads, rows
from tests.samples import jpeg
from tests.services import MariaDB, Process, create_key, start_imagesvc

ROOT = Path(__file__).resolve().parents[2]
DB_PASSWORD = "db-Secret-4711"


@pytest.fixture(scope="module")
def ops_env(mariadb: MariaDB | str, rclone: tuple[Process, str]) -> dict[str, str]:
    """Production-like settings: a database user with a password, S3 with a secret."""
    url = mysql_url(mariadb)
    if isinstance(mariadb, MariaDB):
        mariadb.sql(
            f"CREATE USER IF NOT EXISTS 'svc'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
            "GRANT ALL ON imagesvc.* TO 'svc'@'127.0.0.1';"
        )
        url = url.replace("root@", f"svc:{DB_PASSWORD}@")
    settings = s3_settings(rclone[1], "imagesvc-rclone", url, s3_key_prefix="ops/")
    env = {
        f"IMAGESVC_{name.upper()}": str(value)
        for name, value in settings.model_dump().items()
        if value is not None and not isinstance(value, bool)
    }
    env["IMAGESVC_LOG_FORMAT"] = "json"
    return env


@pytest.fixture(scope="module")
def ops_server(
    ops_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, str, dict[str, str]]]:
    where = tmp_path_factory.mktemp("ops")
    process, url = start_imagesvc(where, ops_env, workers=2)
    auth = {"Authorization": f"Bearer {create_key(ops_env, 'ops')}"}
    yield process, url, auth
    process.stop()


async def test_request_log_lines_and_no_secrets(
    ops_server: tuple[Process, str, dict[str, str]], ops_env: dict[str, str]
) -> None:
    process, url, auth = ops_server
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as client:
        created = await client.post(
            "/v1/images",
            content=jpeg(),
            headers={"Content-Type": "image/jpeg", "X-Request-ID": "trace-ops-1"},
        )
        assert created.status_code == 201
        image_id = created.json()["id"]
        redirect = await client.get(f"/v1/images/{image_id}/content")
        signature = redirect.headers["location"].split("X-Amz-Signature=")[1]
        await client.get("/v1/images/img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S")
        await client.get("/v1/images", headers={"Authorization": auth["Authorization"] + "x"})
        await client.get("/nowhere")
    await asyncio.sleep(0.3)  # let the workers flush

    text = process.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    requests = [line for line in lines if line.get("event") == "request"]
    upload = next(line for line in requests if line.get("request_id") == "trace-ops-1")
    assert upload["route"] == "/v1/images"
    assert upload["method"] == "POST"
    assert upload["status"] == 201
    assert upload["owner"] == "ops"
    assert upload["bytes_in"] == len(jpeg())
    assert upload["bytes_out"] > 0
    assert upload["duration_ms"] > 0
    assert upload["level"] == "info"
    assert upload["timestamp"]
    routes = {(line["route"], line["status"]) for line in requests}
    assert ("/v1/images/{image_id}", 404) in routes
    assert ("/v1/images", 401) in routes
    assert ("unmatched", 404) in routes
    key = auth["Authorization"].removeprefix("Bearer ")
    for secret in (
        key,
        key[len("isk_") + 17 :],
        ops_env["IMAGESVC_S3_SECRET_ACCESS_KEY"],
        DB_PASSWORD,
        signature,
    ):
        assert secret not in text


async def test_metrics_sum_both_workers(
    ops_server: tuple[Process, str, dict[str, str]],
) -> None:
    _, url, auth = ops_server
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as client:
        for _ in range(6):  # spread over both workers
            assert (
                await client.post(
                    "/v1/images", content=jpeg(), headers={"Content-Type": "image/jpeg"}
                )
            ).status_code == 201
        image_id = (await client.get("/v1/images")).json()["items"][0]["id"]
        await client.get(f"/v1/images/{image_id}/variants/32x32?format=webp")
        metrics = (await client.get("/metrics")).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    posted = sum(
        value
        for name, value in samples.items()
        if name.startswith("imagesvc_http_requests_total{")
        and 'route="/v1/images"' in name
        and 'method="POST"' in name
        and 'status="201"' in name
    )
    assert posted >= 6
    assert any(n.startswith("imagesvc_http_request_duration_seconds_bucket") for n in samples)
    assert sum(v for n, v in samples.items() if n.startswith("imagesvc_uploaded_bytes_total")) > 0
    assert any(n.startswith('imagesvc_renders_total{format="webp"') for n in samples)
    assert any(n.startswith("imagesvc_db_pool_checked_out") for n in samples)


@pytest.fixture
def short_grace_server(
    ops_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Process, str, dict[str, str]]]:
    env = {
        **ops_env,
        "IMAGESVC_SHUTDOWN_GRACE_SECONDS": "2",
        "IMAGESVC_MAX_UPLOAD_BYTES": str(512 * MIB),
    }
    process, url = start_imagesvc(tmp_path, env)
    yield process, url, env
    process.stop()  # a no-op once the test's SIGTERM ended it; a safety net otherwise


async def test_sigterm_aborts_unfinished_uploads_cleanly(
    short_grace_server: tuple[Process, str, dict[str, str]],
) -> None:
    process, url, env = short_grace_server
    auth = {"Authorization": f"Bearer {create_key(env, 'ops-shutdown')}"}
    fields: dict[str, Any] = {k.removeprefix("IMAGESVC_").lower(): v for k, v in env.items()}
    settings = Settings(**fields)
    pending_before = await _pending(settings)
    quick = jpeg(color=(5, 5, 5))

    async def never_ending() -> AsyncIterator[bytes]:
        yield jpeg()
        for _ in range(300):  # 300 MiB at a crawl: cannot finish within the grace
            yield os.urandom(MIB)
            await asyncio.sleep(0.1)

    async def slow_but_short() -> AsyncIterator[bytes]:
        yield quick[:100]
        await asyncio.sleep(0.5)
        yield quick[100:]

    async with httpx.AsyncClient(base_url=url, timeout=60, headers=auth) as client:
        headers = {"Content-Type": "image/jpeg"}
        long_upload = asyncio.create_task(
            client.post("/v1/images", content=never_ending(), headers=headers)
        )
        await asyncio.sleep(1.5)  # a multipart upload is open by now
        assert open_uploads(settings)
        short_upload = asyncio.create_task(
            client.post("/v1/images", content=slow_but_short(), headers=headers)
        )
        await asyncio.sleep(0.1)
        os.killpg(process.pid, signal.SIGTERM)
        short = await short_upload
        try:
            answered: httpx.Response | None = await long_upload
        except httpx.HTTPError:
            answered = None  # the connection was cut: no promise was made
    assert answered is None or answered.status_code != 201
    assert process.proc is not None
    # Uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM.
    assert process.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert short.status_code == 201, short.text  # finished within the grace period
    assert open_uploads(settings) == []
    assert await _pending(settings) == pending_before


async def _pending(settings: Settings) -> int:
    table = await rows(settings)
    return sum(1 for row in table.values() if row["status"] != "ready")


def test_wheel_ships_the_migrations_and_the_console(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("imagesvc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "imagesvc/migrations/env.py" in names
    versions = sorted(n for n in names if n.startswith("imagesvc/migrations/versions/"))
    expected = sorted(
        f"imagesvc/migrations/versions/{p.name}"
        for p in (ROOT / "alembic" / "versions").glob("*.py")
    )
    assert versions == expected
    # The console's static files (console/static/) ship as package data.
    static = sorted(n for n in names if n.startswith("imagesvc/console/static/"))
    shipped = sorted(
        f"imagesvc/console/static/{p.name}"
        for p in (ROOT / "src" / "imagesvc" / "console" / "static").iterdir()
    )
    assert static == shipped
    assert {"index.html", "console.js", "console.css", "blurhash.js"} <= {
        name.rsplit("/", 1)[1] for name in static
    }


def test_compose_file_is_valid_and_wired() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "docker-compose"),
            "--env-file",
            ".env.example",
            "-f",
            "docker-compose.yml",
            "config",
            "--format",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    config = json.loads(result.stdout)
    services = config["services"]
    assert {"mariadb", "minio", "redis", "createbucket", "migrate", "api"} <= set(services)
    api = services["api"]["depends_on"]
    assert api["mariadb"]["condition"] == "service_healthy"
    assert api["minio"]["condition"] == "service_healthy"
    assert api["createbucket"]["condition"] == "service_completed_successfully"
    assert api["migrate"]["condition"] == "service_completed_successfully"
    assert api["redis"]["condition"] == "service_healthy"
    assert services["api"]["environment"]["IMAGESVC_REDIS_URL"] == "redis://redis:6379/0"
    for name in ("mariadb", "minio", "redis"):
        assert services[name]["healthcheck"]["test"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("FROM ") >= 2  # multi-stage
    assert "USER imagesvc" in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert "/healthz" in dockerfile
