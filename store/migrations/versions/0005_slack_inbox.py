"""slack inbox: an event is kept until its work is done, so a crash mid-way is retried

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("slack_deliveries") as table:
        table.add_column(sa.Column("body", sa.JSON(), nullable=True))
        table.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("done_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("posted_ts", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slack_deliveries") as table:
        for column in ("posted_ts", "done_at", "lease_until", "body"):
            table.drop_column(column)
