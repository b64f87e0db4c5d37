"""`Idempotency-Key` on uploads (SPEC §4): owner-scoped, kept 24 hours.

- First request with a key claims it (a row `in_progress`), then uploads; the claim turns
  `done` in the same transaction that makes the image `ready`, holding the response.
- The same request again (same bytes, filename and visibility) gets the stored response:
  201 with the same Image, and nothing new is created. The body is still read (to compare
  its sha256) but never stored.
- A different request with the same key: 409 `idempotency_key_reused`.
- While the first request runs, a duplicate gets 409 `idempotency_key_in_progress` with
  `Retry-After` (so concurrent duplicates create exactly one image). A claim whose upload
  died (no heartbeat within the upload lease) is taken over by the next request.
- A failed upload releases its claim: failures are not replayed, the client may retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from imagesvc.db import Database, DuplicateKey, Tx, utcnow
from imagesvc.errors import Conflict, InvalidParameter, ServiceUnavailable
from imagesvc.images.filenames import sanitise_filename
from imagesvc.images.models import IdempotencyRecord, IdempotencyState, Image
from imagesvc.uploads.ingest import Ingest, MeasuredUpload, UploadHooks, UploadRequest
from imagesvc.uploads.repository import IdempotencyRepository

IDEMPOTENCY_TTL = timedelta(hours=24)
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_SNAPSHOT_FIELDS = (
    "id",
    "owner",
    "status",
    "storage_key",
    "content_type",
    "width",
    "height",
    "frames",
    "byte_size",
    "sha256",
    "filename",
    "visibility",
    "blurhash",
    "dominant_color",
)


class KeyReused(Conflict):
    code = "idempotency_key_reused"


class KeyInProgress(Conflict):
    code = "idempotency_key_in_progress"

    def __init__(self) -> None:
        super().__init__(
            "a request with this Idempotency-Key is still being processed; retry shortly",
            headers={"Retry-After": "1"},
        )


@dataclass(frozen=True, slots=True)
class Created:
    image: Image
    replayed: bool


@dataclass(frozen=True, slots=True)
class Claim:
    """An Idempotency-Key held by one request (see `IdempotentUploads.claim`)."""

    owner: str
    key: str
    token: str


def fingerprint(sha256: str, filename: str | None, visibility: str) -> str:
    return hashlib.sha256(f"{sha256}\n{filename or ''}\n{visibility}".encode()).hexdigest()


class IdempotentUploads:
    def __init__(self, db: Database, ingest: Ingest) -> None:
        self.db = db
        self.ingest = ingest

    async def create(self, request: UploadRequest, key: str) -> Created:
        if not _KEY.fullmatch(key):
            raise InvalidParameter("Idempotency-Key: 1 to 255 visible ASCII characters")
        owner = request.owner
        # While in progress, the fingerprint column holds this request's claim token: only
        # the request holding the claim may refresh, complete or release it (a request
        # that outlived its lease and was taken over must not touch its successor's).
        token = "claim:" + secrets.token_hex(16)
        try:
            existing = await self._claim(owner, key, token)
            if existing is not None:
                return Created(await self._replay(existing, request), replayed=True)

            async def heartbeat(tx: Tx) -> None:
                await IdempotencyRepository(tx).refresh(owner, key, token=token, now=utcnow())

            async def ready(tx: Tx, image: Image) -> None:
                completed = await IdempotencyRepository(tx).complete(
                    owner,
                    key,
                    token=token,
                    fingerprint=fingerprint(image.sha256 or "", image.filename, image.visibility),
                    response=_snapshot(image),
                    now=utcnow(),
                )
                if not completed:
                    # Taken over: the image must not become ready under this key.
                    raise ServiceUnavailable("the upload took too long to commit; retry it")

            image = await self.ingest.create(request, UploadHooks(heartbeat, ready))
        except BaseException:
            await asyncio.shield(self._release(owner, key, token))
            raise
        return Created(image, replayed=False)

    # --- the same claims for other requests that create an image (direct uploads) --------
    # Such a request is one short transaction, so its claim needs no heartbeat: claim,
    # then store the response in the transaction that creates what it answers (`record`),
    # or `release` on failure.

    async def claim(self, owner: str, key: str) -> tuple[Claim, IdempotencyRecord | None]:
        """Claim `key` for a new request (record None), or return the finished record to
        replay (compare its fingerprint first: `replay`). Raises 422 for a malformed key,
        409 `idempotency_key_in_progress` while another request holds it."""
        if not _KEY.fullmatch(key):
            raise InvalidParameter("Idempotency-Key: 1 to 255 visible ASCII characters")
        claim = Claim(owner, key, "claim:" + secrets.token_hex(16))
        return claim, await self._claim(owner, key, claim.token)

    @staticmethod
    def replay(record: IdempotencyRecord, fingerprint: str) -> str:
        """The stored response if `fingerprint` is the first request's; else 409."""
        if fingerprint != record.fingerprint or record.response is None:
            raise KeyReused("this Idempotency-Key was used for a different request; use a new key")
        return record.response

    async def record(self, tx: Tx, claim: Claim, *, fingerprint: str, response: str) -> None:
        """In the transaction that creates the result: the response to replay."""
        done = await IdempotencyRepository(tx).complete(
            claim.owner,
            claim.key,
            token=claim.token,
            fingerprint=fingerprint,
            response=response,
            now=utcnow(),
        )
        if not done:  # taken over: nothing may be created under this key
            raise ServiceUnavailable("the request took too long to commit; retry it")

    async def release(self, claim: Claim) -> None:
        await self._release(claim.owner, claim.key, claim.token)

    async def _claim(self, owner: str, key: str, token: str) -> IdempotencyRecord | None:
        """Claim the key (None), or return the finished record to replay."""
        for _ in range(2):
            try:
                return await self.db.run(lambda tx: self._claim_in(tx, owner, key, token))
            except DuplicateKey:
                continue  # a concurrent first request inserted it: look again
        raise KeyInProgress()

    async def _claim_in(self, tx: Tx, owner: str, key: str, token: str) -> IdempotencyRecord | None:
        repo = IdempotencyRepository(tx)
        now = utcnow()
        record = await repo.get(owner, key)
        if record is None:
            await repo.claim(owner, key, token=token, now=now)
            return None
        expired = record.created_at < now - IDEMPOTENCY_TTL
        dead = record.state == IdempotencyState.IN_PROGRESS and record.updated_at < now - timedelta(
            seconds=self.ingest.limits.lease_seconds
        )
        if expired or dead:
            if await repo.take_over(record, token=token, now=now, restart=expired):
                return None
            raise KeyInProgress()
        if record.state == IdempotencyState.IN_PROGRESS:
            raise KeyInProgress()
        return record

    async def _replay(self, record: IdempotencyRecord, request: UploadRequest) -> Image:
        # Read the body to know whether it is the same request; nothing is stored.
        body = MeasuredUpload(self.ingest.limits)
        async for chunk in request.chunks:
            body.count(chunk)
        same = fingerprint(
            body.sha256, sanitise_filename(request.filename), request.chosen_visibility()
        )
        if same != record.fingerprint or record.response is None:
            raise KeyReused("this Idempotency-Key was used for a different upload; use a new key")
        return _restore(record.response)

    async def _release(self, owner: str, key: str, token: str) -> None:
        try:
            await self.db.run(lambda tx: IdempotencyRepository(tx).release(owner, key, token=token))
        except Exception:  # the claim expires with the lease anyway
            return

    async def purge_expired(self, *, now: datetime, limit: int, dry_run: bool) -> int:
        """Forget keys older than 24 hours (the reconciler calls this)."""
        cutoff = now - IDEMPOTENCY_TTL

        async def work(tx: Tx) -> int:
            repo = IdempotencyRepository(tx)
            expired = await repo.expired(before=cutoff, limit=limit)
            if not dry_run:
                for owner, key in expired:
                    await repo.remove_expired(owner, key, before=cutoff)
            return len(expired)

        return await self.db.run(work)


def _snapshot(image: Image) -> str:
    data: dict[str, Any] = {name: getattr(image, name) for name in _SNAPSHOT_FIELDS}
    data["created_at"] = image.created_at.isoformat()
    data["updated_at"] = image.updated_at.isoformat()
    return json.dumps(data)


def _restore(snapshot: str) -> Image:
    data = json.loads(snapshot)
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    data["updated_at"] = datetime.fromisoformat(data["updated_at"])
    return Image(**data)
