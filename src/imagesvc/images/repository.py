"""Every statement on the `images` table, the image state machine's one home in SQL
(`pending -> ready -> deleting`, see docs/DESIGN.md): the reads of the Image resource, the
upload protocol's writes, and the reconciler's claims. Every read a client can trigger is
scoped to an owner and to the `ready` status: pending and deleting rows, and other owners'
rows, are invisible to clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    insert,
    or_,
    select,
    update,
)

from imagesvc.db import Database, Tx
from imagesvc.images.models import Image, ImageStatus, ResumableUpload, Variant

_images: Table = Image.__table__  # type: ignore[assignment]
# Built once: the content and variant paths run this on every request, and building and
# hashing the statement each time costs as much as executing it.
_READY_BY_ID = select(_images).where(
    _images.c.id == bindparam("image_id"), _images.c.status == ImageStatus.READY.value
)
# Every upload runs these two. Values go in as execution parameters, never through
# `.values()`, which coerces each value into a bound expression and re-hashes the statement
# on every call (measured: more CPU than the round trip).
_INSERT_IMAGE = insert(_images)
_MARK_READY = update(_images).where(
    _images.c.id == bindparam("image_id"), _images.c.status == ImageStatus.PENDING.value
)


async def ready_by_id(db: Database, image_id: str) -> Image | None:
    """The ready row of `image_id`, whoever owns it: one prepared Core read, no session."""
    row = await db.fetch_one(_READY_BY_ID, {"image_id": image_id})
    return None if row is None else Image(**row._mapping)


class ImageRepository:
    def __init__(self, session: Tx) -> None:
        self.session = session

    async def add(self, image: Image) -> None:
        # Core INSERT: the ORM unit of work costs more CPU than the statement itself, and
        # every upload makes this call.
        values = {column.key: getattr(image, column.key) for column in _images.columns}
        await self.session.execute(_INSERT_IMAGE, values)

    async def get_for_owner(self, owner: str, image_id: str) -> Image | None:
        result = await self.session.execute(
            select(Image).where(
                Image.id == image_id, Image.owner == owner, Image.status == ImageStatus.READY
            )
        )
        return result.scalar_one_or_none()

    async def list_for_owner(
        self, owner: str, *, before_id: str | None, limit: int
    ) -> Sequence[Image]:
        """Newest first: ids are ULIDs, so id order is creation order (to the millisecond)
        and a total order, which makes the keyset cursor stable under inserts and deletes."""
        query = select(Image).where(Image.owner == owner, Image.status == ImageStatus.READY)
        if before_id is not None:
            query = query.where(Image.id < before_id)
        query = query.order_by(Image.id.desc()).limit(limit)
        return (await self.session.execute(query)).scalars().all()

    async def mark_ready(
        self,
        image_id: str,
        *,
        byte_size: int,
        sha256: str,
        content_type: str,
        width: int,
        height: int,
        frames: int,
        visibility: str,
        blurhash: str | None,
        dominant_color: str | None,
        now: datetime,
    ) -> bool:
        """pending -> ready with the facts known only once the last byte passed (type and
        size too: a direct upload's row held only what the client declared); False if the
        row is no longer pending (e.g. reclaimed by gc)."""
        result = await self.session.execute(
            _MARK_READY,  # the parameters other than image_id form the SET clause
            {
                "image_id": image_id,
                "status": ImageStatus.READY,
                "byte_size": byte_size,
                "sha256": sha256,
                "content_type": content_type,
                "width": width,
                "height": height,
                "frames": frames,
                "visibility": visibility,
                "blurhash": blurhash,
                "dominant_color": dominant_color,
                "updated_at": now,
            },
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def mark_deleting(self, owner: str, image_id: str, *, now: datetime) -> Image | None:
        """ready -> deleting for the owner's image; None if there is no such ready image.
        The conditional UPDATE makes concurrent deletes race safely: exactly one wins."""
        image = await self.get_for_owner(owner, image_id)
        if image is None:
            return None
        result = await self.session.execute(
            update(Image)
            .where(Image.id == image_id, Image.status == ImageStatus.READY)
            .values(status=ImageStatus.DELETING)
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return None
        return image

    async def update_fields(self, owner: str, image_id: str, **values: object) -> Image | None:
        image = await self.get_for_owner(owner, image_id)
        if image is None:
            return None
        for name, value in values.items():
            setattr(image, name, value)
        await self.session.flush()
        return image

    async def touch_pending(self, image_id: str, *, now: datetime) -> None:
        """The upload's heartbeat: it is alive, keep its lease."""
        await self.session.execute(
            update(Image)
            .where(Image.id == image_id, Image.status == ImageStatus.PENDING)
            .values(updated_at=now)
        )

    async def remove(self, image_id: str, status: str) -> bool:
        """Delete the row (and its variants' rows) if it is still in `status`, so a stale
        actor cannot remove a row that moved on, e.g. a pending row that became ready."""
        result = await self.session.execute(
            delete(Image).where(Image.id == image_id, Image.status == status)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return False
        await self.session.execute(delete(Variant).where(Variant.image_id == image_id))
        return True

    async def stale(self, *, before: datetime, limit: int) -> Sequence[Image]:
        """Pending and deleting rows whose actor has not been heard of since `before`.
        Pending direct uploads are not among them: nothing heart-beats them while the
        client uploads, so their TTL decides (`expired_direct_uploads`). Nor are pending
        rows of resumable (tus) uploads, not heart-beaten between PATCHes: they live as
        long as their upload record, and gc's expiry pass decides when they go."""
        query = (
            select(Image)
            .where(
                Image.status.in_((ImageStatus.PENDING, ImageStatus.DELETING)),
                Image.updated_at < before,
                or_(
                    Image.status == ImageStatus.DELETING,
                    and_(
                        Image.upload_expires_at.is_(None),
                        ~exists().where(ResumableUpload.id == Image.id),
                    ),
                ),
            )
            .order_by(Image.updated_at)
            .limit(limit)
        )
        return (await self.session.execute(query)).scalars().all()

    async def claim_stale_pending(self, image_id: str, *, before: datetime) -> bool:
        """pending -> deleting for a dead upload, unless its heartbeat came back meanwhile.
        Once claimed, the uploader's own `mark_ready` can no longer succeed."""
        result = await self.session.execute(
            update(Image)
            .where(
                Image.id == image_id,
                Image.status == ImageStatus.PENDING,
                Image.updated_at < before,
                Image.upload_expires_at.is_(None),
            )
            .values(status=ImageStatus.DELETING)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # --- resumable uploads (uploads/tus/) -------------------------------------------------------

    async def set_header(
        self, image_id: str, *, content_type: str, width: int, height: int, frames: int
    ) -> None:
        """What the header probe found, on the pending row (a tus upload is created before
        any byte arrives, so these start empty)."""
        await self.session.execute(
            update(Image)
            .where(Image.id == image_id, Image.status == ImageStatus.PENDING)
            .values(content_type=content_type, width=width, height=height, frames=frames)
        )

    async def claim_pending(self, image_id: str, *, now: datetime) -> bool:
        """pending -> deleting for an upload being discarded; if the removal stops half
        way, the stale-row pass finishes it one lease later."""
        result = await self.session.execute(
            update(Image)
            .where(Image.id == image_id, Image.status == ImageStatus.PENDING)
            .values(status=ImageStatus.DELETING, updated_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def states(self, image_ids: Sequence[str]) -> dict[str, tuple[str, datetime]]:
        """Status and last update of whichever of these ids have a row."""
        if not image_ids:
            return {}
        result = await self.session.execute(
            select(Image.id, Image.status, Image.updated_at).where(Image.id.in_(image_ids))
        )
        return {row.id: (row.status, row.updated_at) for row in result}

    # --- direct uploads (uploads/direct/) ---------------------------------------------------
    # A pending direct upload's `updated_at` is a lease: `created_at` while no request works
    # on it, the time of the holder's last renewal while one does (the local PUT streaming
    # the bytes, `complete` checking them). One holder at a time, so two completes cannot
    # interleave their copy and their read; gc takes only rows past their TTL whose lease is
    # free.

    async def get_own(self, owner: str, image_id: str) -> Image | None:
        """The owner's row in any status (complete must tell pending from ready)."""
        result = await self.session.execute(
            select(Image).where(Image.id == image_id, Image.owner == owner)
        )
        return result.scalar_one_or_none()

    async def get_direct_pending(self, image_id: str) -> Image | None:
        """A pending direct upload, whoever owns it (the local PUT knows only its token)."""
        result = await self.session.execute(
            select(Image).where(
                Image.id == image_id,
                Image.status == ImageStatus.PENDING,
                Image.upload_expires_at.is_not(None),
            )
        )
        return result.scalar_one_or_none()

    async def set_direct_token(self, image_id: str, token_sha256: str) -> None:
        """A replayed create hands out a new local URL: only its token opens the PUT now."""
        await self.session.execute(
            update(Image)
            .where(Image.id == image_id, Image.status == ImageStatus.PENDING)
            .values(upload_token_sha256=token_sha256)
        )

    async def take_direct_lease(
        self, image_id: str, *, now: datetime, free_before: datetime
    ) -> bool:
        """Take the lease of a pending, unexpired direct upload whose lease is free (never
        taken, released, or not renewed since `free_before`)."""
        result = await self.session.execute(
            update(Image)
            .where(
                Image.id == image_id,
                Image.status == ImageStatus.PENDING,
                Image.upload_expires_at > now,
                _lease_free(free_before),
            )
            .values(updated_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def renew_direct_lease(self, image_id: str, *, held: datetime, now: datetime) -> bool:
        """Renew our lease (the row still carries our last stamp); False if we lost it."""
        result = await self.session.execute(
            update(Image)
            .where(
                Image.id == image_id,
                Image.status == ImageStatus.PENDING,
                Image.updated_at == held,
            )
            .values(updated_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release_direct_lease(self, image_id: str, *, held: datetime) -> None:
        await self.session.execute(
            update(Image)
            .where(
                Image.id == image_id,
                Image.status == ImageStatus.PENDING,
                Image.updated_at == held,
            )
            .values(updated_at=Image.created_at)
        )

    async def expired_direct_uploads(
        self, *, now: datetime, free_before: datetime, limit: int
    ) -> Sequence[str]:
        """Ids of pending direct uploads past their TTL that no request is working on."""
        query = (
            select(Image.id)
            .where(
                Image.status == ImageStatus.PENDING,
                Image.upload_expires_at < now,
                _lease_free(free_before),
            )
            .order_by(Image.upload_expires_at)
            .limit(limit)
        )
        return (await self.session.execute(query)).scalars().all()

    async def claim_expired_direct(
        self, image_id: str, *, now: datetime, free_before: datetime
    ) -> bool:
        """pending -> deleting for an expired direct upload, unless a request took its
        lease meanwhile; once claimed, `complete` can no longer make it ready. `updated_at`
        stays old, so a gc that stops here leaves a `deleting` row the next run finishes."""
        result = await self.session.execute(
            update(Image)
            .where(
                Image.id == image_id,
                Image.status == ImageStatus.PENDING,
                Image.upload_expires_at < now,
                _lease_free(free_before),
            )
            .values(status=ImageStatus.DELETING)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def _lease_free(free_before: datetime) -> ColumnElement[bool]:
    return or_(Image.updated_at <= Image.created_at, Image.updated_at < free_before)
