"""Alembic environment: async engine, URL from the service's own settings."""

from __future__ import annotations

import asyncio
import logging.config

from sqlalchemy.engine import Connection

from alembic import context
from imagesvc.config import load_settings
from imagesvc.db import Base, create_engine
from imagesvc.images import models  # noqa: F401  (registers the tables on Base.metadata)

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table.
        render_as_batch=True,
        compare_type=True,
    )


def _database_url() -> str:
    # `imagesvc migrate` and the tests pass the URL in; the alembic CLI reads the env.
    url = config.attributes.get("database_url")
    return url if isinstance(url, str) else load_settings().database_url


def run_migrations_offline() -> None:
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_engine(load_settings(database_url=_database_url()))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
