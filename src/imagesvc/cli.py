"""`imagesvc` command line: serve, migrate, gc, keys.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from imagesvc.config import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from alembic.config import Config

    from imagesvc.auth.keys import KeyService

log = logging.getLogger("imagesvc")


def _fail(message: str, code: int = 2) -> int:
    print(f"imagesvc: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagesvc", description="The imagesvc image service.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, default=None, help="worker processes (default IMAGESVC_WORKERS, 1)"
    )

    commands.add_parser("migrate", help="upgrade the database schema to the latest version")

    gc = commands.add_parser(
        "gc", help="reconcile the store and the database after crashes (see docs/DESIGN.md)"
    )
    gc.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds before an unreferenced object or unfinished upload counts as abandoned "
        "(default IMAGESVC_GC_GRACE_SECONDS); live uploads are never touched",
    )
    gc.add_argument("--dry-run", action="store_true", help="report, change nothing")
    gc.add_argument(
        "--limit",
        type=int,
        default=None,
        help="most items per kind in one run (default IMAGESVC_GC_BATCH_LIMIT)",
    )

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser(
        "create", help="create a key; it is printed once, alone on the last line"
    )
    create.add_argument("--owner", required=True, help="the owner whose images the key reaches")
    key_commands.add_parser("list", help="list keys (never the keys themselves)")
    revoke = key_commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    key_commands.add_parser(
        "dev",
        help="embedded default only: create (first time) and print a development key, "
        "kept beside the SQLite file",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        return _fail(str(exc))
    if args.command == "serve":
        workers = settings.workers if args.workers is None else args.workers
        return serve(settings, host=args.host, port=args.port, workers=workers)
    if args.command == "migrate":
        return migrate(settings)
    if args.command == "keys":
        return keys(settings, args)
    if args.command == "gc":
        if (args.grace is not None and args.grace < 0) or (
            args.limit is not None and args.limit < 1
        ):
            return _fail("--grace must be >= 0 and --limit >= 1")
        grace = settings.gc_grace_seconds if args.grace is None else args.grace
        limit = settings.gc_batch_limit if args.limit is None else args.limit
        return gc(settings, grace=grace, limit=limit, dry_run=args.dry_run)
    return _fail(f"unknown command {args.command}")  # pragma: no cover (argparse refuses)


def serve(settings: Settings, *, host: str, port: int, workers: int) -> int:
    import uvicorn

    from imagesvc.observability.logs import configure_logging

    if workers < 1:
        return _fail("--workers must be at least 1")
    configure_logging(settings.log_format)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its metrics here and /metrics sums them (see metrics.py).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imagesvc-metrics-")
    uvicorn.run(
        "imagesvc.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Uploads are streamed; a slow client must not hold a worker forever.
        timeout_keep_alive=15,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        access_log=False,
        server_header=False,
        log_config=None,  # ours (structured), set above and in each worker
    )
    return 0


def script_location() -> str:
    """Migrations ship inside the wheel (imagesvc/migrations); a checkout has alembic/."""
    packaged = files("imagesvc") / "migrations"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "alembic")


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location())
    config.attributes["skip_logging"] = True
    config.attributes["database_url"] = database_url
    return config


def migrate(settings: Settings) -> int:
    from alembic import command

    try:
        command.upgrade(alembic_config(settings.database_url), "head")
    except Exception as exc:  # the message, not a traceback, for an operator
        return _fail(f"migration failed: {type(exc).__name__}: {_one_line(exc)}", 1)
    print("database schema is up to date")
    if settings.storage_backend == "s3" and settings.s3_create_bucket:
        created = asyncio.run(_ensure_bucket(settings))
        print(f"bucket {settings.s3_bucket} {'created' if created else 'exists'}")
    return 0


def gc(settings: Settings, *, grace: float, limit: int, dry_run: bool) -> int:
    from imagesvc.errors import ServiceUnavailable

    try:
        lines = asyncio.run(_gc(settings, grace=grace, limit=limit, dry_run=dry_run))
    except ServiceUnavailable as exc:
        return _fail(f"gc stopped: {exc.detail}", 1)
    for line in lines:
        print(line)
    return 0


async def _gc(settings: Settings, *, grace: float, limit: int, dry_run: bool) -> list[str]:
    from imagesvc.runtime import Runtime

    async with Runtime(settings).open(background=False) as runtime:
        report = await runtime.reconciler.run(grace=grace, limit=limit, dry_run=dry_run)
    return report.lines()


def keys(settings: Settings, args: argparse.Namespace) -> int:
    from imagesvc.auth.keys import OWNER_PATTERN
    from imagesvc.errors import ServiceUnavailable

    if args.keys_command == "create" and not OWNER_PATTERN.fullmatch(args.owner):
        return _fail("--owner: 1 to 64 characters of A-Z a-z 0-9 . _ @ -")
    if args.keys_command == "dev" and not settings.is_sqlite:
        return _fail("`keys dev` is for the embedded default (SQLite); use `keys create`")
    # The embedded default's key is kept (0600) beside the database, so that later starts
    # can print it again: only its hash is in the database.
    saved = Path(settings.sqlalchemy_url.database or "imagesvc.db").resolve().parent / "dev-api-key"
    known = saved.read_text().strip() if args.keys_command == "dev" and saved.exists() else ""
    try:
        lines, code = asyncio.run(_keys(settings, args, known))
    except ServiceUnavailable as exc:
        return _fail(exc.detail, 1)
    if args.keys_command == "dev":
        if lines[-1] != known:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.touch(mode=0o600)
            saved.write_text(lines[-1] + "\n")
        lines[0] += f" ({'from' if lines[-1] == known else 'saved in'} {saved}):"
    for line in lines:
        print(line)
    return code


async def _keys(
    settings: Settings, args: argparse.Namespace, known_dev_key: str
) -> tuple[list[str], int]:
    from imagesvc.auth.keys import KeyService
    from imagesvc.db import Database

    db = Database.from_settings(settings)
    try:
        service = KeyService(db, cache_seconds=settings.auth_cache_seconds)
        if args.keys_command == "create":
            new = await service.create(args.owner)
            return [
                f"created key {new.id} for owner {new.owner}; it is shown only once:",
                new.key,
            ], 0
        if args.keys_command == "list":
            rows = [f"{'id':<16}  {'owner':<24}  {'created':<20}  {'last used':<20}  revoked"]
            for key in await service.list():
                rows.append(
                    f"{key.id:<16}  {key.owner:<24}  {_when(key.created_at):<20}  "
                    f"{_when(key.last_used_at):<20}  {_when(key.revoked_at)}"
                )
            return rows, 0
        if args.keys_command == "revoke":
            if await service.revoke(args.key_id):
                return [
                    f"revoked key {args.key_id} (refused everywhere within "
                    f"{settings.auth_cache_seconds:g} s)"
                ], 0
            return [f"no active key {args.key_id}"], 1
        return await _dev_key(service, known_dev_key), 0
    finally:
        await db.dispose()


async def _dev_key(service: KeyService, key: str) -> list[str]:
    """The embedded default's key: the saved one while it is valid, else a new one."""
    from imagesvc.errors import ProblemError

    if key:
        try:
            await service.authenticate(f"Bearer {key}")
        except ProblemError:
            key = ""  # revoked, or from another database
    if not key:
        key = (await service.create("dev")).key
    return [
        "development API key of owner `dev`",
        f'  curl -H "Authorization: Bearer {key}" -F file=@photo.jpg http://127.0.0.1:8000/v1/images',
        key,
    ]


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


async def _ensure_bucket(settings: Settings) -> bool:
    from imagesvc.runtime import build_store

    store = build_store(settings)
    await store.start()
    try:
        return await store.ensure_bucket()
    finally:
        await store.close()


def _one_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]


if __name__ == "__main__":
    sys.exit(main())
