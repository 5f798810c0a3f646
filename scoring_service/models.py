"""Scoring's tables: leads, their identities, the points ledger and the activity log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from schemas.lifecycle import LeadStage
from services.db import Base, UTCDateTime


class StageColumn(TypeDecorator[LeadStage]):
    """A lead's stage: text in the database (no migration, no database enum to alter when a
    stage is added), `LeadStage` in the code."""

    impl = String(32)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else LeadStage(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> LeadStage | None:
        return None if value is None else LeadStage(value)


class Lead(Base):
    __tablename__ = "scoring_leads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    score: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[LeadStage] = mapped_column(StageColumn(), default=LeadStage.LEAD)
    mql_cycle: Mapped[int] = mapped_column(Integer, default=0)
    qualified_in_cycle: Mapped[bool] = mapped_column(default=False)
    owner_rep_id: Mapped[str | None] = mapped_column(String(100))
    owner_name: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    rulebook_version: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fit: Mapped[float] = mapped_column(Float, default=0.0)
    engagement: Mapped[float] = mapped_column(Float, default=0.0)
    grade: Mapped[str | None] = mapped_column(String(8), index=True)
    disqualified_by: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200))
    merged_into: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The engine's fold state (scoring_service.engine.LeadState), to continue incrementally."""
    mql_event_id: Mapped[str | None] = mapped_column(String(200))
    """The `lead.mql` that stands for the current cycle (None: none does)."""
    mql_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    """A qualification waiting out the allowed lateness: when it may be announced."""


class LeadIdentity(Base):
    """An identity key (email:, user:, anon:) and the lead it belongs to."""

    __tablename__ = "scoring_identities"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    lead_id: Mapped[str] = mapped_column(
        ForeignKey("scoring_leads.id", deferrable=True, initially="DEFERRED"), index=True
    )
    """Checked at commit: a batch may repoint identities to a lead it inserts later."""


class LedgerEntry(Base):
    """One rule's points for one event: the explanation of a score."""

    __tablename__ = "scoring_ledger"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    lead_id: Mapped[str] = mapped_column(String(64), index=True)
    """No foreign key on the two per-event tables: see migration 0004."""
    event_id: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default="engagement")
    points: Mapped[float] = mapped_column(Float)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime())
    rulebook_version: Mapped[str] = mapped_column(String(100))


LOG_ORDER_INDEX = "ix_scoring_activities_lead_id_event_time"
"""Every read of the log is one lead's activities in event time (see migration 0004)."""


class Activity(Base):
    """The stored activity log, from which scores can be replayed."""

    __tablename__ = "scoring_activities"
    __table_args__ = (Index(LOG_ORDER_INDEX, "lead_id", "event_time"),)

    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    lead_id: Mapped[str] = mapped_column(String(64))
    activity_type: Mapped[str] = mapped_column(String(50))
    event_time: Mapped[datetime] = mapped_column(UTCDateTime())
    envelope: Mapped[str] = mapped_column(Text)
    """The CloudEvent as received (JSON text), parsed again only for replays."""


class StoredRulebook(Base):
    """A rulebook version as uploaded; exactly one is active."""

    __tablename__ = "scoring_rulebooks"

    version: Mapped[str] = mapped_column(String(100), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ScoringJob(Base):
    """A background re-apply job and its progress."""

    __tablename__ = "scoring_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    rulebook_version: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
