"""Lighter writes to scoring's per-event tables, the activity log and the ledger.

Every activity adds a log row and one or more ledger rows, so what each insert maintains
is paid for every event (measured with `leadflow bench scoring`):

* No foreign keys to scoring_leads: PostgreSQL checks one with a trigger per inserted row,
  and those checks were over 40% of a scoring batch's database time. The scoring consumer
  writes these rows only for leads it holds locked (or creates) in the same transaction.
* The log's separate indexes on lead_id and on event_time become one on
  (lead_id, event_time): every read of the log is one lead's activities in event-time
  order, which that index serves alone, and no query used event_time by itself.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEYS = (
    ("scoring_activities", "fk_scoring_activities_lead_id_scoring_leads"),
    ("scoring_ledger", "fk_scoring_ledger_lead_id_scoring_leads"),
)
LOG_ORDER_INDEX = "ix_scoring_activities_lead_id_event_time"
SINGLE_INDEXES = (
    ("ix_scoring_activities_lead_id", "lead_id"),
    ("ix_scoring_activities_event_time", "event_time"),
)


def upgrade() -> None:
    for table, constraint in FOREIGN_KEYS:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(constraint, type_="foreignkey")
    with op.batch_alter_table("scoring_activities") as batch:
        batch.create_index(LOG_ORDER_INDEX, ["lead_id", "event_time"])
        for name, _ in SINGLE_INDEXES:
            batch.drop_index(name)


def downgrade() -> None:
    with op.batch_alter_table("scoring_activities") as batch:
        for name, column in SINGLE_INDEXES:
            batch.create_index(name, [column])
        batch.drop_index(LOG_ORDER_INDEX)
    for table, constraint in FOREIGN_KEYS:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(constraint, "scoring_leads", ["lead_id"], ["id"])
