"""The gateway's one table: webhook deliveries already accepted, for answering a redelivered
`webhook-id` 200 without producing it again."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.db import Base, UTCDateTime


class WebhookDelivery(Base):
    """A delivery whose events the broker acknowledged (written after the acknowledgement)."""

    __tablename__ = "gateway_webhook_deliveries"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    events: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
