"""resumable_uploads: tus uploads in progress

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from imagesvc.db import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resumable_uploads",
        sa.Column("id", sa.String(30), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("upload_length", sa.BigInteger(), nullable=True),
        sa.Column("upload_offset", sa.BigInteger(), nullable=False),
        sa.Column("upload_metadata", sa.String(4096), nullable=True),
        sa.Column("multipart_id", sa.String(1024), nullable=True),
        sa.Column("parts", sa.Text(), nullable=False),
        sa.Column("tail_key", sa.String(512), nullable=True),
        sa.Column("tail_size", sa.BigInteger(), nullable=False),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resumable_uploads")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index("ix_resumable_uploads_expires_at", "resumable_uploads", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_resumable_uploads_expires_at", table_name="resumable_uploads")
    op.drop_table("resumable_uploads")
