"""`imagesvc` command line: serve, migrate, gc (keys come with access control).

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from imagesvc.config import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from alembic.config import Config

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
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        return _fail(str(exc))
    if args.command == "serve":
        return serve(settings, host=args.host, port=args.port, workers=args.workers)
    if args.command == "migrate":
        return migrate(settings)
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

    if workers < 1:
        return _fail("--workers must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(
        "imagesvc.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Uploads are streamed; a slow client must not hold a worker forever.
        timeout_keep_alive=15,
        timeout_graceful_shutdown=30,
        access_log=False,
        server_header=False,
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
    from imagesvc.app import build_image_service, build_reconciler, running_resources

    async with running_resources(settings) as (engine, store):
        service = build_image_service(settings, engine, store)
        report = await build_reconciler(settings, service).run(
            grace=grace, limit=limit, dry_run=dry_run
        )
    return report.lines()


async def _ensure_bucket(settings: Settings) -> bool:
    from imagesvc.app import build_store
    from imagesvc.storage.s3 import S3ObjectStore

    store = build_store(settings)
    assert isinstance(store, S3ObjectStore)
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
