"""direct uploads: upload_expires_at and upload_token_sha256 on images

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from imagesvc.db import UTCDateTime

revision = "0006"
# Another branch adds 0005; the migrations are re-chained when the branches are merged.
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("upload_expires_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("upload_token_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("upload_token_sha256")
        batch.drop_column("upload_expires_at")
