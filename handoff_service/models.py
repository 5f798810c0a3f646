"""Handoff's tables: assignments (one row per attempt), the reps and their history, away
periods, the routers' turns, the unassigned queue, and who owns which account.

An assignment's `status` is `assigned` while the rep holds the lead unanswered (what counts
against their capacity: `open_leads`), then `accepted`, `rejected`, `converted` or
`recycled` as the rep answers; `reassigned` when it was taken from them (a missed deadline,
an admin), `revoked` when its MQL was revoked. Closed attempts are kept, never deleted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.db import Base, UTCDateTime

ASSIGNED = "assigned"
"""Held by the rep, not answered yet: an open lead."""
ACCEPTED = "accepted"
REJECTED = "rejected"
CONVERTED = "converted"
RECYCLED = "recycled"
REASSIGNED = "reassigned"
"""Taken from the rep and given to another (or queued): after a missed deadline or by hand."""
REVOKED = "revoked"
"""Its MQL was revoked: nobody owes it a follow-up."""

ASSIGNMENT_STATUSES = (ASSIGNED, ACCEPTED, REJECTED, CONVERTED, RECYCLED, REASSIGNED, REVOKED)

_ID = BigInteger().with_variant(Integer, "sqlite")


class Assignment(Base):
    """One attempt at handing a lead's qualification cycle to a rep.

    The first attempt of a cycle is 1; a reassignment closes the current attempt
    (`reassigned`) and adds the next. `handoff_service.assignments.current` finds the
    attempt that stands.
    """

    __tablename__ = "handoff_assignments"

    lead_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cycle: Mapped[int] = mapped_column(Integer, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    rep_id: Mapped[str] = mapped_column(String(100), index=True)
    rep_name: Mapped[str] = mapped_column(String(200))
    rep_email: Mapped[str] = mapped_column(String(320))
    routing_rule: Mapped[str] = mapped_column(String(200))
    """The routing rule that matched the lead ("" when none did: a manual assignment)."""
    strategy: Mapped[str] = mapped_column(String(50))
    """The pool's strategy; `account_owner` or `manual` when no pool dealt the lead."""
    pool: Mapped[str | None] = mapped_column(String(64))
    """The pool that dealt the lead (after fallbacks); None for an account owner or by hand."""
    reason: Mapped[str] = mapped_column(String(32), default="routed")
    """`routed`, `account_owner`, `from_queue`, `reassigned_after_breach` or `manual`."""
    skipped: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    """Reps who could not take the lead: [{"rep_id", "reason", "pool"}]."""
    tried: Mapped[list[str] | None] = mapped_column(JSON)
    """The pools asked, in order."""
    lead: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """What routing knew of the lead (attributes, email, grade, …): to route it again."""
    account_domain: Mapped[str | None] = mapped_column(String(253))
    """The lead's company, for account matching: its owner is recorded on acceptance."""
    assigned_by: Mapped[str | None] = mapped_column(String(200))
    """Who assigned it by hand (an API key's name); None when routing did."""
    status: Mapped[str] = mapped_column(String(32), default=ASSIGNED, index=True)
    status_reason: Mapped[str | None] = mapped_column(String(500))
    mql_event_id: Mapped[str] = mapped_column(String(200))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    contacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """The rep's first touch."""
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When the rep first accepted or rejected it (no longer open)."""
    breached_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When its accept deadline was missed (`sla.events` kind `breached`)."""
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When it was reassigned or revoked."""


class RepRecord(Base):
    """A rep as they are now; every change is also a row of `RepHistory`.

    Seeded from the routing file at start; changed through the API. `seed` is the file's
    record of the rep when it was last applied (None for a rep created through the API): a
    later file changes only the fields it changed since.
    """

    __tablename__ = "handoff_reps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(500))
    email: Mapped[str] = mapped_column(String(320))
    team: Mapped[str | None] = mapped_column(String(64))
    pools: Mapped[list[str]] = mapped_column(JSON)
    weight: Mapped[float] = mapped_column(Float)
    capacity: Mapped[int | None] = mapped_column(Integer)
    time_zone: Mapped[str] = mapped_column(String(64))
    hours: Mapped[dict[str, list[str]] | None] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean)
    version: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(String(16))
    """`file` (seeded from the routing file) or `api`."""
    seed: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(200))


class RepHistory(Base):
    """One version of a rep: what changed, who changed it and when, and the whole record."""

    __tablename__ = "handoff_rep_history"
    __table_args__ = (UniqueConstraint("rep_id", "version"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    rep_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    change: Mapped[str] = mapped_column(String(32))
    """`created`, `updated`, `away_added`, `away_removed`, or their `file_…` forms."""
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Field -> {"from": old, "to": new}."""
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The rep after the change, away periods included."""
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class AwayPeriod(Base):
    """A rep out of office, as written (`from`/`until`: a day or a moment, see
    `routing_file.Away`)."""

    __tablename__ = "handoff_rep_away"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    rep_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("handoff_reps.id", ondelete="CASCADE"), index=True
    )
    starts: Mapped[str] = mapped_column(String(40))
    until: Mapped[str | None] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(String(500))
    origin: Mapped[str] = mapped_column(String(16))
    """`file` or `api`."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))


class PoolTurn(Base):
    """A pool's place in its turns (`router.PoolTurns` without the reps')."""

    __tablename__ = "handoff_pool_turns"

    pool: Mapped[str] = mapped_column(String(64), primary_key=True)
    dealt: Mapped[int] = mapped_column(Integer)
    floor: Mapped[float] = mapped_column(Float)


class RepTurnRecord(Base):
    """A rep's turn in one pool (`router.RepTurn`)."""

    __tablename__ = "handoff_rep_turns"

    pool: Mapped[str] = mapped_column(String(64), primary_key=True)
    rep_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pass_value: Mapped[float] = mapped_column(Float)
    waiting_since: Mapped[int] = mapped_column(Integer)


class QueueEntry(Base):
    """A lead nobody could take yet, assigned from here as soon as someone can."""

    __tablename__ = "handoff_queue"

    lead_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cycle: Mapped[int] = mapped_column(Integer, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    """The attempt its assignment will be."""
    mql_event_id: Mapped[str] = mapped_column(String(200))
    lead: Mapped[dict[str, Any]] = mapped_column(JSON)
    account_domain: Mapped[str | None] = mapped_column(String(253))
    why: Mapped[str] = mapped_column(String(32))
    """`no_rule`, `nobody_available` or `breach` (put back after a missed deadline)."""
    rule: Mapped[str | None] = mapped_column(String(200))
    tried: Mapped[list[str]] = mapped_column(JSON)
    skipped: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    exclude: Mapped[list[str]] = mapped_column(JSON)
    """Reps who must not get it (they missed its deadline)."""
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AccountOwner(Base):
    """The rep who owns a company (by domain) in leadflow: set when a rep accepts a lead of
    it. Later leads of the company go to them first."""

    __tablename__ = "handoff_account_owners"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    rep_id: Mapped[str] = mapped_column(String(64), index=True)
    lead_id: Mapped[str] = mapped_column(String(64))
    cycle: Mapped[int] = mapped_column(Integer)
    since: Mapped[datetime] = mapped_column(UTCDateTime())
