"""Direct uploads (SPEC §11): bytes straight to the store, checked before they become an
image. The pending image row is the upload's whole state (docs/DESIGN.md, "Direct uploads").

1. `create`: a pending row holding what the client declared (size, hint type, sha256) and
   when the upload expires, then a PUT URL bound to that size and type: presigned by the
   store, or (local backend) the service's own `PUT /v1/direct-uploads/{token}`.
2. The client PUTs the bytes to `<prefix>img/<id>/upload`. For the local backend that is
   `receive`, streamed into the store writer like every upload.
3. `complete`: HEAD the landing key (409 while nothing is there), take the row's lease,
   copy the object inside the store to `original` (only we write that key: the presigned
   URL stays valid until it expires, so the client could rewrite the landing key after any
   check), read the copy once (type, pixels, size, sha256), then the shared last step of
   every upload (`Ingest.make_ready`: placeholder, pending -> ready). Bytes that are not an
   image, too large or not what was declared remove the objects and the row.
Nothing heart-beats the row between 1 and 3: gc removes uploads past their TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from imagesvc.db import Database, Tx, utcnow
from imagesvc.errors import (
    BadRequest,
    Conflict,
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    UnsupportedMediaType,
)
from imagesvc.ids import is_image_id, new_image_id
from imagesvc.images.filenames import sanitise_filename
from imagesvc.images.models import Image, ImageStatus, Visibility
from imagesvc.images.repository import ImageRepository
from imagesvc.imaging import probe
from imagesvc.observability.metrics import UPLOADED_BYTES, UPLOADS
from imagesvc.storage.layout import KeyLayout
from imagesvc.storage.port import ObjectInfo, ObjectMissing, ObjectStore, StorageUnavailable
from imagesvc.uploads.direct.lease import Lease
from imagesvc.uploads.idempotency import Claim, IdempotentUploads
from imagesvc.uploads.ingest import Ingest, UploadLimits
from imagesvc.uploads.stored import measure_stored

log = logging.getLogger(__name__)

# The declared type is a hint bound into the URL (and kept on the object until `complete`
# knows the real one); anything else, text/html above all, is refused at once.
ACCEPTED_TYPES = (
    *(
        f.content_type
        for f in (probe.JPEG, probe.PNG, probe.GIF, probe.WEBP, probe.AVIF, probe.HEIC)
    ),
    "image/heif",  # a HEIF that does not claim HEVC: a format of its own in the HEIC branch
    "application/octet-stream",
)
TOKEN_ROUTE = "/v1/direct-uploads/"


class UploadIncomplete(Conflict):
    code = "upload_incomplete"


class UploadInProgress(Conflict):
    code = "upload_in_progress"

    def __init__(self) -> None:
        super().__init__(
            "another request is writing or completing this upload; retry shortly",
            headers={"Retry-After": "1"},
        )


class UploadExpired(ProblemError):
    status, code, title = 410, "upload_expired", "Gone"


class SizeMismatch(InvalidParameter):
    code = "upload_size_mismatch"


class Sha256Mismatch(InvalidParameter):
    code = "sha256_mismatch"


class UploadRefused(ProblemError):
    """The local upload URL refuses the request, as S3 refuses a PUT that does not match
    its signature (403)."""

    status, code, title = 403, "upload_refused", "Forbidden"


# What `complete` answers about the bytes themselves: the upload is over, row and objects go.
_VERDICTS = (PayloadTooLarge, UnsupportedMediaType, SizeMismatch, Sha256Mismatch, BadRequest)


@dataclass(frozen=True, slots=True)
class DirectRequest:
    owner: str
    byte_size: int
    content_type: str
    filename: str | None
    visibility: Visibility
    sha256: str | None

    def fingerprint(self) -> str:
        """Of what the client asked for, so that a replay is the same request."""
        fields = asdict(self) | {"filename": sanitise_filename(self.filename)}
        fields.pop("owner")
        return hashlib.sha256(
            ("direct\n" + json.dumps(fields, sort_keys=True)).encode()
        ).hexdigest()


@dataclass(frozen=True, slots=True)
class DirectUpload:
    image_id: str
    url: str
    headers: dict[str, str]
    expires_at: datetime

    def snapshot(self) -> str:
        """What an Idempotency-Key replay needs, without the URL: a URL is a credential (a
        presigned PUT, or the local token), and a leaked database must reveal none. A
        replay signs a fresh one for the same upload."""
        return json.dumps({"image_id": self.image_id, "expires_at": self.expires_at.isoformat()})


@dataclass(frozen=True, slots=True)
class Created:
    upload: DirectUpload
    replayed: bool


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class DirectUploads:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        ingest: Ingest,
        idempotency: IdempotentUploads,
        *,
        layout: KeyLayout,
        limits: UploadLimits,
        ttl: int,
        public_api_url: str | None = None,
    ) -> None:
        self.public_api_url = public_api_url
        self.db = db
        self.store = store
        self.ingest = ingest
        self.idempotency = idempotency
        self.layout = layout
        self.limits = limits
        self.ttl = ttl
        self._cleanups: set[asyncio.Future[None]] = set()

    # --- create --------------------------------------------------------------------------

    async def create(
        self, request: DirectRequest, *, idempotency_key: str | None = None
    ) -> Created:
        if request.byte_size > self.limits.max_upload_bytes:
            raise PayloadTooLarge(
                f"byte_size is over the limit of {self.limits.max_upload_bytes} bytes"
            )
        if idempotency_key is None:
            return Created(await self._create(request, None), replayed=False)
        claim, existing = await self.idempotency.claim(request.owner, idempotency_key)
        if existing is not None:
            stored = json.loads(IdempotentUploads.replay(existing, request.fingerprint()))
            expires_at = datetime.fromisoformat(stored["expires_at"])
            return Created(
                await self._reissue(request, stored["image_id"], expires_at), replayed=True
            )
        try:
            return Created(await self._create(request, claim), replayed=False)
        except BaseException:
            await asyncio.shield(self.idempotency.release(claim))
            raise

    async def _signed(
        self, request: DirectRequest, image_id: str, ttl: int
    ) -> tuple[str, dict[str, str], str | None]:
        """Where to PUT the bytes, with which headers, and (local backend) the sha256 of
        the token to keep in the row."""
        signed = await self.store.signed_put(
            self.layout.direct_upload(image_id),
            content_length=request.byte_size,
            content_type=request.content_type,
            ttl=ttl,
        )
        if signed is not None:
            return signed.url, signed.headers, None
        # The local backend: the service takes the PUT itself. Its URL is relative unless
        # IMAGESVC_PUBLIC_API_URL says where the service is: never built from `Host`.
        secret = secrets.token_urlsafe(32)
        url = f"{self.public_api_url or ''}{TOKEN_ROUTE}{image_id}.{secret}"
        headers = {"Content-Type": request.content_type, "Content-Length": str(request.byte_size)}
        return url, headers, _token_hash(secret)

    async def _reissue(
        self, request: DirectRequest, image_id: str, expires_at: datetime
    ) -> DirectUpload:
        """An Idempotency-Key replay: the same upload, a fresh URL valid until the same
        `expires_at` (a new local token replaces the old one)."""
        ttl = max(1, math.ceil((expires_at - utcnow()).total_seconds()))
        url, headers, token_hash = await self._signed(request, image_id, ttl)
        if token_hash is not None:
            await self.db.run(lambda tx: ImageRepository(tx).set_direct_token(image_id, token_hash))
        return DirectUpload(image_id, url, headers, expires_at)

    async def _create(self, request: DirectRequest, claim: Claim | None) -> DirectUpload:
        image_id, created_at = new_image_id()
        expires_at = created_at + timedelta(seconds=self.ttl)
        url, headers, token_hash = await self._signed(request, image_id, self.ttl)
        upload = DirectUpload(image_id, url, headers, expires_at)
        image = Image(
            id=image_id,
            owner=request.owner,
            status=ImageStatus.PENDING,
            storage_key=self.layout.original(image_id),
            # Declared, until `complete` measures the bytes.
            content_type=request.content_type,
            width=0,
            height=0,
            frames=0,
            byte_size=request.byte_size,
            sha256=request.sha256,
            filename=sanitise_filename(request.filename),
            visibility=request.visibility,
            created_at=created_at,
            updated_at=created_at,  # = created_at: no request holds its lease
            upload_expires_at=expires_at,
            upload_token_sha256=token_hash,
        )

        async def work(tx: Tx) -> None:
            await ImageRepository(tx).add(image)
            if claim is not None:
                await self.idempotency.record(
                    tx, claim, fingerprint=request.fingerprint(), response=upload.snapshot()
                )

        await self.db.run(work)
        return upload

    # --- the local backend's PUT ---------------------------------------------------------

    async def receive(
        self,
        token: str,
        *,
        content_length: str | None,
        content_type: str | None,
        chunks: AsyncIterator[bytes],
    ) -> None:
        """The bytes of a direct upload on the local backend, streamed into the store's
        writer (never held whole, never spooled), refused unless the request is exactly
        what the URL was made for, as a presigned PUT is."""
        image = await self._by_token(token)
        declared = image.byte_size
        if content_length is None or content_length.strip() != str(declared):
            raise UploadRefused(f"this URL takes exactly {declared} bytes (Content-Length)")
        if (content_type or "").strip().lower() != image.content_type:
            raise UploadRefused(f"this URL takes Content-Type: {image.content_type}")
        lease = Lease(self.db, image.id, self.limits.lease_seconds)
        if not await lease.take():
            raise UploadInProgress()
        async with lease:
            writer = await self.store.open_write(
                self.layout.direct_upload(image.id), content_type=image.content_type
            )
            try:
                size = 0
                async for chunk in chunks:
                    size += len(chunk)
                    if size > (declared or 0):
                        raise BadRequest(f"the body is longer than {declared} bytes")
                    await writer.write(chunk)
                if size != declared:
                    raise BadRequest(f"the body ended after {size} of {declared} bytes")
                await writer.complete()
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(writer.abort())
                raise

    async def _by_token(self, token: str) -> Image:
        image_id, _, secret = token.partition(".")
        image = None
        if is_image_id(image_id) and secret:
            image = await self.db.read(lambda tx: ImageRepository(tx).get_direct_pending(image_id))
        # Compared even when there is no row, so that timing tells nothing.
        expected = image.upload_token_sha256 if image is not None else None
        valid = hmac.compare_digest(_token_hash(secret), expected or "0" * 64)
        if image is None or expected is None or not valid:
            raise UploadRefused("this upload URL is not valid (or the upload is over)")
        assert image.upload_expires_at is not None
        if image.upload_expires_at <= utcnow():
            raise UploadRefused("this upload URL has expired")
        return image

    # --- complete ------------------------------------------------------------------------

    async def complete(self, *, owner: str, image_id: str) -> Image:
        image = await self._own(owner, image_id)
        if image.status == ImageStatus.READY:
            return image  # a second complete, or the first one's retry
        landing = self.layout.direct_upload(image_id)
        stored = await self.store.head(landing)
        if stored is None:
            raise UploadIncomplete("nothing has been uploaded yet; PUT the bytes, then retry")
        lease = Lease(self.db, image_id, self.limits.lease_seconds)
        if not await lease.take():
            # Someone else got there first: answer what they made of it.
            image = await self._own(owner, image_id)
            if image.status == ImageStatus.READY:
                return image
            raise UploadInProgress()
        async with lease:
            try:
                await self._check(image, stored)
                lease.end()  # ready: the row left the lease's hands
            except ObjectMissing:
                raise UploadIncomplete("the uploaded object vanished; PUT it again") from None
            except _VERDICTS as exc:
                UPLOADS.labels(exc.code).inc()
                cleanup = asyncio.ensure_future(self._discard(image))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
                await asyncio.shield(cleanup)
                lease.end()
                raise
        UPLOADS.labels("created").inc()
        UPLOADED_BYTES.inc(image.byte_size or 0)
        return image

    async def _own(self, owner: str, image_id: str) -> Image:
        """The owner's direct upload or ready image; 404 for anything else (another
        owner's, a streamed upload in flight, one being deleted), 410 once expired."""
        image = await self.db.read(lambda tx: ImageRepository(tx).get_own(owner, image_id))
        if image is None or image.status == ImageStatus.DELETING:
            raise NotFound(f"no image {image_id}")
        if image.status == ImageStatus.PENDING:
            if image.upload_expires_at is None:
                raise NotFound(f"no image {image_id}")
            if image.upload_expires_at <= utcnow():
                raise UploadExpired("this direct upload expired before it was completed")
        return image

    async def _check(self, image: Image, stored: ObjectInfo) -> None:
        """Everything between the HEAD and `ready`. Raises a verdict (_VERDICTS) when the
        bytes must go, anything else when they may be checked again."""
        declared, max_bytes = image.byte_size, self.limits.max_upload_bytes
        if stored.size > max_bytes:
            raise PayloadTooLarge(f"the upload has {stored.size} bytes, over {max_bytes}")
        if stored.size != declared:
            raise SizeMismatch(f"the upload has {stored.size} bytes, {declared} were declared")
        # The copy is what we check and serve: nobody else can write `original`.
        hint = image.content_type
        await self.store.copy(
            self.layout.direct_upload(image.id), image.storage_key, content_type=hint
        )
        measured = await measure_stored(self.store, image.storage_key, self.limits)
        if measured.upload.size != declared:  # the landing key was rewritten meanwhile
            raise SizeMismatch(
                f"the upload has {measured.upload.size} bytes, {declared} were declared"
            )
        if image.sha256 is not None and measured.upload.sha256 != image.sha256.lower():
            raise Sha256Mismatch("the uploaded bytes do not have the declared sha256")
        info = measured.info
        if info.format.content_type != hint:
            # Redirects serve the object's own Content-Type: make it the detected one.
            await self.store.copy(
                image.storage_key, image.storage_key, content_type=info.format.content_type
            )
        image.content_type, image.width, image.height = (
            info.format.content_type,
            info.width,
            info.height,
        )
        image.frames = info.frames
        await self.ingest.make_ready(image, measured.upload, measured.source)
        try:
            await self.store.delete_keys([self.layout.direct_upload(image.id)])
        except StorageUnavailable:  # gc removes landing keys of images that are not pending
            log.info("landing key of %s left for gc", image.id)

    async def _discard(self, image: Image) -> None:
        """The bytes were refused: the row first (only while pending), then every object
        of the image; if this stops half way, gc removes objects without a row."""
        try:
            removed = await self.db.run(
                lambda tx: ImageRepository(tx).remove(image.id, ImageStatus.PENDING)
            )
            if removed:
                await self.store.delete_prefix(self.layout.image(image.id))
        except Exception:
            log.warning("could not clean up refused upload %s; gc will", image.id, exc_info=True)

    async def drain(self, within: float) -> None:
        """At shutdown: let refused uploads finish removing their objects."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=within)
