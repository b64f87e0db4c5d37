"""The `api_keys` table: who may call the API, stored without the secret."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from imagesvc.db import Base, UTCDateTime


class ApiKey(Base):
    __tablename__ = "api_keys"

    # Public half of the key (`isk_<id>_<secret>`): lets us find the row without
    # searching by secret.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    # sha256 of the secret half. The secret has 256 bits of entropy, so a fast hash is
    # enough: there is nothing to brute-force (unlike passwords).
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_api_keys_owner", "owner"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},
    )
