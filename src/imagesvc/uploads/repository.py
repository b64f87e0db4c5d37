"""Every statement on `idempotency_keys`. While a claim is in progress its `fingerprint`
column holds the claiming request's token: the statements that refresh, complete or
release a claim match on it, so a request that was taken over cannot touch its successor's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from imagesvc.db import Tx
from imagesvc.images.models import IdempotencyRecord, IdempotencyState


def _this(owner: str, key: str) -> tuple[Any, Any]:
    return (IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)


class IdempotencyRepository:
    def __init__(self, session: Tx) -> None:
        self.session = session

    async def get(self, owner: str, key: str) -> IdempotencyRecord | None:
        return await self.session.get(IdempotencyRecord, (owner, key))

    async def claim(self, owner: str, key: str, *, token: str, now: datetime) -> None:
        """A new claim; a concurrent first claim makes the transaction raise DuplicateKey."""
        self.session.add(
            IdempotencyRecord(
                owner=owner,
                key=key,
                state=IdempotencyState.IN_PROGRESS,
                fingerprint=token,
                created_at=now,
                updated_at=now,
            )
        )
        await self.session.flush()

    async def take_over(
        self, record: IdempotencyRecord, *, token: str, now: datetime, restart: bool
    ) -> bool:
        """Claim a record whose claim died (or that expired; `restart` begins its 24 hours
        anew), conditional on it being as we read it, so two requests cannot both win."""
        result = await self.session.execute(
            update(IdempotencyRecord)
            .where(
                *_this(record.owner, record.key),
                IdempotencyRecord.updated_at == record.updated_at,
            )
            .values(
                state=IdempotencyState.IN_PROGRESS,
                fingerprint=token,
                response=None,
                created_at=now if restart else record.created_at,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def refresh(self, owner: str, key: str, *, token: str, now: datetime) -> None:
        """The claim's heartbeat."""
        await self.session.execute(
            update(IdempotencyRecord)
            .where(*_this(owner, key), IdempotencyRecord.fingerprint == token)
            .values(updated_at=now)
        )

    async def complete(
        self, owner: str, key: str, *, token: str, fingerprint: str, response: str, now: datetime
    ) -> bool:
        """in_progress -> done with the response to replay; False if the claim is not ours."""
        result = await self.session.execute(
            update(IdempotencyRecord)
            .where(*_this(owner, key), IdempotencyRecord.fingerprint == token)
            .values(
                state=IdempotencyState.DONE,
                fingerprint=fingerprint,
                response=response,
                updated_at=now,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, owner: str, key: str, *, token: str) -> None:
        await self.session.execute(
            delete(IdempotencyRecord).where(
                *_this(owner, key),
                IdempotencyRecord.fingerprint == token,
                IdempotencyRecord.state == IdempotencyState.IN_PROGRESS,
            )
        )

    async def expired(self, *, before: datetime, limit: int) -> Sequence[tuple[str, str]]:
        """(owner, key) of records created before `before`."""
        query = (
            select(IdempotencyRecord.owner, IdempotencyRecord.key)
            .where(IdempotencyRecord.created_at < before)
            .limit(limit)
        )
        return [(owner, key) for owner, key in (await self.session.execute(query)).all()]

    async def remove_expired(self, owner: str, key: str, *, before: datetime) -> None:
        await self.session.execute(
            delete(IdempotencyRecord).where(
                *_this(owner, key), IdempotencyRecord.created_at < before
            )
        )
