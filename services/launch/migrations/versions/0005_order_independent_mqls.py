"""MQLs that do not depend on arrival order, and merges into leads a batch creates.

* scoring_leads.mql_event_id: the `lead.mql` that stands for the lead's current cycle, so a
  late fact that undoes the qualification can revoke exactly that event;
  scoring_leads.mql_due_at: when a qualification found by a batch may be announced (after
  the allowed lateness), indexed for the promoter that announces it.
* scoring_identities.lead_id references its lead DEFERRABLE INITIALLY DEFERRED: a batch
  can repoint a stored lead's identities to a lead it creates and inserts later in the same
  transaction; the reference is still checked, at commit.
* handoff_assignments.status_reason and sla_clocks.reason: why an assignment or a clock
  was closed (a revoked MQL); sla_clocks.rep_id may be empty for a clock cancelled before
  it started.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IDENTITY_FK = "fk_scoring_identities_lead_id_scoring_leads"
DUE_INDEX = "ix_scoring_leads_mql_due_at"


def upgrade() -> None:
    with op.batch_alter_table("scoring_leads") as batch:
        batch.add_column(sa.Column("mql_event_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("mql_due_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(DUE_INDEX, ["mql_due_at"])
    with op.batch_alter_table("scoring_identities") as batch:
        batch.drop_constraint(IDENTITY_FK, type_="foreignkey")
        batch.create_foreign_key(
            IDENTITY_FK,
            "scoring_leads",
            ["lead_id"],
            ["id"],
            deferrable=True,
            initially="DEFERRED",
        )
    with op.batch_alter_table("handoff_assignments") as batch:
        batch.add_column(sa.Column("status_reason", sa.String(500), nullable=True))
    with op.batch_alter_table("sla_clocks") as batch:
        batch.add_column(sa.Column("reason", sa.String(500), nullable=True))
        batch.alter_column("rep_id", existing_type=sa.String(100), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("sla_clocks") as batch:
        batch.alter_column("rep_id", existing_type=sa.String(100), nullable=False)
        batch.drop_column("reason")
    with op.batch_alter_table("handoff_assignments") as batch:
        batch.drop_column("status_reason")
    with op.batch_alter_table("scoring_identities") as batch:
        batch.drop_constraint(IDENTITY_FK, type_="foreignkey")
        batch.create_foreign_key(IDENTITY_FK, "scoring_leads", ["lead_id"], ["id"])
    with op.batch_alter_table("scoring_leads") as batch:
        batch.drop_index(DUE_INDEX)
        batch.drop_column("mql_due_at")
        batch.drop_column("mql_event_id")
