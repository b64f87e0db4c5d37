"""variants table; blurhash and dominant_color on images

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from imagesvc.db import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("blurhash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("dominant_color", sa.String(7), nullable=True))
    op.create_table(
        "variants",
        sa.Column("image_id", sa.String(30), nullable=False),
        sa.Column("box_width", sa.Integer(), nullable=False),
        sa.Column("box_height", sa.Integer(), nullable=False),
        sa.Column("fit", sa.String(8), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("storage_key", sa.String(512), nullable=False),
        sa.Column("content_type", sa.String(32), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("byte_size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "image_id", "box_width", "box_height", "fit", "format", name=op.f("pk_variants")
        ),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index("ix_variants_status_updated_at", "variants", ["status", "updated_at"])
    op.create_index("ix_variants_storage_key", "variants", ["storage_key"])


def downgrade() -> None:
    op.drop_index("ix_variants_storage_key", table_name="variants")
    op.drop_index("ix_variants_status_updated_at", table_name="variants")
    op.drop_table("variants")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("dominant_color")
        batch.drop_column("blurhash")
