"""Every statement on `api_keys`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update

from imagesvc.auth.models import ApiKey
from imagesvc.db import Tx


class KeyRepository:
    def __init__(self, session: Tx) -> None:
        self.session = session

    async def add(self, key: ApiKey) -> None:
        self.session.add(key)

    async def get(self, key_id: str) -> ApiKey | None:
        return await self.session.get(ApiKey, key_id)

    async def all(self) -> Sequence[ApiKey]:
        result = await self.session.execute(select(ApiKey).order_by(ApiKey.created_at))
        return result.scalars().all()

    async def revoke(self, key_id: str, *, now: datetime) -> bool:
        """False when there is no such active key."""
        result = await self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def note_use(self, key_id: str, *, when: datetime) -> None:
        await self.session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when)
        )
