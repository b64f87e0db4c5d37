"""Fixtures: real MariaDB, real S3 servers (moto and rclone) over HTTP, and SQLite + local
directory, each behind the real app. Tests using `client` run once per backend, with a
real API key of a fresh owner (no dependency overrides: every request takes the
production path, authentication and the fast reads included)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config as BotoConfig
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from alembic import command
from imagesvc.app import create_app
from imagesvc.cli import alembic_config
from imagesvc.config import MIB, Settings
from imagesvc.db import Database
from imagesvc.images.models import Image
from imagesvc.serving.content import ServeOptions
from tests.services import (
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    MariaDB,
    Process,
    start_moto,
    start_rclone,
    throwaway_mariadb,
)

BACKENDS = ["mariadb+moto", "mariadb+rclone", "sqlite+local"]
# Small limits so that the multipart-upload path and the 413 path run on modest bodies.
TEST_PART_SIZE = 5 * MIB
TEST_MAX_UPLOAD = 12 * MIB


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imagesvc")


@pytest.fixture(scope="session")
def mariadb(workdir: Path) -> Iterator[MariaDB | str]:
    """The throwaway MariaDB (or IMAGESVC_TEST_MYSQL_URL, when given), migrated to head."""
    external = os.environ.get("IMAGESVC_TEST_MYSQL_URL")
    if external:
        command.upgrade(alembic_config(external), "head")
        yield external
        return
    with throwaway_mariadb() as server:
        yield server


def mysql_url(server: MariaDB | str) -> str:
    return server if isinstance(server, str) else server.url


@pytest.fixture(scope="session")
def moto(workdir: Path) -> Iterator[tuple[Process, str]]:
    process, url = start_moto(workdir)
    boto_client(url).create_bucket(Bucket="imagesvc-moto")
    yield process, url
    process.stop()


@pytest.fixture(scope="session")
def rclone(workdir: Path) -> Iterator[tuple[Process, str]]:
    process, url = start_rclone(workdir, workdir / "rclone-data", "imagesvc-rclone")
    yield process, url
    process.stop()


def boto_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def s3_settings(endpoint: str, bucket: str, database_url: str, **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        storage_backend="s3",
        s3_bucket=bucket,
        s3_endpoint_url=endpoint,
        s3_access_key_id=S3_ACCESS_KEY,
        s3_secret_access_key=S3_SECRET_KEY,
        s3_addressing_style="path",
        s3_part_size=TEST_PART_SIZE,
        max_upload_bytes=TEST_MAX_UPLOAD,
        **extra,
    )


@pytest.fixture(scope="session", params=BACKENDS)
def settings(request: pytest.FixtureRequest, workdir: Path) -> Settings:
    backend: str = request.param
    if backend == "sqlite+local":
        database_url = f"sqlite+aiosqlite:///{workdir / 'sqlite' / 'imagesvc.db'}"
        (workdir / "sqlite").mkdir(exist_ok=True)
        command.upgrade(alembic_config(database_url), "head")
        return Settings(
            database_url=database_url,
            storage_backend="local",
            storage_local_root=str(workdir / "objects"),
            max_upload_bytes=TEST_MAX_UPLOAD,
        )
    database_url = mysql_url(request.getfixturevalue("mariadb"))
    if backend == "mariadb+moto":
        _, endpoint = request.getfixturevalue("moto")
        return s3_settings(endpoint, "imagesvc-moto", database_url)
    _, endpoint = request.getfixturevalue("rclone")
    return s3_settings(endpoint, "imagesvc-rclone", database_url, s3_key_prefix="svc/")


class Inspector:
    """Looks at the store and the database behind the API's back."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.s3 = (
            boto_client(settings.s3_endpoint_url or "")
            if settings.storage_backend == "s3"
            else None
        )

    def keys(self) -> set[str]:
        if self.s3 is None:
            root = Path(self.settings.storage_local_root)
            return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        keys: set[str] = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.s3_bucket
        ):
            keys.update(item["Key"] for item in page.get("Contents", []))
        return keys

    def read(self, key: str) -> bytes:
        if self.s3 is None:
            return (Path(self.settings.storage_local_root) / key).read_bytes()
        body: bytes = self.s3.get_object(Bucket=self.settings.s3_bucket, Key=key)["Body"].read()
        return body

    def open_uploads(self) -> list[str]:
        if self.s3 is None:
            incoming = Path(self.settings.storage_local_root) / ".incoming"
            return [p.name for p in incoming.glob("*")]
        try:
            response = self.s3.list_multipart_uploads(Bucket=self.settings.s3_bucket)
        except self.s3.exceptions.NoSuchUpload:
            return []  # rclone's answer for a bucket that never had a multipart upload
        return [upload["Key"] for upload in response.get("Uploads", [])]

    async def rows(self, owner: str | None = None) -> int:
        query = select(func.count()).select_from(Image)
        if owner is not None:
            query = query.where(Image.owner == owner)
        async with self.app.state.runtime.db.engine.connect() as conn:
            count: int = (await conn.execute(query)).scalar_one()
            return count

    async def row(self, image_id: str) -> Image | None:
        async with AsyncSession(self.app.state.runtime.db.engine) as session:
            image: Image | None = await session.get(Image, image_id)
            return image


async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def app_with(settings: Settings, **changes: Any) -> AsyncIterator[FastAPI]:
    """Another running app on the same database and store, with some settings changed
    (validated like the environment is)."""
    async for running in running_app(Settings(**{**settings.model_dump(), **changes})):
        yield running


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async for running in running_app(settings):
        yield running


@pytest.fixture
def owner() -> str:
    """A fresh owner per test, so tests never see each other's images."""
    return f"owner-{uuid.uuid4().hex[:12]}"


async def bearer(app: FastAPI, owner: str) -> dict[str, str]:
    """The Authorization header of a new API key of `owner`, made as an operator would."""
    created = await app.state.runtime.keys.create(owner)
    return {"Authorization": f"Bearer {created.key}"}


@asynccontextmanager
async def client_for(app: FastAPI, owner: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app that sends a real API key of `owner` (None: no key at all), so
    every request runs real authentication and the production request path."""
    headers = await bearer(app, owner) if owner is not None else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://imagesvc.test", headers=headers
    ) as c:
        yield c


@pytest.fixture
async def client(app: FastAPI, owner: str) -> AsyncIterator[httpx.AsyncClient]:
    """The usual client: `owner`'s key on every request."""
    async with client_for(app, owner) as c:
        yield c


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no key."""
    async with client_for(app, None) as c:
        yield c


@contextmanager
def serving(app: FastAPI, **changes: Any) -> Iterator[ServeOptions]:
    """Serve content and variants with other options (e.g. `redirect=False`: proxy mode)
    for the duration of the block."""
    runtime = app.state.runtime
    saved = runtime.content.options
    options = replace(saved, **changes)
    runtime.content.options = runtime.variants.options = options
    try:
        yield options
    finally:
        runtime.content.options = runtime.variants.options = saved


@pytest.fixture
def unit_database_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite file for one unit test."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'unit.db'}"
    command.upgrade(alembic_config(url), "head")  # runs its own event loop: not in one
    return url


@pytest.fixture
async def unit_db(unit_database_url: str) -> AsyncIterator[Database]:
    """The database gateway on a fresh SQLite file, for unit tests of one protocol."""
    database = Database.from_settings(Settings(database_url=unit_database_url))
    yield database
    await database.dispose()


@pytest.fixture
def inspector(app: FastAPI, settings: Settings) -> Inspector:
    return Inspector(app, settings)


@pytest.fixture
def backend(settings: Settings) -> str:
    return "s3" if settings.storage_backend == "s3" else "local"
