"""Every table of the image lifecycle: `images` (one row per image, its state and facts),
`variants` (renditions), `idempotency_keys` (retry-safe uploads), `url_signing_keys` (the
database-kept key of signed links) and `resumable_uploads` (tus uploads in progress)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from imagesvc.db import Base, UTCDateTime
from imagesvc.errors import InvalidParameter
from imagesvc.ids import IMAGE_ID_LENGTH


class ImageStatus(StrEnum):
    # pending: the row records the intent to write `storage_key`; the object may be partial.
    # ready: the object is durable and matches byte_size/sha256; the only state clients see.
    # deleting: objects are being removed; the row goes once they are gone.
    PENDING = "pending"
    READY = "ready"
    DELETING = "deleting"


class Visibility(StrEnum):
    PRIVATE = "private"
    PUBLIC = "public"


def parse_visibility(value: object) -> Visibility:
    """A client's visibility (form field, query, PATCH); absent or null is private."""
    if value is None:
        return Visibility.PRIVATE
    try:
        return Visibility(str(value))
    except ValueError:
        raise InvalidParameter("visibility: must be `private` or `public`") from None


FILENAME_MAX = 255


class Image(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(IMAGE_ID_LENGTH), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer)
    byte_size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    filename: Mapped[str | None] = mapped_column(String(FILENAME_MAX))
    visibility: Mapped[str] = mapped_column(String(16))
    # Placeholders for clients to paint before the bytes arrive (null if not computable).
    blurhash: Mapped[str | None] = mapped_column(String(64))
    dominant_color: Mapped[str | None] = mapped_column(String(7))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # When the status last changed: gc ages pending and deleting rows by it.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Direct uploads (uploads/direct/): set on the pending row while it waits for the
    # client's bytes in the store, which no process of ours heart-beats; gc removes the
    # row (and any object) once this has passed. While it is pending, `byte_size`,
    # `sha256` and `content_type` hold what the client declared; `updated_at` is the lease
    # of a request working on it (the local PUT, `complete`), equal to `created_at` when
    # none is. Null for every other upload.
    upload_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Local backend only: sha256 of the secret in the upload URL's token (like API keys).
    upload_token_sha256: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # Owner-scoped keyset listing: WHERE owner = ? AND id < ? ORDER BY id DESC.
        Index("ix_images_owner_id", "owner", "id"),
        # The reconciler's scan of stale pending/deleting rows.
        Index("ix_images_status_updated_at", "status", "updated_at"),
        # Binary collation: owners and ids compare byte for byte ("Alice" is not "alice"),
        # and filenames keep any unicode.
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},
    )


class IdempotencyState(StrEnum):
    IN_PROGRESS = "in_progress"
    DONE = "done"


class IdempotencyRecord(Base):
    """One `Idempotency-Key` of one owner: claimed while its upload runs, then the first
    result, replayed for 24 hours to the same request (SPEC §4)."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    # sha256 over (body sha256, filename, visibility) of the request that completed.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    # The created image as it was returned (JSON), so a replay is the same response even
    # after the image was changed or deleted.
    response: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Heartbeat while in progress: a claim not refreshed within the upload lease is stale.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_idempotency_keys_created_at", "created_at"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},
    )


class VariantStatus(StrEnum):
    RENDERING = "rendering"  # claimed by one renderer; a claim older than the lease is taken over
    READY = "ready"


class Variant(Base):
    """One rendition of an image: unique per image, box, fit and format, rendered once."""

    __tablename__ = "variants"

    image_id: Mapped[str] = mapped_column(String(IMAGE_ID_LENGTH), primary_key=True)
    box_width: Mapped[int] = mapped_column(Integer, primary_key=True)
    box_height: Mapped[int] = mapped_column(Integer, primary_key=True)
    fit: Mapped[str] = mapped_column(String(8), primary_key=True)
    format: Mapped[str] = mapped_column(String(8), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str | None] = mapped_column(String(32))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    byte_size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_variants_status_updated_at", "status", "updated_at"),
        Index("ix_variants_storage_key", "storage_key"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},
    )


class UrlSigningKey(Base):
    """The key that signs links (serving/links.py) when `IMAGESVC_URL_SIGNING_KEYS` is
    unset: generated once by whichever replica needs it first and kept here, so every
    replica signs and verifies alike. One row, id `default`."""

    __tablename__ = "url_signing_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # 256 random bits, URL-safe base64. A secret: never logged, never in a response.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = ({"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},)


class ResumableState(StrEnum):
    # receiving: bytes are arriving over tus PATCHes; the image row is `pending`.
    # completing: every byte is stored (offset = length) and the parts are named; the
    #   object is being assembled and measured. A failure here is finished by a retry (a
    #   PATCH at the end, or a HEAD), never lost (docs/DESIGN.md "Resumable uploads").
    # done: the image is ready; the record stays (HEAD answers `Image-Id`) until it expires.
    RECEIVING = "receiving"
    COMPLETING = "completing"
    DONE = "done"


# S3 upload ids are opaque strings; AWS's are ~150 characters, other stores' shorter.
MULTIPART_ID_MAX = 1024
TUS_METADATA_MAX = 4096


class ResumableUpload(Base):
    """One tus upload (SPEC §10). The id is the image's: a `pending` images row exists from
    creation. Everything an API process needs to continue the upload lives here, so any
    process or replica may serve its next request."""

    __tablename__ = "resumable_uploads"

    id: Mapped[str] = mapped_column(String(IMAGE_ID_LENGTH), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    # Null while the client deferred the length (creation-defer-length).
    upload_length: Mapped[int | None] = mapped_column(BigInteger)
    # Bytes durably stored: the committed parts plus the parked tail.
    upload_offset: Mapped[int] = mapped_column(BigInteger)
    # The client's Upload-Metadata header as sent (echoed on HEAD), or null.
    upload_metadata: Mapped[str | None] = mapped_column(String(TUS_METADATA_MAX))
    # The store's multipart upload of the original, once the first part was cut.
    multipart_id: Mapped[str | None] = mapped_column(String(MULTIPART_ID_MAX))
    # JSON list of the committed parts' ETags: part n is item n - 1 (numbered 1, 2, ...).
    parts: Mapped[str] = mapped_column(Text)
    # The parked tail: bytes past the last part, below the minimum part size, kept as
    # fragments, one object per PATCH (a fresh key each), until a part takes them all.
    # JSON list of [key, size] in order; null in records written before migration 0008,
    # whose tail is the one object `tail_key` (uploads/tus/repository.py fragments_of).
    tail_fragments: Mapped[str | None] = mapped_column(Text)
    # The first fragment's key, and the size of all of them: a one-fragment tail is exactly
    # the old single tail.
    tail_key: Mapped[str | None] = mapped_column(String(512))
    tail_size: Mapped[int] = mapped_column(BigInteger)
    # The lease of the PATCH (or DELETE) working on the upload: claimed with a conditional
    # UPDATE, refreshed while it runs, free once `lease_expires_at` passed.
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # IMAGESVC_RESUMABLE_EXPIRY_SECONDS after the last PATCH (410 after, then gc).
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        # gc's scan of expired uploads.
        Index("ix_resumable_uploads_expires_at", "expires_at"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},
    )
