"""at most one active and one canary release, enforced by the database

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_EACH = {"uq_releases_one_active": "state = 'active'", "uq_releases_one_canary": "state = 'canary'"}


def upgrade() -> None:
    for name, where in ONE_EACH.items():
        op.create_index(name, "releases", ["state"], unique=True, sqlite_where=sa.text(where),
                        postgresql_where=sa.text(where))


def downgrade() -> None:
    for name in ONE_EACH:
        op.drop_index(name, table_name="releases")
