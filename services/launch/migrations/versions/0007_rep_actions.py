"""Rep actions: what reps (over HTTP or from their CRM) did to their assignments, applied once.

* handoff_actions: every action applied to an attempt of an assignment (accept, reject,
  contacted, convert, recycle, reassign), who acted and from where, the event it emitted and
  the answer it was given; at most one of each action per attempt, and an Idempotency-Key at
  most once per caller (the API key, or `crm:<source>`).
* handoff_crm_deliveries: CRM webhook deliveries applied (a redelivered webhook-id changes
  nothing); handoff_crm_records: which CRM record is which leadflow lead.
* api_keys.rep_id: the rep a sales key is bound to.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "handoff_actions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("lead_id", sa.String(64), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("rep_id", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("channel", sa.String(16), nullable=True),
        sa.Column("opportunity_id", sa.String(200), nullable=True),
        sa.Column("amount", sa.Float(), nullable=True),
        sa.Column("to_rep_id", sa.String(100), nullable=True),
        sa.Column("note", sa.String(2000), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("origin", sa.String(100), nullable=False),
        sa.Column("idempotency_scope", sa.String(100), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_digest", sa.String(64), nullable=True),
        sa.Column("event_id", sa.String(200), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("acted_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_handoff_actions"),
        sa.UniqueConstraint(
            "lead_id", "cycle", "attempt", "action", name="uq_handoff_actions_attempt_action"
        ),
        sa.UniqueConstraint(
            "idempotency_scope", "idempotency_key", name="uq_handoff_actions_idempotency_key"
        ),
    )
    op.create_index("ix_handoff_actions_rep_id", "handoff_actions", ["rep_id"])
    op.create_index("ix_handoff_actions_acted_at", "handoff_actions", ["acted_at"])
    op.create_table(
        "handoff_crm_deliveries",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("webhook_id", sa.String(200), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("received_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("source", "webhook_id", name="pk_handoff_crm_deliveries"),
    )
    op.create_index(
        "ix_handoff_crm_deliveries_received_at", "handoff_crm_deliveries", ["received_at"]
    )
    op.create_table(
        "handoff_crm_records",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(200), nullable=False),
        sa.Column("lead_id", sa.String(64), nullable=False),
        sa.Column("linked_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("source", "record_id", name="pk_handoff_crm_records"),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rep_id", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rep_id")
    op.drop_table("handoff_crm_records")
    op.drop_index("ix_handoff_crm_deliveries_received_at", table_name="handoff_crm_deliveries")
    op.drop_table("handoff_crm_deliveries")
    op.drop_index("ix_handoff_actions_acted_at", table_name="handoff_actions")
    op.drop_index("ix_handoff_actions_rep_id", table_name="handoff_actions")
    op.drop_table("handoff_actions")
