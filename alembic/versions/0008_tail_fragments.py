"""resumable_uploads.tail_fragments: a tus upload's parked tail as one object per PATCH

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

Rows written before this revision keep `tail_fragments` null: their tail is the one object
`tail_key` of `tail_size` bytes, and they resume as they are.
"""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_uploads = sa.table(
    "resumable_uploads",
    sa.column("id", sa.String),
    sa.column("state", sa.String),
    sa.column("tail_fragments", sa.Text),
    sa.column("expires_at", sa.DateTime),
)


def upgrade() -> None:
    with op.batch_alter_table("resumable_uploads") as batch:
        batch.add_column(sa.Column("tail_fragments", sa.Text(), nullable=True))


def downgrade() -> None:
    # The old code knows one tail object only. An upload still receiving whose tail is in
    # more than one fragment cannot be continued by it: expire it (the client starts over,
    # gc removes its bytes) rather than let it resume from the first fragment alone.
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_uploads.c.id, _uploads.c.tail_fragments).where(
            _uploads.c.state == "receiving", _uploads.c.tail_fragments.is_not(None)
        )
    ).all()
    split = [row.id for row in rows if len(json.loads(row.tail_fragments)) > 1]
    if split:
        bind.execute(
            sa.update(_uploads)
            .where(_uploads.c.id.in_(split))
            .values(expires_at=datetime(2000, 1, 1))  # naive UTC, as the column stores it
        )
    with op.batch_alter_table("resumable_uploads") as batch:
        batch.drop_column("tail_fragments")
