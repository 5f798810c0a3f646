"""Scoring engine: lead fold state and grades, rulebook versions, jobs, API keys.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scoring_leads") as batch:
        batch.add_column(sa.Column("fit", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("engagement", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("grade", sa.String(8), nullable=True))
        batch.add_column(sa.Column("disqualified_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("source", sa.String(200), nullable=True))
        batch.add_column(sa.Column("merged_into", sa.String(64), nullable=True))
        batch.add_column(sa.Column("state", sa.JSON(), nullable=False, server_default="{}"))
        batch.create_index("ix_scoring_leads_grade", ["grade"])
        batch.create_index("ix_scoring_leads_merged_into", ["merged_into"])

    with op.batch_alter_table("scoring_ledger") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="engagement")
        )

    with op.batch_alter_table("scoring_activities") as batch:
        batch.alter_column(
            "envelope", type_=sa.Text(), existing_type=sa.JSON(), postgresql_using="envelope::text"
        )

    op.create_table(
        "scoring_rulebooks",
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_scoring_rulebooks")),
    )
    op.create_index("ix_scoring_rulebooks_active", "scoring_rulebooks", ["active"])

    op.create_table(
        "scoring_jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("rulebook_version", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scoring_jobs")),
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    with op.batch_alter_table("scoring_activities") as batch:
        batch.alter_column(
            "envelope", type_=sa.JSON(), existing_type=sa.Text(), postgresql_using="envelope::json"
        )
    with op.batch_alter_table("scoring_ledger") as batch:
        batch.drop_column("kind")
    op.drop_table("scoring_jobs")
    op.drop_index("ix_scoring_rulebooks_active", table_name="scoring_rulebooks")
    op.drop_table("scoring_rulebooks")
    with op.batch_alter_table("scoring_leads") as batch:
        batch.drop_index("ix_scoring_leads_merged_into")
        batch.drop_index("ix_scoring_leads_grade")
        for column in (
            "state",
            "merged_into",
            "source",
            "disqualified_by",
            "grade",
            "engagement",
            "fit",
        ):
            batch.drop_column(column)
