"""Every statement on `resumable_uploads`. The lease is the whole concurrency story: a PATCH
(or a DELETE) claims the row with one conditional UPDATE, every write it makes afterwards
names its token, and a lease whose holder stopped refreshing it is free again once
`lease_expires_at` passed. No process-local lock is involved, so any replica may serve
any request of an upload."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Table, and_, bindparam, delete, or_, select, update

from imagesvc.db import Tx
from imagesvc.images.models import Image, ImageStatus, ResumableState, ResumableUpload


def lease_free(now: datetime) -> Any:
    return or_(ResumableUpload.lease_token.is_(None), ResumableUpload.lease_expires_at < now)


_uploads: Table = ResumableUpload.__table__  # type: ignore[assignment]
# Every PATCH runs these three, so they are built once and take their values as execution
# parameters: building a statement with `.values()` and hashing it on every call cost more
# CPU than the round trip (measured: claim 3.8 and commit 2.8 ms of CPU per PATCH before,
# bench/NOTES.md "tus PATCH throughput"). Bound names differ from the column names, which
# an UPDATE reserves for its SET clause.
_CLAIM = update(_uploads).where(
    _uploads.c.id == bindparam("upload_id"),
    _uploads.c.owner == bindparam("upload_owner"),
    _uploads.c.state != ResumableState.DONE.value,
    _uploads.c.upload_offset == bindparam("at_offset"),
    _uploads.c.expires_at > bindparam("now"),
    or_(_uploads.c.lease_token.is_(None), _uploads.c.lease_expires_at < bindparam("now")),
)
_COMMIT = update(_uploads).where(
    _uploads.c.id == bindparam("upload_id"), _uploads.c.lease_token == bindparam("token")
)
# The upload and its pending image in one read (the claim's answer).
_WITH_PENDING_IMAGE = (
    select(ResumableUpload, Image)
    .outerjoin(Image, and_(Image.id == ResumableUpload.id, Image.status == ImageStatus.PENDING))
    .where(ResumableUpload.id == bindparam("upload_id"))
    .where(ResumableUpload.owner == bindparam("upload_owner"))
)


@dataclass(frozen=True, slots=True)
class Fragment:
    """One object of the parked tail: bytes of one PATCH past the last part."""

    key: str
    size: int


@dataclass(frozen=True, slots=True)
class Progress:
    """What one PATCH commits: the new offset and where its bytes are."""

    offset: int
    length: int | None
    etags: Sequence[str]
    tail: Sequence[Fragment]  # the parked tail, in order
    expires_at: datetime


class LiveUpload(NamedTuple):
    """What gc needs to know of an unfinished upload."""

    multipart_id: str | None
    tail_keys: frozenset[str]  # every fragment the record names
    leased: bool


def etags_of(upload: ResumableUpload) -> list[str]:
    parts: list[str] = json.loads(upload.parts)
    return parts


def fragments_of(upload: ResumableUpload) -> list[Fragment]:
    """The parked tail the record names. A record written before 0008 (`tail_fragments`
    null) has at most one tail object, `tail_key` of `tail_size` bytes."""
    return _fragments(upload.tail_fragments, upload.tail_key, upload.tail_size)


def _fragments(listed: str | None, key: str | None, size: int) -> list[Fragment]:
    if listed is None:
        return [Fragment(key, size)] if key else []
    return [Fragment(str(k), int(n)) for k, n in json.loads(listed)]


def tail_values(tail: Sequence[Fragment]) -> dict[str, Any]:
    """The columns of a parked tail. `tail_key` is the first fragment and `tail_size` the
    sum of all of them: a one-fragment tail reads exactly as the old single tail did, and
    code that only knows `tail_key` fails loudly (a short read) on a longer list instead
    of resuming from the wrong bytes."""
    return {
        "tail_fragments": json.dumps([[f.key, f.size] for f in tail]),
        "tail_key": tail[0].key if tail else None,
        "tail_size": sum(f.size for f in tail),
    }


class ResumableRepository:
    def __init__(self, session: Tx) -> None:
        self.session = session

    async def add(self, upload: ResumableUpload) -> None:
        self.session.add(upload)
        await self.session.flush()

    async def get_for_owner(self, owner: str, upload_id: str) -> ResumableUpload | None:
        result = await self.session.execute(
            select(ResumableUpload).where(
                ResumableUpload.id == upload_id, ResumableUpload.owner == owner
            )
        )
        return result.scalar_one_or_none()

    async def claim(
        self, owner: str, upload_id: str, *, offset: int, token: str, now: datetime, until: datetime
    ) -> bool:
        """Take the lease for one PATCH: only an unexpired, unfinished upload at exactly
        `offset` whose lease is free (a `completing` one at its end, to finish it). Of two
        PATCHes at once, one wins this UPDATE."""
        result = await self.session.execute(
            _CLAIM,
            {
                "upload_id": upload_id,
                "upload_owner": owner,
                "at_offset": offset,
                "now": now,
                "lease_token": token,
                "lease_expires_at": until,
            },
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def with_pending_image(
        self, owner: str, upload_id: str
    ) -> tuple[ResumableUpload, Image | None] | None:
        """The owner's upload and its image while still pending (None once finished), in
        one statement; None when the owner has no such upload."""
        row = (
            await self.session.execute(
                _WITH_PENDING_IMAGE, {"upload_id": upload_id, "upload_owner": owner}
            )
        ).first()
        return None if row is None else (row[0], row[1])

    async def refresh(self, upload_id: str, *, token: str, until: datetime) -> bool:
        """The lease's heartbeat; False once it is no longer ours."""
        result = await self.session.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == upload_id, ResumableUpload.lease_token == token)
            .values(lease_expires_at=until)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def set_multipart(self, upload_id: str, *, token: str, multipart_id: str) -> bool:
        """Record a multipart upload as soon as it exists, so that only a crash in between
        can leave one the row does not name (gc aborts those)."""
        result = await self.session.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == upload_id, ResumableUpload.lease_token == token)
            .values(multipart_id=multipart_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def commit(
        self, upload_id: str, *, token: str, progress: Progress, now: datetime
    ) -> bool:
        """Advance the upload and release the lease, in one statement."""
        result = await self.session.execute(
            _COMMIT,  # the parameters other than upload_id and token form the SET clause
            {
                "upload_id": upload_id,
                "token": token,
                "upload_offset": progress.offset,
                "upload_length": progress.length,
                "parts": json.dumps(list(progress.etags)),
                **tail_values(progress.tail),
                "expires_at": progress.expires_at,
                "lease_token": None,
                "lease_expires_at": None,
                "updated_at": now,
            },
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def completing(
        self, upload_id: str, *, token: str, progress: Progress, now: datetime
    ) -> bool:
        """receiving -> completing: every byte is stored and the parts are named; the lease
        stays ours (the completion goes on). From here a failure is retried, not lost."""
        result = await self.session.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == upload_id, ResumableUpload.lease_token == token)
            .values(
                state=ResumableState.COMPLETING,
                upload_offset=progress.offset,
                upload_length=progress.length,
                parts=json.dumps(list(progress.etags)),
                expires_at=progress.expires_at,
                updated_at=now,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, upload_id: str, *, token: str) -> None:
        await self.session.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == upload_id, ResumableUpload.lease_token == token)
            .values(lease_token=None, lease_expires_at=None)
        )

    async def finish(
        self, upload_id: str, *, token: str, length: int, expires_at: datetime, now: datetime
    ) -> bool:
        """receiving -> done, in the transaction that makes the image ready."""
        result = await self.session.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == upload_id, ResumableUpload.lease_token == token)
            .values(
                state=ResumableState.DONE,
                upload_offset=length,
                upload_length=length,
                parts="[]",
                multipart_id=None,
                **tail_values(()),
                expires_at=expires_at,
                lease_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def remove_claimed(self, upload_id: str, *, token: str) -> bool:
        """Drop the record of an upload we hold the lease of (refused bytes)."""
        result = await self.session.execute(
            delete(ResumableUpload).where(
                ResumableUpload.id == upload_id, ResumableUpload.lease_token == token
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def remove_unleased(self, owner: str, upload_id: str, *, now: datetime) -> bool:
        """Termination: drop the record unless a PATCH holds its lease."""
        result = await self.session.execute(
            delete(ResumableUpload).where(
                ResumableUpload.id == upload_id,
                ResumableUpload.owner == owner,
                lease_free(now),
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # --- the reconciler ------------------------------------------------------------------------

    async def expired(self, *, now: datetime, limit: int) -> Sequence[ResumableUpload]:
        """Records past their expiry whose lease is free (finished ones included)."""
        query = (
            select(ResumableUpload)
            .where(ResumableUpload.expires_at < now, lease_free(now))
            .order_by(ResumableUpload.expires_at)
            .limit(limit)
        )
        return (await self.session.execute(query)).scalars().all()

    async def remove_expired(self, upload_id: str, *, now: datetime) -> bool:
        """Drop an expired record, unless a PATCH claimed it meanwhile (it cannot: an
        expired upload is never claimed; the lease check covers a PATCH begun before)."""
        result = await self.session.execute(
            delete(ResumableUpload).where(
                ResumableUpload.id == upload_id,
                ResumableUpload.expires_at < now,
                lease_free(now),
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def live(self, upload_ids: Sequence[str], *, now: datetime) -> dict[str, LiveUpload]:
        """Of these ids, the unfinished uploads: id -> its multipart id, the keys of every
        fragment of its parked tail, and whether a PATCH holds its lease."""
        if not upload_ids:
            return {}
        result = await self.session.execute(
            select(
                ResumableUpload.id,
                ResumableUpload.multipart_id,
                ResumableUpload.tail_fragments,
                ResumableUpload.tail_key,
                ResumableUpload.tail_size,
                ResumableUpload.lease_token,
                ResumableUpload.lease_expires_at,
            ).where(
                ResumableUpload.id.in_(upload_ids),
                ResumableUpload.state != ResumableState.DONE,
            )
        )
        return {
            row.id: LiveUpload(
                row.multipart_id,
                frozenset(
                    f.key for f in _fragments(row.tail_fragments, row.tail_key, row.tail_size)
                ),
                row.lease_token is not None
                and row.lease_expires_at is not None
                and row.lease_expires_at >= now,
            )
            for row in result
        }
