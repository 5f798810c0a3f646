"""Handoff's tables: assignments and the round-robin cursor per pool."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.db import Base, UTCDateTime


class Assignment(Base):
    __tablename__ = "handoff_assignments"

    lead_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cycle: Mapped[int] = mapped_column(Integer, primary_key=True)
    rep_id: Mapped[str] = mapped_column(String(100), index=True)
    rep_name: Mapped[str] = mapped_column(String(200))
    rep_email: Mapped[str] = mapped_column(String(320))
    routing_rule: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(32), default="assigned")
    status_reason: Mapped[str | None] = mapped_column(String(500))
    mql_event_id: Mapped[str] = mapped_column(String(200))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RoundRobinCursor(Base):
    __tablename__ = "handoff_round_robin"

    pool: Mapped[str] = mapped_column(String(100), primary_key=True)
    cursor: Mapped[int] = mapped_column(Integer, default=0)
