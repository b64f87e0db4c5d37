"""The render-once claim (variants/repository.py) on a real SQLite database, step by step:
who renders, who waits, who takes over a dead renderer, and who may finish or release."""

from __future__ import annotations

from datetime import timedelta

import pytest

from imagesvc.db import Database, DuplicateKey, utcnow
from imagesvc.images.models import VariantStatus
from imagesvc.variants.repository import VariantKey, VariantRepository

KEY = VariantKey("img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S", 64, 64, "cover", "webp")
LEASE = timedelta(seconds=60)


async def claim(
    db: Database, storage_key: str, *, now_offset: float = 0, absent: bool = False
) -> tuple[bool, str | None]:
    now = utcnow() + timedelta(seconds=now_offset)

    async def work(tx: object) -> tuple[bool, str | None]:
        won, row = await VariantRepository(tx).claim(  # type: ignore[arg-type]
            KEY, storage_key=storage_key, now=now, stale_before=now - LEASE, absent=absent
        )
        return won, None if row is None else row.status

    return await db.run(work)


async def test_the_first_claim_renders_and_the_others_wait(unit_db: Database) -> None:
    assert await claim(unit_db, "k/first") == (True, None)
    assert await claim(unit_db, "k/second") == (False, VariantStatus.RENDERING)


async def test_a_second_first_claim_meets_the_primary_key(unit_db: Database) -> None:
    """Two processes that both found no row both INSERT (the service's first claim skips
    the read when it has just seen no row): the second INSERT reaches the service as
    DuplicateKey (it then looks again), never as a 500, and the first claim stands."""
    assert await claim(unit_db, "k/a", absent=True) == (True, None)
    with pytest.raises(DuplicateKey):
        await claim(unit_db, "k/b", absent=True)
    assert await claim(unit_db, "k/c") == (False, VariantStatus.RENDERING)
    row = await unit_db.read(lambda tx: VariantRepository(tx).get(KEY))
    assert row is not None
    assert row.storage_key == "k/a"


async def test_a_claim_whose_renderer_went_quiet_is_taken_over(unit_db: Database) -> None:
    assert (await claim(unit_db, "k/dead"))[0]
    # Past the lease: the next renderer takes it over, with its own key.
    assert await claim(unit_db, "k/alive", now_offset=LEASE.total_seconds() + 1) == (True, None)

    async def mark(storage_key: str) -> bool:
        return await unit_db.run(
            lambda tx: VariantRepository(tx).mark_ready(KEY, storage_key, updated_at=utcnow())
        )

    assert not await mark("k/dead")  # the dead renderer's late finish changes nothing
    assert await mark("k/alive")
    assert await claim(unit_db, "k/later") == (False, VariantStatus.READY)


async def release(db: Database, storage_key: str) -> bool:
    return await db.run(lambda tx: VariantRepository(tx).release(KEY, storage_key))


async def test_only_the_holder_releases_its_claim(unit_db: Database) -> None:
    assert (await claim(unit_db, "k/mine"))[0]
    # Another renderer's release leaves the claim; its own object is unreferenced.
    assert await release(unit_db, "k/other")
    assert await claim(unit_db, "k/next") == (False, VariantStatus.RENDERING)
    assert await release(unit_db, "k/mine")
    assert (await claim(unit_db, "k/next"))[0]  # free again


async def test_a_release_after_an_unheard_commit_keeps_the_object(unit_db: Database) -> None:
    """The mark-ready commit happened but its answer was lost: the row is ready with our
    object, so the release must not let the object be deleted."""
    assert (await claim(unit_db, "k/mine"))[0]
    assert await unit_db.run(
        lambda tx: VariantRepository(tx).mark_ready(KEY, "k/mine", updated_at=utcnow())
    )
    assert not await release(unit_db, "k/mine")
    assert await claim(unit_db, "k/later") == (False, VariantStatus.READY)


async def test_a_claim_gone_with_its_image_leaves_the_object_unreferenced(
    unit_db: Database,
) -> None:
    assert (await claim(unit_db, "k/mine"))[0]
    # What a delete of the image does to its variants' rows, mid-render.
    await unit_db.run(lambda tx: VariantRepository(tx).forget_ready(KEY, "k/mine"))
    assert await release(unit_db, "k/mine")
