"""Migrations run both ways on MariaDB and SQLite, and match the models exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from alembic import command
from imagesvc.cli import alembic_config
from imagesvc.config import load_settings
from imagesvc.db import Base, create_engine
from tests.conftest import mysql_url
from tests.services import MariaDB


def _diff(database_url: str) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_engine(load_settings(database_url=database_url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}),
                        Base.metadata,
                    )
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _tables(database_url: str) -> set[str]:
    async def run() -> set[str]:
        engine = create_engine(load_settings(database_url=database_url))
        try:
            async with engine.connect() as conn:
                names = await conn.run_sync(lambda sync: sync.dialect.get_table_names(sync))
                return set(names)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture(params=["sqlite", "mariadb"])
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
    server: MariaDB | str = request.getfixturevalue("mariadb")
    if isinstance(server, str):
        pytest.skip("an external test database is not dropped and recreated")
    server.sql("DROP DATABASE IF EXISTS migrations; CREATE DATABASE migrations")
    return mysql_url(server).rsplit("/", 1)[0] + "/migrations"


def test_upgrade_downgrade_upgrade_and_no_drift(fresh_database: str) -> None:
    config = alembic_config(fresh_database)
    command.upgrade(config, "head")
    assert "images" in _tables(fresh_database)
    command.downgrade(config, "base")
    assert _tables(fresh_database) <= {"alembic_version"}
    command.upgrade(config, "head")
    assert _diff(fresh_database) == []
