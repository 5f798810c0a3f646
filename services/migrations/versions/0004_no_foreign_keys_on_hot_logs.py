"""Scoring's activity log and ledger drop their foreign keys to scoring_leads.

Every activity adds an activity row and one or more ledger rows, and PostgreSQL checks a
foreign key with a trigger per inserted row: measured with `leadflow bench scoring`, those
checks were over 40% of a scoring batch's database time. The scoring consumer writes these
rows only for leads it has just created or locked in the same transaction, so the check
could never fail.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROPPED = (
    ("scoring_activities", "fk_scoring_activities_lead_id_scoring_leads"),
    ("scoring_ledger", "fk_scoring_ledger_lead_id_scoring_leads"),
)


def upgrade() -> None:
    for table, constraint in DROPPED:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(constraint, type_="foreignkey")


def downgrade() -> None:
    for table, constraint in DROPPED:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(constraint, "scoring_leads", ["lead_id"], ["id"])
