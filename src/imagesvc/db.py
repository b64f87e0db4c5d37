"""The database gateway: declarative base, the engine, and `Database`, through which every
service reaches SQL (one short transaction per step, under a timeout).

Engines are built by the app lifespan (and the CLI), never at import time. Services open a
short transaction per step (`await db.run(work)`) rather than one session per request, so a
long streaming upload or download never pins a pooled connection. SQLAlchemy's types stay
here and in the repositories: a service hands the transaction (`Tx`) to repositories and
never calls it itself, and a duplicate primary key reaches it as `DuplicateKey`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import DateTime, Executable, MetaData, Row, event, text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from imagesvc.config import Settings
from imagesvc.errors import ServiceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a down, restarting or overloaded database raises; anything else is a bug (500).
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError, PoolTimeoutError, ConnectionError)


class DuplicateKey(Exception):
    """An INSERT met a row with the same primary key (a concurrent first request won)."""


# One transaction, as repositories take it. Services pass it on and never use it themselves.
Tx = AsyncSession


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"

    def __init__(self) -> None:
        super().__init__("the database is unavailable; retry shortly", retry_after=5)


# Stable constraint names, so migrations can name what they alter on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python, naive UTC in the database (microseconds on MySQL)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.sqlalchemy_url
    if settings.is_sqlite:
        database = url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": settings.db_connect_timeout})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_connect_timeout,
        pool_recycle=1800,
        connect_args={"connect_timeout": settings.db_connect_timeout, "charset": "utf8mb4"},
    )
    event.listen(engine.sync_engine.pool, "checkin", _note_idle)
    event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
    return engine


# A connection dropped by the server (restart, network, wait_timeout) is replaced before
# use instead of failing a request. SQLAlchemy's pool_pre_ping does that with a round trip
# on every checkout (measured: a quarter of the database time of a cached read); a
# connection used within the last seconds is alive, so only idle ones are pinged. One
# that breaks while busy fails its request, and SQLAlchemy then recycles the whole pool.
PING_IDLE_AFTER = 2.0


def _note_idle(_dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_IDLE_AFTER:
        return
    try:
        dbapi_connection.ping(False)
    except Exception as exc:  # any failure: let the pool replace it
        raise DisconnectionError() from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed while an upload commits; busy_timeout waits for the writer
    # instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _is_duplicate(exc: IntegrityError) -> bool:
    # MySQL/MariaDB: error 1062 "Duplicate entry"; SQLite: "UNIQUE constraint failed".
    message = str(exc.orig)
    return "1062" in message or "Duplicate entry" in message or "UNIQUE constraint" in message


class Database:
    """Every database step of the service goes through here: one short transaction (or one
    Core read) on a pooled connection, bounded by `timeout`; a database that is down,
    restarting or hung becomes `DatabaseUnavailable` (503 + Retry-After), never a 500 or a
    hung request."""

    def __init__(self, engine: AsyncEngine, *, timeout: float = 10.0) -> None:
        self.engine = engine
        self.timeout = timeout
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(create_engine(settings), timeout=settings.db_timeout)

    async def run(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """`work` in one transaction: committed on success, rolled back on error. Writes
        are never retried: a retried INSERT or UPDATE after an unknown outcome is exactly how
        duplicates are made."""
        return await self._against_database(lambda: self._transaction(work), retries=0)

    async def read(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Like `run`, for work that only reads: retried once when a pooled connection
        turns out to be dead (the server restarted), which is safe since nothing was
        written."""
        return await self._against_database(lambda: self._transaction(work), retries=1)

    async def fetch_one(self, statement: Executable, params: dict[str, Any]) -> Row[Any] | None:
        """One Core read, no ORM session, no transaction to commit: the hot paths (serving
        content) spend a third of their CPU in session bookkeeping otherwise. Retried once
        on a dead connection (it only reads)."""

        async def fetch() -> Row[Any] | None:
            async with self.engine.connect() as conn:
                return (await conn.execute(statement, params)).first()

        return await self._against_database(fetch, retries=1)

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query (readiness)."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    def pool_usage(self) -> tuple[int, int] | None:
        """(checked out, size) of the connection pool, when it is a sized pool."""
        pool: Any = self.engine.pool
        if not hasattr(pool, "checkedout"):
            return None
        return pool.checkedout(), pool.size()

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def _transaction(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        try:
            async with self._sessions.begin() as session:
                return await work(session)
        except IntegrityError as exc:
            if not _is_duplicate(exc):
                raise  # another constraint: a bug, not a race
            raise DuplicateKey() from None

    async def _against_database(self, call: Callable[[], Awaitable[T]], *, retries: int) -> T:
        for attempt in range(retries + 1):
            try:
                async with asyncio.timeout(self.timeout):
                    return await call()
            except UNAVAILABLE_ERRORS as exc:
                if attempt < retries and getattr(exc, "connection_invalidated", False):
                    continue
                log.warning("database unavailable: %s", type(exc).__name__)
                raise DatabaseUnavailable() from None
            except TimeoutError:
                log.warning("database did not answer within %.1fs", self.timeout)
                raise DatabaseUnavailable() from None
        raise AssertionError("unreachable")  # pragma: no cover
