"""The image lifecycle: create (see ingest.py), read, list, update, serve and delete.

Delete protocol: the row goes `ready -> deleting` (the image disappears for clients at once,
and of two concurrent deletes exactly one wins), then the objects are deleted, then the row.
A crash or a store failure in between leaves a `deleting` row that `imagesvc gc` finishes,
so no `ready` row ever points at a missing object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imagesvc.db import fetch_one, transaction, utcnow
from imagesvc.errors import NotFound, ServiceUnavailable
from imagesvc.images.filenames import sanitise_filename
from imagesvc.images.idempotency import Created, IdempotentUploads
from imagesvc.images.ingest import Ingest, UploadLimits, UploadRequest, parse_visibility
from imagesvc.images.models import Image, ImageStatus, Visibility
from imagesvc.images.repository import READY_BY_ID, ImageRepository
from imagesvc.images.serving import Blob, Conditions, Content, ServeOptions, serve
from imagesvc.imaging.render import Placeholder
from imagesvc.singleflight import SingleFlight
from imagesvc.storage.port import ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")
_READ_CACHE_MAX = 50_000


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[Image]
    last_id: str | None  # set when another page may follow


@dataclass(frozen=True, slots=True)
class _Readable:
    """A ready row as the read paths use it, built once per load: plain attributes, since
    ORM-instrumented ones cost a descriptor call each on every cached read."""

    image: Image
    blob: Blob
    owner: str
    loaded: float  # time.monotonic() when the query started


def blob_of(image: Image) -> Blob:
    assert image.sha256 is not None
    assert image.byte_size is not None
    return Blob(
        storage_key=image.storage_key,
        sha256=image.sha256,
        byte_size=image.byte_size,
        content_type=image.content_type,
        public=image.visibility == Visibility.PUBLIC,
    )


class ImageService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        *,
        limits: UploadLimits,
        serve: ServeOptions,
        key_prefix: str = "",
        db_timeout: float = 10.0,
        placeholders: Callable[[Image, bytes | None], Awaitable[Placeholder | None]] | None = None,
        read_cache_seconds: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.limits = limits
        self.serve = serve
        self.key_prefix = key_prefix
        self.db_timeout = db_timeout
        self.read_cache_seconds = read_cache_seconds
        self._readable: dict[str, _Readable] = {}
        self._loading: SingleFlight[str, _Readable | None] = SingleFlight()
        self._generation = 0  # bumped by forget(); one counter is enough (changes are rare)
        self.ingest = Ingest(
            sessions, store, limits, self.image_prefix, db_timeout, placeholders=placeholders
        )
        self.idempotency = IdempotentUploads(sessions, self.ingest, db_timeout=db_timeout)

    def image_prefix(self, image_id: str) -> str:
        """Every object of an image (original and variants) lives under this prefix."""
        return f"{self.key_prefix}img/{image_id}/"

    async def _tx(
        self, work: Callable[[ImageRepository], Awaitable[T]], *, read_only: bool = False
    ) -> T:
        """One short transaction (see db.transaction): 503 when the database is away."""
        return await transaction(
            self.sessions,
            lambda session: work(ImageRepository(session)),
            timeout=self.db_timeout,
            retry_read=read_only,
        )

    # --- create -----------------------------------------------------------------------------

    async def create(
        self, request: UploadRequest, *, idempotency_key: str | None = None
    ) -> Created:
        if idempotency_key is None:
            return Created(await self.ingest.create(request), replayed=False)
        return await self.idempotency.create(request, idempotency_key)

    # --- read -------------------------------------------------------------------------------

    async def get(self, *, owner: str, image_id: str) -> Image:
        image = await self.viewable(viewer=owner, image_id=image_id)
        if image.owner != owner:  # metadata is the owner's only, public or not
            raise NotFound(f"no image {image_id}")
        return image

    async def list(self, *, owner: str, after: str | None, limit: int) -> Page:
        rows = await self._tx(
            lambda repo: repo.list_for_owner(owner, before_id=after, limit=limit + 1),
            read_only=True,
        )
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items=items, last_id=items[-1].id if more and items else None)

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
        image = await self._tx(lambda repo: repo.update_fields(owner, image_id, **values))
        self.forget(image_id)  # again: a read that began before the commit saw the old row
        if image is None:
            raise NotFound(f"no image {image_id}")
        return image

    async def content(
        self, *, viewer: str | None, image_id: str, conditions: Conditions
    ) -> Content:
        """The bytes for `viewer` (an owner, or None without a key): their own images,
        and anyone's public ones."""
        readable = await self._viewable(viewer, image_id)

        async def still_there() -> bool:
            self.forget(image_id)  # the object is gone: do not trust the cached row
            return await self._tx(lambda repo: repo.get_viewable(image_id, viewer)) is not None

        return await serve(
            self.store, self.serve, readable.blob, conditions, still_there=still_there
        )

    async def viewable(self, *, viewer: str | None, image_id: str) -> Image:
        """A ready image `viewer` may fetch: their own, or anyone's public one."""
        return (await self._viewable(viewer, image_id)).image

    async def _viewable(self, viewer: str | None, image_id: str) -> _Readable:
        """Serving bytes is the hot path, so the row is read with one prepared Core statement
        and kept for `read_cache_seconds` (default 1 s) in this process; this process's own
        changes and deletes drop it at once, other processes' within that bound."""
        readable = self._readable.get(image_id)
        if readable is None or time.monotonic() - readable.loaded >= self.read_cache_seconds:
            # Single flight: when a hot entry expires, the requests that find it expired
            # share one query instead of each taking a pooled connection.
            generation = self._generation
            readable = await self._loading.do(image_id, lambda: self._load(image_id, generation))
        if readable is None or (not readable.blob.public and readable.owner != viewer):
            raise NotFound(f"no image {image_id}")  # another owner's: exactly like a missing one
        return readable

    async def _load(self, image_id: str, generation: int) -> _Readable | None:
        started = time.monotonic()
        engine = self.sessions.kw["bind"]
        row = await fetch_one(engine, READY_BY_ID, {"image_id": image_id}, timeout=self.db_timeout)
        if row is None:
            self._readable.pop(image_id, None)
            return None
        image = Image(**row._mapping)
        blob = blob_of(image)
        readable = _Readable(image, blob, owner=image.owner, loaded=started)
        # A change in this process since the load began (forget()) may postdate the row
        # we read: then do not keep it.
        if self.read_cache_seconds > 0 and generation == self._generation:
            if len(self._readable) >= _READ_CACHE_MAX:
                self._readable.clear()
            self._readable[image_id] = readable
        return readable

    def cached_since(self, image_id: str) -> float | None:
        """When (time.monotonic()) the cached row of `image_id` was read, if one is cached:
        anything derived from it is stale from `cached_since + read_cache_seconds` on."""
        readable = self._readable.get(image_id)
        return readable.loaded if readable is not None else None

    @property
    def generation(self) -> int:
        """Changes whenever this process changes or removes an image (see forget())."""
        return self._generation

    def forget(self, image_id: str) -> None:
        """This process changed or removed the image: drop what we know of it, and make
        loads already in flight neither cache nor hand out their (older) result."""
        self._readable.pop(image_id, None)
        self._loading.forget(image_id)
        self._generation += 1

    # --- delete -----------------------------------------------------------------------------

    async def delete(self, *, owner: str, image_id: str) -> None:
        self.forget(image_id)
        now = utcnow()
        image = await self._tx(lambda repo: repo.mark_deleting(owner, image_id, now=now))
        self.forget(image_id)  # again: a read that began before the commit saw it ready
        if image is None:
            raise NotFound(f"no image {image_id}")
        # Past this point the image is gone for clients; if the store fails now the row
        # stays `deleting` and gc finishes the job, so the client still gets its 204.
        try:
            await self.store.delete_prefix(self.image_prefix(image.id))
            await self._tx(lambda repo: repo.remove(image.id, ImageStatus.DELETING))
        except ServiceUnavailable:
            log.warning("delete of %s left for gc to finish", image.id)
