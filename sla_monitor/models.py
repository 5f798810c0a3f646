"""SLA monitor's tables: its clocks, and what it knows of each qualification cycle."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.db import Base, UTCDateTime


class SlaClock(Base):
    """One clock: a lead's cycle, which promise (`clock`), and for accept and first_touch the
    assignment attempt it times (for qualify, the acceptance). What it runs under (policy,
    target, calendar) is recorded as it started, so a changed SLA file never rewrites it.

    `due_at` is when the scheduler must look at it next (its warning, then its deadline);
    empty once nothing more is due."""

    __tablename__ = "sla_clocks"

    lead_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cycle: Mapped[int] = mapped_column(Integer, primary_key=True)
    clock: Mapped[str] = mapped_column(String(32), primary_key=True, default="accept")
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    policy: Mapped[str] = mapped_column(String(200))
    """The target's name in the SLA file."""
    target: Mapped[str] = mapped_column(String(32), default="")
    """The time allowed as written (`4h`)."""
    calendar: Mapped[str] = mapped_column(String(64), default="always")
    rep_id: Mapped[str | None] = mapped_column(String(100), index=True)
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    pool: Mapped[str | None] = mapped_column(String(100))
    on_breach: Mapped[str] = mapped_column(String(16), default="none")
    notify: Mapped[str | None] = mapped_column(String(320))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    warn_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    status: Mapped[str] = mapped_column(String(32), default="running")
    reason: Mapped[str | None] = mapped_column(String(500))
    """Why a clock was cancelled, or the reason code of the answer that ended it."""
    warned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    breached_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    action: Mapped[str | None] = mapped_column(String(32))
    """The rep's action that ended it (`accepted`, `contacted`, …)."""
    business_seconds: Mapped[float | None] = mapped_column(Float)
    """Business time from the start to the end, on the clock's calendar."""
    wall_seconds: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_sla_clocks_status_deadline", "status", "deadline"),)


class SlaCycle(Base):
    """A lead's qualification cycle as the SLA monitor learned it from events: the MQL's
    details (what targets are chosen by), the assignments seen, the rep actions and a
    revocation. Facts that arrive before the clocks they concern are kept here, so a clock
    started later still ends (or never starts) as they say."""

    __tablename__ = "sla_cycles"

    lead_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cycle: Mapped[int] = mapped_column(Integer, primary_key=True)
    mql_event_id: Mapped[str | None] = mapped_column(String(200))
    qualified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    grade: Mapped[str | None] = mapped_column(String(8))
    source: Mapped[str | None] = mapped_column(String(200))
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The MQL's details: its attributes, grade, source, trigger, score."""
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    """The latest assignment attempt seen (0: none yet)."""
    rep_id: Mapped[str | None] = mapped_column(String(100))
    team: Mapped[str | None] = mapped_column(String(100))
    pool: Mapped[str | None] = mapped_column(String(100))
    assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    actions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The first time of each rep action (`accepted` → RFC 3339 time), with its event id."""
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_reason: Mapped[str | None] = mapped_column(String(500))
