"""The Image resource: read, list, update and delete (uploads create images: uploads/).

Reads of one image go through a per-process row cache (`rows`): serving bytes is the hot
path, so a ready row is read with one prepared Core statement and kept for
`read_cache_seconds` (default 1 s); this process's own changes and deletes drop it at once,
other processes' show within that bound.

Delete protocol: the row goes `ready -> deleting` (the image disappears for clients at once,
and of two concurrent deletes exactly one wins), then the objects are deleted, then the row.
A crash or a store failure in between leaves a `deleting` row that `imagesvc gc` finishes,
so no `ready` row ever points at a missing object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from imagesvc.cache import SingleFlight, TtlCache
from imagesvc.db import Database, utcnow
from imagesvc.errors import NotFound, ServiceUnavailable
from imagesvc.images.filenames import sanitise_filename
from imagesvc.images.models import Image, ImageStatus, Visibility, parse_visibility
from imagesvc.images.repository import ImageRepository, ready_by_id
from imagesvc.serving.content import Blob
from imagesvc.serving.disposition import download_name
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import ObjectStore

log = logging.getLogger(__name__)
_ROWS_MAX = 50_000


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[Image]
    last_id: str | None  # set when another page may follow


@dataclass(frozen=True, slots=True)
class Readable:
    """A ready row as the read paths use it, built once per load: plain attributes, since
    ORM-instrumented ones cost a descriptor call each on every cached read."""

    image: Image
    blob: Blob  # the original's bytes, as serving needs to know them
    owner: str


def blob_of(image: Image) -> Blob:
    assert image.sha256 is not None
    assert image.byte_size is not None
    return Blob(
        storage_key=image.storage_key,
        sha256=image.sha256,
        byte_size=image.byte_size,
        content_type=image.content_type,
        public=image.visibility == Visibility.PUBLIC,
        name=download_name(image.filename, image.id, image.content_type),
    )


class ImageService:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        *,
        layout: KeyLayout,
        read_cache_seconds: float = 1.0,
    ) -> None:
        self.db = db
        self.store = store
        self.layout = layout
        # Public: the answer cache (web/hot_reads.py) is only as fresh as these rows.
        self.rows: TtlCache[str, Readable] = TtlCache(read_cache_seconds, _ROWS_MAX)
        self._loading: SingleFlight[str, Readable | None] = SingleFlight()

    # --- read -------------------------------------------------------------------------------

    async def get(self, *, owner: str, image_id: str) -> Image:
        image = (await self.viewable(viewer=owner, image_id=image_id)).image
        if image.owner != owner:  # metadata is the owner's only, public or not
            raise NotFound(f"no image {image_id}")
        return image

    async def list(self, *, owner: str, after: str | None, limit: int) -> Page:
        rows = await self.db.read(
            lambda tx: ImageRepository(tx).list_for_owner(owner, before_id=after, limit=limit + 1)
        )
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items=items, last_id=items[-1].id if more and items else None)

    async def viewable(
        self, *, viewer: str | None, image_id: str, granted: bool = False
    ) -> Readable:
        """A ready image `viewer` (an owner, or None without a key) may fetch: their own,
        or anyone's public one, or any one a verified signed link grants (`granted`).
        Another owner's private image is exactly like a missing one."""
        readable = self.rows.get(image_id)
        if readable is None:
            # Single flight: when a hot entry expires, the requests that find it expired
            # share one query instead of each taking a pooled connection.
            generation = self.rows.generation
            readable = await self._loading.do(image_id, lambda: self._load(image_id, generation))
        if readable is None:
            raise NotFound(f"no image {image_id}")
        if not granted and not readable.blob.public and readable.owner != viewer:
            raise NotFound(f"no image {image_id}")
        return readable

    async def still_viewable(
        self, *, viewer: str | None, image_id: str, granted: bool = False
    ) -> bool:
        """Read the row again, past the cache (its object turned out to be missing)."""
        self.forget(image_id)
        try:
            await self.viewable(viewer=viewer, image_id=image_id, granted=granted)
        except NotFound:
            return False
        return True

    async def _load(self, image_id: str, generation: int) -> Readable | None:
        started = time.monotonic()
        image = await ready_by_id(self.db, image_id)
        if image is None:
            self.rows.discard(image_id)
            return None
        readable = Readable(image, blob_of(image), owner=image.owner)
        # A change in this process since the load began (forget()) may postdate the row
        # we read: then it is not kept.
        self.rows.put(image_id, readable, since=started, generation=generation)
        return readable

    def forget(self, image_id: str) -> None:
        """This process changed or removed the image: drop what we know of it, and make
        loads already in flight neither cache nor hand out their (older) result."""
        self.rows.pop(image_id)
        self._loading.forget(image_id)

    # --- update -----------------------------------------------------------------------------

    async def update(self, *, owner: str, image_id: str, changes: dict[str, object]) -> Image:
        values: dict[str, object] = {}
        if "visibility" in changes:
            # JSON merge patch: null removes the member, i.e. back to the default, private.
            values["visibility"] = parse_visibility(changes["visibility"])
        if "filename" in changes:
            raw = changes["filename"]
            values["filename"] = sanitise_filename(raw if isinstance(raw, str) else None)
        if values:
            values["updated_at"] = utcnow()
        self.forget(image_id)
        image = await self.db.run(
            lambda tx: ImageRepository(tx).update_fields(owner, image_id, **values)
        )
        self.forget(image_id)  # again: a read that began before the commit saw the old row
        if image is None:
            raise NotFound(f"no image {image_id}")
        return image

    # --- delete -----------------------------------------------------------------------------

    async def delete(self, *, owner: str, image_id: str) -> None:
        self.forget(image_id)
        now = utcnow()
        image = await self.db.run(
            lambda tx: ImageRepository(tx).mark_deleting(owner, image_id, now=now)
        )
        self.forget(image_id)  # again: a read that began before the commit saw it ready
        if image is None:
            raise NotFound(f"no image {image_id}")
        # Past this point the image is gone for clients; if the store fails now the row
        # stays `deleting` and gc finishes the job, so the client still gets its 204.
        try:
            await self.store.delete_prefix(self.layout.image(image.id))
            await self.db.run(lambda tx: ImageRepository(tx).remove(image.id, ImageStatus.DELETING))
        except ServiceUnavailable:
            log.warning("delete of %s left for gc to finish", image.id)
