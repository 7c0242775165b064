"""review uncertainty: the reward model's doubt about each answer, for the reviewers' queue order

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_responses_review_order"
FOREIGN_KEY = "fk_responses_review_scorer_release_id"


def upgrade() -> None:
    # Plain ADD COLUMN on both databases, never a batch copy of the table: responses is the
    # biggest table, and other tables point at it.
    op.add_column("responses", sa.Column("review_uncertainty", sa.Float(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        # SQLite takes a REFERENCES clause on a new nullable column; Alembic would only offer
        # a batch copy for it.
        op.execute(f"ALTER TABLE responses ADD COLUMN review_scorer_release_id INTEGER "
                   f"CONSTRAINT {FOREIGN_KEY} REFERENCES releases (id)")
    else:
        op.add_column("responses", sa.Column("review_scorer_release_id", sa.Integer(),
                                             sa.ForeignKey("releases.id", name=FOREIGN_KEY), nullable=True))
    # The queue's ORDER BY, key for key (see store.models): unscored last on both databases.
    op.create_index(INDEX, "responses", [sa.text("(review_uncertainty IS NULL)"), sa.text("review_uncertainty DESC"),
                                         sa.text("created_at DESC")])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="responses")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite 3.35+ drops a column, but not one that a foreign key clause names.
        with op.batch_alter_table("responses") as batch:
            batch.drop_column("review_scorer_release_id")
            batch.drop_column("review_uncertainty")
        return
    op.drop_constraint(FOREIGN_KEY, "responses", type_="foreignkey")
    op.drop_column("responses", "review_scorer_release_id")
    op.drop_column("responses", "review_uncertainty")
