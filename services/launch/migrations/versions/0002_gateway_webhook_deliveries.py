"""gateway: webhook deliveries (dedupe on webhook-id)

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_webhook_deliveries",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("webhook_id", sa.String(length=200), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "webhook_id", name=op.f("pk_gateway_webhook_deliveries")),
    )
    with op.batch_alter_table("gateway_webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_gateway_webhook_deliveries_received_at"), ["received_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("gateway_webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gateway_webhook_deliveries_received_at"))
    op.drop_table("gateway_webhook_deliveries")
