"""API keys: creation, listing, revocation, and authentication of bearer tokens.

A key reads `isk_<id>_<secret>`: the id (16 hex characters) finds the row, the secret (256
random bits) is checked against its stored sha256 with a constant-time comparison. The key
itself is shown once, at creation, and is never stored or logged.

Authentication results are cached in-process for `cache_seconds` (default 5), so most
requests cost no database round trip; a revocation therefore takes effect within that bound
on every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from imagesvc.auth.models import ApiKey
from imagesvc.auth.repository import KeyRepository
from imagesvc.cache import SingleFlight, TtlCache
from imagesvc.db import Database, utcnow
from imagesvc.errors import InvalidParameter, ProblemError

KEY_PREFIX = "isk_"
KEY_PATTERN = re.compile(r"isk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
OWNER_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")
# last_used_at is a hint for operators, not an audit log: write it at most this often.
LAST_USED_EVERY = 60.0
_CACHE_MAX = 10_000


class Unauthorized(ProblemError):
    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        challenge = 'Bearer realm="imagesvc"'
        if error:
            challenge += f', error="{error}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


@dataclass(frozen=True, slots=True)
class Principal:
    owner: str
    key_id: str


@dataclass(frozen=True, slots=True)
class NewKey:
    id: str
    owner: str
    key: str  # the only time the full key exists outside the client


@dataclass(frozen=True, slots=True)
class _Cached:
    owner: str | None  # None: no such key
    secret_sha256: str
    revoked: bool


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_owner(owner: str) -> str:
    if not OWNER_PATTERN.fullmatch(owner):
        raise InvalidParameter("owner: 1 to 64 characters of A-Z a-z 0-9 . _ @ -")
    return owner


class KeyService:
    def __init__(self, db: Database, *, cache_seconds: float = 5.0) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        # Public: the answer cache (web/hot_reads.py) is only as fresh as these entries.
        self.cache: TtlCache[str, _Cached] = TtlCache(cache_seconds, _CACHE_MAX)
        self._loading: SingleFlight[str, _Cached] = SingleFlight()
        # Keys whose last_used_at this process wrote within LAST_USED_EVERY.
        self._recently_noted: TtlCache[str, bool] = TtlCache(LAST_USED_EVERY, _CACHE_MAX)
        self._background: set[asyncio.Task[None]] = set()

    async def create(self, owner: str) -> NewKey:
        check_owner(owner)
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        row = ApiKey(id=key_id, owner=owner, secret_sha256=_sha256(secret), created_at=utcnow())
        await self.db.run(lambda tx: KeyRepository(tx).add(row))
        return NewKey(id=key_id, owner=owner, key=f"{KEY_PREFIX}{key_id}_{secret}")

    async def list(self) -> Sequence[ApiKey]:
        return await self.db.read(lambda tx: KeyRepository(tx).all())

    async def revoke(self, key_id: str) -> bool:
        revoked = await self.db.run(lambda tx: KeyRepository(tx).revoke(key_id, now=utcnow()))
        self.cache.pop(key_id)
        self._loading.forget(key_id)
        return revoked

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("send `Authorization: Bearer <api key>`", error=None)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "use the Bearer scheme: `Authorization: Bearer <api key>`",
                error="invalid_request",
            )
        match = KEY_PATTERN.fullmatch(token.strip())
        if match is None:
            raise Unauthorized("the API key is malformed")
        key_id, secret = match.groups()
        entry = await self._lookup(key_id)
        # Compare even when the key is unknown, so timing says nothing about which ids exist.
        valid = hmac.compare_digest(_sha256(secret), entry.secret_sha256)
        if entry.owner is None or entry.revoked or not valid:
            raise Unauthorized("the API key is invalid or revoked")
        self._note_use(key_id)
        return Principal(owner=entry.owner, key_id=key_id)

    async def _lookup(self, key_id: str) -> _Cached:
        cached = self.cache.get(key_id)
        if cached is not None:
            return cached
        # Single flight: when a busy key's entry expires, the requests that find it expired
        # share one query instead of each taking a pooled connection (a p99 spike every
        # `cache_seconds` under load, before).
        return await self._loading.do(key_id, lambda: self._fetch(key_id))

    async def _fetch(self, key_id: str) -> _Cached:
        started, generation = time.monotonic(), self.cache.generation
        row = await self.db.read(lambda tx: KeyRepository(tx).get(key_id))
        entry = _Cached(
            owner=row.owner if row else None,
            secret_sha256=row.secret_sha256 if row else "0" * 64,
            revoked=bool(row and row.revoked_at),
        )
        # Bounded (a flood of random ids cannot grow memory); not kept if this process
        # revoked a key meanwhile (the row may predate it).
        self.cache.put(key_id, entry, since=started, generation=generation)
        return entry

    def _note_use(self, key_id: str) -> None:
        if self._recently_noted.get(key_id) is not None:
            return
        self._recently_noted.put(key_id, True)
        task = asyncio.create_task(self._write_last_used(key_id, utcnow()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_last_used(self, key_id: str, when: datetime) -> None:
        with contextlib.suppress(ProblemError):  # a hint only; the next use tries again
            await self.db.run(lambda tx: KeyRepository(tx).note_use(key_id, when=when))
