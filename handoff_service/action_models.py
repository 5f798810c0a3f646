"""The rep actions' tables: every action applied (its first result, for answering a repeat),
the CRM webhook deliveries already applied, and which CRM record is which leadflow lead."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.db import Base, UTCDateTime

_ID = BigInteger().with_variant(Integer, "sqlite")


class HandoffAction(Base):
    """An action applied to one attempt of a lead's assignment, with the answer it was given.

    Each action applies at most once to an attempt (`uq_handoff_actions_attempt_action`): a
    repeat is answered with `result`, the first answer, and emits nothing. An action that
    came with an `Idempotency-Key` keeps it under its caller's scope (the API key's id, or
    `crm:<source>`), with a digest of the request, so the same key is answered the same way
    and a key used for another request is refused.
    """

    __tablename__ = "handoff_actions"
    __table_args__ = (
        UniqueConstraint(
            "lead_id", "cycle", "attempt", "action", name="uq_handoff_actions_attempt_action"
        ),
        UniqueConstraint(
            "idempotency_scope", "idempotency_key", name="uq_handoff_actions_idempotency_key"
        ),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(String(64))
    cycle: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    """accept, reject, contacted, convert, recycle or reassign."""
    rep_id: Mapped[str] = mapped_column(String(100), index=True)
    """The rep who held the assignment acted on."""
    reason: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str | None] = mapped_column(String(16))
    opportunity_id: Mapped[str | None] = mapped_column(String(200))
    amount: Mapped[float | None] = mapped_column(Float)
    to_rep_id: Mapped[str | None] = mapped_column(String(100))
    """A reassignment's new rep (None: back through routing, or to the queue)."""
    note: Mapped[str | None] = mapped_column(String(2000))
    actor: Mapped[str] = mapped_column(String(200))
    """Who acted: the API key's name, or the CRM (and its user, when it says)."""
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(100))
    """`api` or `crm:<source>`."""
    idempotency_scope: Mapped[str | None] = mapped_column(String(100))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_digest: Mapped[str | None] = mapped_column(String(64))
    event_id: Mapped[str | None] = mapped_column(String(200))
    """The event the action emitted (`lead.status`, or `lead.assigned` for a reassignment)."""
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The answer the action was given (`ActionResult`), repeated to a repeat."""
    acted_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class CrmDelivery(Base):
    """A CRM webhook delivery whose changes were applied; a redelivery changes nothing."""

    __tablename__ = "handoff_crm_deliveries"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class CrmRecord(Base):
    """A CRM's record (`record_id`, e.g. a HubSpot contact id) is this leadflow lead."""

    __tablename__ = "handoff_crm_records"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    lead_id: Mapped[str] = mapped_column(String(64))
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime())
