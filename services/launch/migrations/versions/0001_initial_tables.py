"""initial tables

Revision ID: 0001
Revises:
Create Date: 2026-11-26 03:51:14.753167
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "handoff_assignments",
        sa.Column("lead_id", sa.String(length=64), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("rep_id", sa.String(length=100), nullable=False),
        sa.Column("rep_name", sa.String(length=200), nullable=False),
        sa.Column("rep_email", sa.String(length=320), nullable=False),
        sa.Column("routing_rule", sa.String(length=200), nullable=False),
        sa.Column("strategy", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("mql_event_id", sa.String(length=200), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", "cycle", name=op.f("pk_handoff_assignments")),
    )
    with op.batch_alter_table("handoff_assignments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_handoff_assignments_rep_id"), ["rep_id"], unique=False)

    op.create_table(
        "handoff_round_robin",
        sa.Column("pool", sa.String(length=100), nullable=False),
        sa.Column("cursor", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pool", name=op.f("pk_handoff_round_robin")),
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("service", sa.String(length=50), nullable=False),
        sa.Column("topic", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("ce_type", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_service"), ["service"], unique=False)

    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_processed_events")),
    )
    op.create_table(
        "scoring_leads",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("mql_cycle", sa.Integer(), nullable=False),
        sa.Column("qualified_in_cycle", sa.Boolean(), nullable=False),
        sa.Column("owner_rep_id", sa.String(length=100), nullable=True),
        sa.Column("owner_name", sa.String(length=200), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("rulebook_version", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scoring_leads")),
    )
    with op.batch_alter_table("scoring_leads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scoring_leads_email"), ["email"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_scoring_leads_updated_at"), ["updated_at"], unique=False
        )

    op.create_table(
        "sla_clocks",
        sa.Column("lead_id", sa.String(length=64), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(length=200), nullable=False),
        sa.Column("rep_id", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", "cycle", name=op.f("pk_sla_clocks")),
    )
    with op.batch_alter_table("sla_clocks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_clocks_deadline"), ["deadline"], unique=False)

    op.create_table(
        "scoring_activities",
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("lead_id", sa.String(length=64), nullable=False),
        sa.Column("activity_type", sa.String(length=50), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("envelope", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lead_id"],
            ["scoring_leads.id"],
            name=op.f("fk_scoring_activities_lead_id_scoring_leads"),
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_scoring_activities")),
    )
    with op.batch_alter_table("scoring_activities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_scoring_activities_event_time"), ["event_time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_scoring_activities_lead_id"), ["lead_id"], unique=False
        )

    op.create_table(
        "scoring_identities",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("lead_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["lead_id"],
            ["scoring_leads.id"],
            name=op.f("fk_scoring_identities_lead_id_scoring_leads"),
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_scoring_identities")),
    )
    with op.batch_alter_table("scoring_identities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_scoring_identities_lead_id"), ["lead_id"], unique=False
        )

    op.create_table(
        "scoring_ledger",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("lead_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("rule", sa.String(length=200), nullable=False),
        sa.Column("points", sa.Float(), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rulebook_version", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["scoring_leads.id"], name=op.f("fk_scoring_ledger_lead_id_scoring_leads")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scoring_ledger")),
    )
    with op.batch_alter_table("scoring_ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scoring_ledger_lead_id"), ["lead_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("scoring_ledger", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scoring_ledger_lead_id"))

    op.drop_table("scoring_ledger")
    with op.batch_alter_table("scoring_identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scoring_identities_lead_id"))

    op.drop_table("scoring_identities")
    with op.batch_alter_table("scoring_activities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scoring_activities_lead_id"))
        batch_op.drop_index(batch_op.f("ix_scoring_activities_event_time"))

    op.drop_table("scoring_activities")
    with op.batch_alter_table("sla_clocks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sla_clocks_deadline"))

    op.drop_table("sla_clocks")
    with op.batch_alter_table("scoring_leads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scoring_leads_updated_at"))
        batch_op.drop_index(batch_op.f("ix_scoring_leads_email"))

    op.drop_table("scoring_leads")
    op.drop_table("processed_events")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_service"))

    op.drop_table("outbox")
    op.drop_table("handoff_round_robin")
    with op.batch_alter_table("handoff_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_handoff_assignments_rep_id"))

    op.drop_table("handoff_assignments")
