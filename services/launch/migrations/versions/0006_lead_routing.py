"""Lead routing: reps with their history and away periods, fair turns, the unassigned queue,
account owners, and assignments with attempts.

* handoff_assignments: one row per attempt (primary key lead_id, cycle, attempt; a
  reassignment closes an attempt and adds the next). New columns: pool, reason, skipped,
  tried, lead (what routing knew, to route it again), account_domain, assigned_by,
  contacted_at, answered_at, breached_at, closed_at; indexes on status (open leads) and
  assigned_at (stats).
* handoff_reps (the current record, seeded from the routing file, changed through the API),
  handoff_rep_history (every version, who and when), handoff_rep_away (out of office).
* handoff_pool_turns and handoff_rep_turns: each pool's turns, per rep.
* handoff_queue: leads nobody could take yet.
* handoff_account_owners: company domain -> the rep who accepted a lead of it.
* handoff_round_robin (the roster's one cursor per pool) is dropped.

Downgrading keeps only each cycle's first attempt.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ASSIGNMENTS = "handoff_assignments"
PK = "pk_handoff_assignments"
STATUS_INDEX = "ix_handoff_assignments_status"
ASSIGNED_AT_INDEX = "ix_handoff_assignments_assigned_at"
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table(ASSIGNMENTS, recreate="always") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("pool", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("reason", sa.String(32), nullable=False, server_default="routed")
        )
        batch.add_column(sa.Column("skipped", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("tried", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("lead", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("account_domain", sa.String(253), nullable=True))
        batch.add_column(sa.Column("assigned_by", sa.String(200), nullable=True))
        for column in ("contacted_at", "answered_at", "breached_at", "closed_at"):
            batch.add_column(sa.Column(column, WHEN, nullable=True))
        batch.drop_constraint(PK, type_="primary")
        batch.create_primary_key(PK, ["lead_id", "cycle", "attempt"])
        batch.create_index(STATUS_INDEX, ["status"])
        batch.create_index(ASSIGNED_AT_INDEX, ["assigned_at"])

    op.create_table(
        "handoff_reps",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("team", sa.String(64), nullable=True),
        sa.Column("pools", sa.JSON(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=True),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("hours", sa.JSON(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("seed", sa.JSON(), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_handoff_reps"),
    )
    op.create_table(
        "handoff_rep_history",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("rep_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("change", sa.String(32), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_handoff_rep_history"),
        sa.UniqueConstraint("rep_id", "version", name="uq_handoff_rep_history_rep_id"),
    )
    op.create_table(
        "handoff_rep_away",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("rep_id", sa.String(64), nullable=False),
        sa.Column("starts", sa.String(40), nullable=False),
        sa.Column("until", sa.String(40), nullable=True),
        sa.Column("note", sa.String(500), nullable=True),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.ForeignKeyConstraint(
            ["rep_id"],
            ["handoff_reps.id"],
            name="fk_handoff_rep_away_rep_id_handoff_reps",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_handoff_rep_away"),
    )
    op.create_index("ix_handoff_rep_away_rep_id", "handoff_rep_away", ["rep_id"])
    op.create_table(
        "handoff_pool_turns",
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("dealt", sa.Integer(), nullable=False),
        sa.Column("floor", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("pool", name="pk_handoff_pool_turns"),
    )
    op.create_table(
        "handoff_rep_turns",
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("rep_id", sa.String(64), nullable=False),
        sa.Column("pass_value", sa.Float(), nullable=False),
        sa.Column("waiting_since", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pool", "rep_id", name="pk_handoff_rep_turns"),
    )
    op.create_table(
        "handoff_queue",
        sa.Column("lead_id", sa.String(64), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("mql_event_id", sa.String(200), nullable=False),
        sa.Column("lead", sa.JSON(), nullable=False),
        sa.Column("account_domain", sa.String(253), nullable=True),
        sa.Column("why", sa.String(32), nullable=False),
        sa.Column("rule", sa.String(200), nullable=True),
        sa.Column("tried", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("exclude", sa.JSON(), nullable=False),
        sa.Column("queued_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("lead_id", "cycle", name="pk_handoff_queue"),
    )
    op.create_index("ix_handoff_queue_queued_at", "handoff_queue", ["queued_at"])
    op.create_table(
        "handoff_account_owners",
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("rep_id", sa.String(64), nullable=False),
        sa.Column("lead_id", sa.String(64), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("since", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("domain", name="pk_handoff_account_owners"),
    )
    op.create_index("ix_handoff_account_owners_rep_id", "handoff_account_owners", ["rep_id"])
    op.drop_table("handoff_round_robin")


def downgrade() -> None:
    op.create_table(
        "handoff_round_robin",
        sa.Column("pool", sa.String(length=100), nullable=False),
        sa.Column("cursor", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pool", name="pk_handoff_round_robin"),
    )
    op.drop_index("ix_handoff_account_owners_rep_id", table_name="handoff_account_owners")
    op.drop_table("handoff_account_owners")
    op.drop_index("ix_handoff_queue_queued_at", table_name="handoff_queue")
    op.drop_table("handoff_queue")
    op.drop_table("handoff_rep_turns")
    op.drop_table("handoff_pool_turns")
    op.drop_index("ix_handoff_rep_away_rep_id", table_name="handoff_rep_away")
    op.drop_table("handoff_rep_away")
    op.drop_table("handoff_rep_history")
    op.drop_table("handoff_reps")

    op.execute(sa.text(f"DELETE FROM {ASSIGNMENTS} WHERE attempt > 1"))
    with op.batch_alter_table(ASSIGNMENTS, recreate="always") as batch:
        batch.drop_index(ASSIGNED_AT_INDEX)
        batch.drop_index(STATUS_INDEX)
        batch.drop_constraint(PK, type_="primary")
        batch.create_primary_key(PK, ["lead_id", "cycle"])
        for column in ("closed_at", "breached_at", "answered_at", "contacted_at"):
            batch.drop_column(column)
        for column in ("assigned_by", "account_domain", "lead", "tried", "skipped", "reason"):
            batch.drop_column(column)
        batch.drop_column("pool")
        batch.drop_column("attempt")
