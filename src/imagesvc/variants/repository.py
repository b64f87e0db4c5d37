"""Every statement on the `variants` table: a row is a claim (`rendering`, held by one
renderer) until the rendition is stored, then `ready`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, insert, select, update

from imagesvc.db import Database, Tx
from imagesvc.images.models import Variant, VariantStatus

_variants: Table = Variant.__table__  # type: ignore[assignment]
_KEY = and_(
    _variants.c.image_id == bindparam("key_image_id"),
    _variants.c.box_width == bindparam("key_box_width"),
    _variants.c.box_height == bindparam("key_box_height"),
    _variants.c.fit == bindparam("key_fit"),
    _variants.c.format == bindparam("key_format"),
)
# Built once, values as execution parameters: every variant request reads a row, and every
# render marks one ready; building and hashing these statements per call cost more CPU
# than running them (measured, bench/NOTES.md "Renders").
_BY_KEY = select(_variants).where(_KEY)
_INSERT_CLAIM = insert(_variants)
_MARK_READY = update(_variants).where(
    _KEY,
    _variants.c.status == VariantStatus.RENDERING.value,
    _variants.c.storage_key == bindparam("claimed_key"),
)


@dataclass(frozen=True, slots=True)
class VariantKey:
    image_id: str
    box_width: int
    box_height: int
    fit: str
    format: str

    def params(self) -> dict[str, Any]:
        # Not the column names: an UPDATE reserves those for its SET clause.
        return {
            "key_image_id": self.image_id,
            "key_box_width": self.box_width,
            "key_box_height": self.box_height,
            "key_fit": self.fit,
            "key_format": self.format,
        }


async def variant_by_key(db: Database, key: VariantKey) -> Variant | None:
    """The row of one rendition, in any state: one prepared Core read, no session (every
    variant request starts with it)."""
    row = await db.fetch_one(_BY_KEY, key.params())
    return None if row is None else Variant(**row._mapping)


class VariantRepository:
    """Variant rows: `rendering` (claimed by one renderer) then `ready`."""

    def __init__(self, session: Tx) -> None:
        self.session = session

    async def get(self, key: VariantKey) -> Variant | None:
        return (
            await self.session.execute(select(Variant).where(_KEY), key.params())
        ).scalar_one_or_none()

    async def claim(
        self,
        key: VariantKey,
        *,
        storage_key: str,
        now: datetime,
        stale_before: datetime,
        absent: bool = False,
    ) -> tuple[bool, Variant | None]:
        """(True, None): ours to render. (False, row): ready, or being rendered by a live
        renderer. A claim whose renderer went quiet is taken over. A concurrent first
        claim surfaces as DuplicateKey from the transaction: the caller looks again.
        `absent`: the caller has just read no row, so the INSERT goes first, alone."""
        row = None if absent else await self.get(key)
        if row is None:
            # Core, values as parameters: the ORM unit of work for this one row cost
            # more CPU than the statement (every fresh variant makes it).
            await self.session.execute(
                _INSERT_CLAIM,
                {
                    "image_id": key.image_id,
                    "box_width": key.box_width,
                    "box_height": key.box_height,
                    "fit": key.fit,
                    "format": key.format,
                    "status": VariantStatus.RENDERING,
                    "storage_key": storage_key,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            return True, None
        if row.status == VariantStatus.RENDERING and row.updated_at < stale_before:
            result = await self.session.execute(
                update(_variants)
                .where(_KEY, _variants.c.updated_at == row.updated_at)
                .values(storage_key=storage_key, updated_at=now),
                key.params(),
            )
            if result.rowcount:  # type: ignore[attr-defined]
                return True, None
        return False, row

    async def mark_ready(self, key: VariantKey, storage_key: str, **facts: object) -> bool:
        result = await self.session.execute(
            _MARK_READY,  # the parameters other than the key's form the SET clause
            {**key.params(), "claimed_key": storage_key, "status": VariantStatus.READY, **facts},
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, key: VariantKey, storage_key: str) -> bool:
        """Drop our claim (if it is still ours). True when no row names `storage_key` any
        more: the claim was ours and is gone now, or the row went with its image, or it
        was taken over; False when the row is ready with our object (a commit we did not
        hear of), which must then stay."""
        await self.session.execute(
            delete(_variants).where(
                _KEY,
                _variants.c.status == VariantStatus.RENDERING.value,
                _variants.c.storage_key == storage_key,
            ),
            key.params(),
        )
        row = await self.get(key)
        return row is None or row.storage_key != storage_key

    async def forget_ready(self, key: VariantKey, storage_key: str) -> None:
        """A ready rendition whose object is gone: drop the row (only that exact one)."""
        await self.session.execute(
            delete(_variants).where(_KEY, _variants.c.storage_key == storage_key),
            key.params(),
        )

    async def stale(self, *, before: datetime, limit: int) -> Sequence[Variant]:
        query = (
            select(Variant)
            .where(Variant.status == VariantStatus.RENDERING, Variant.updated_at < before)
            .limit(limit)
        )
        return (await self.session.execute(query)).scalars().all()

    async def remove_stale(self, variant: Variant, *, before: datetime) -> bool:
        result = await self.session.execute(
            delete(Variant).where(
                Variant.image_id == variant.image_id,
                Variant.storage_key == variant.storage_key,
                Variant.status == VariantStatus.RENDERING,
                Variant.updated_at < before,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def known_keys(self, storage_keys: Sequence[str]) -> set[str]:
        if not storage_keys:
            return set()
        result = await self.session.execute(
            select(Variant.storage_key).where(Variant.storage_key.in_(storage_keys))
        )
        return set(result.scalars().all())
