"""SLA clocks that end, on business calendars, fired by a database-driven scheduler.

* sla_clocks: one row per clock (`accept`, `first_touch`, `qualify`) and attempt (primary key
  lead_id, cycle, clock, attempt). New columns: what it runs under (target, calendar, pool,
  team, on_breach, notify), when it warns (warn_at), when the scheduler looks at it next
  (due_at, indexed), and how it went (warned_at, breached_at, ended_at, action,
  business_seconds, wall_seconds); indexes for the ops listing (rep_id, team, and status
  with deadline). Existing clocks become attempt 1 of `accept`; the running ones are due
  at their deadline (their calendar is unknown: '').
* sla_cycles: what the SLA monitor knows of each qualification cycle (the MQL's details,
  the assignment attempt, the rep actions, a revocation), filled from the existing clocks.

Downgrading keeps only each cycle's first accept clock.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLOCKS = "sla_clocks"
PK = "pk_sla_clocks"
WHEN = sa.DateTime(timezone=True)
INDEXES = {
    "ix_sla_clocks_due_at": ["due_at"],
    "ix_sla_clocks_rep_id": ["rep_id"],
    "ix_sla_clocks_team": ["team"],
    "ix_sla_clocks_status_deadline": ["status", "deadline"],
}
MOMENTS = ("warn_at", "due_at", "warned_at", "breached_at", "ended_at")


def upgrade() -> None:
    with op.batch_alter_table(CLOCKS, recreate="always") as batch:
        batch.add_column(sa.Column("clock", sa.String(32), nullable=False, server_default="accept"))
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("target", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("calendar", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("team", sa.String(100), nullable=True))
        batch.add_column(sa.Column("pool", sa.String(100), nullable=True))
        batch.add_column(
            sa.Column("on_breach", sa.String(16), nullable=False, server_default="none")
        )
        batch.add_column(sa.Column("notify", sa.String(320), nullable=True))
        for column in MOMENTS:
            batch.add_column(sa.Column(column, WHEN, nullable=True))
        batch.add_column(sa.Column("action", sa.String(32), nullable=True))
        batch.add_column(sa.Column("business_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("wall_seconds", sa.Float(), nullable=True))
        batch.drop_constraint(PK, type_="primary")
        batch.create_primary_key(PK, ["lead_id", "cycle", "clock", "attempt"])
        for name, columns in INDEXES.items():
            batch.create_index(name, columns)
    op.execute(sa.text(f"UPDATE {CLOCKS} SET due_at = deadline WHERE status = 'running'"))

    op.create_table(
        "sla_cycles",
        sa.Column("lead_id", sa.String(64), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("mql_event_id", sa.String(200), nullable=True),
        sa.Column("qualified_at", WHEN, nullable=True),
        sa.Column("grade", sa.String(8), nullable=True),
        sa.Column("source", sa.String(200), nullable=True),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("rep_id", sa.String(100), nullable=True),
        sa.Column("team", sa.String(100), nullable=True),
        sa.Column("pool", sa.String(100), nullable=True),
        sa.Column("assigned_at", WHEN, nullable=True),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("revoked_at", WHEN, nullable=True),
        sa.Column("revoked_reason", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("lead_id", "cycle", name="pk_sla_cycles"),
    )
    # a clock cancelled before 0008 was cancelled by a revocation (with rep_id empty when the
    # revocation came before the assignment, which must then start nothing)
    op.execute(
        sa.text(
            "INSERT INTO sla_cycles (lead_id, cycle, facts, attempt, rep_id, assigned_at, "
            "actions, revoked_at, revoked_reason) "
            "SELECT lead_id, cycle, '{}', CASE WHEN rep_id IS NULL THEN 0 ELSE 1 END, rep_id, "
            "CASE WHEN rep_id IS NULL THEN NULL ELSE started_at END, '{}', "
            "CASE WHEN status = 'cancelled' THEN started_at END, "
            "CASE WHEN status = 'cancelled' THEN reason END "
            f"FROM {CLOCKS}"
        )
    )


def downgrade() -> None:
    op.drop_table("sla_cycles")
    op.execute(sa.text(f"DELETE FROM {CLOCKS} WHERE clock <> 'accept' OR attempt > 1"))
    with op.batch_alter_table(CLOCKS, recreate="always") as batch:
        for name in INDEXES:
            batch.drop_index(name)
        batch.drop_constraint(PK, type_="primary")
        batch.create_primary_key(PK, ["lead_id", "cycle"])
        for column in ("wall_seconds", "business_seconds", "action", *reversed(MOMENTS)):
            batch.drop_column(column)
        for column in ("notify", "on_breach", "pool", "team", "calendar", "target"):
            batch.drop_column(column)
        batch.drop_column("attempt")
        batch.drop_column("clock")
