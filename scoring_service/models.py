"""Scoring's tables: leads, their identities, the points ledger and the activity log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.db import Base, UTCDateTime


class Lead(Base):
    __tablename__ = "scoring_leads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    score: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(32), default="lead")
    mql_cycle: Mapped[int] = mapped_column(Integer, default=0)
    qualified_in_cycle: Mapped[bool] = mapped_column(default=False)
    owner_rep_id: Mapped[str | None] = mapped_column(String(100))
    owner_name: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    rulebook_version: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LeadIdentity(Base):
    """An identity key (email:, user:, anon:) and the lead it belongs to."""

    __tablename__ = "scoring_identities"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("scoring_leads.id"), index=True)


class LedgerEntry(Base):
    """One rule's points for one event: the explanation of a score."""

    __tablename__ = "scoring_ledger"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    lead_id: Mapped[str] = mapped_column(ForeignKey("scoring_leads.id"), index=True)
    event_id: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(String(200))
    points: Mapped[float] = mapped_column(Float)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime())
    rulebook_version: Mapped[str] = mapped_column(String(100))


class Activity(Base):
    """The stored activity log, from which scores can be replayed."""

    __tablename__ = "scoring_activities"

    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("scoring_leads.id"), index=True)
    activity_type: Mapped[str] = mapped_column(String(50))
    event_time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)
