"""Handoff's read API (ops key): who a lead went to and why, the unassigned queue, and the
fairness ledger of the reps and pools."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from statistics import median
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from handoff_service.models import (
    ASSIGNED,
    CONVERTED,
    REASSIGNED,
    REJECTED,
    Assignment,
    QueueEntry,
    RepRecord,
)
from services.deps import ClockDep, SessionDep
from services.errors import ApiError, error_responses
from services.params import Instant, LeadId, Limit, Offset
from services.responses import Timestamp
from services.security import RequireOps

STATS_WINDOW = timedelta(days=30)


class SkipView(BaseModel):
    rep_id: str
    reason: str = Field(description="`inactive`, `away`, `outside_hours` or `full`")
    pool: str | None = Field(description="The pool that skipped them; null: as account owner")


def _skips(values: Iterable[dict[str, Any]] | None) -> list[SkipView]:
    return [SkipView.model_validate(each) for each in values or ()]


class AssignmentView(BaseModel):
    cycle: int = Field(description="The qualification cycle the MQL was for")
    attempt: int = Field(description="1, then one more for each reassignment in the cycle")
    rep_id: str
    rep_name: str = Field(description="The rep's name when the lead was assigned")
    rep_email: str
    routing_rule: str = Field(description="The routing rule that matched the lead")
    pool: str | None = Field(description="The pool that dealt the lead (after fallbacks)")
    strategy: str = Field(
        description="round_robin, weighted or load_balanced; account_owner or manual when "
        "no pool dealt it"
    )
    reason: str = Field(
        description="routed, account_owner, from_queue, reassigned_after_breach or manual"
    )
    tried: list[str] = Field(description="The pools asked, in order")
    skipped: list[SkipView] = Field(description="Reps who could not take the lead, and why")
    status: str = Field(
        description="assigned (open), accepted, rejected, converted, recycled, reassigned "
        "(taken from the rep) or revoked (its MQL was revoked)"
    )
    status_reason: str | None = Field(description="Why it was closed")
    assigned_at: Timestamp
    assigned_by: str | None = Field(description="Who assigned it by hand")
    contacted_at: Timestamp | None
    answered_at: Timestamp | None = Field(description="When the rep accepted or rejected it")
    breached_at: Timestamp | None = Field(description="When the accept deadline was missed")
    closed_at: Timestamp | None = Field(description="When it was reassigned or revoked")
    mql_event_id: str

    @classmethod
    def of(cls, row: Assignment) -> AssignmentView:
        return cls(
            cycle=row.cycle,
            attempt=row.attempt,
            rep_id=row.rep_id,
            rep_name=row.rep_name,
            rep_email=row.rep_email,
            routing_rule=row.routing_rule,
            pool=row.pool,
            strategy=row.strategy,
            reason=row.reason,
            tried=list(row.tried or ()),
            skipped=_skips(row.skipped),
            status=row.status,
            status_reason=row.status_reason,
            assigned_at=row.assigned_at,
            assigned_by=row.assigned_by,
            contacted_at=row.contacted_at,
            answered_at=row.answered_at,
            breached_at=row.breached_at,
            closed_at=row.closed_at,
            mql_event_id=row.mql_event_id,
        )


class QueuedView(BaseModel):
    lead_id: str
    cycle: int
    attempt: int = Field(description="The attempt its assignment will be")
    why: str = Field(
        description="no_rule (no routing rule matched), nobody_available (nobody in the "
        "pool or its fallbacks could take it) or breach (put back after a missed deadline)"
    )
    routing_rule: str | None
    tried: list[str] = Field(description="The pools asked, in order")
    skipped: list[SkipView]
    excluded: list[str] = Field(description="Reps who will not get it (they missed it)")
    email: str | None
    grade: str | None
    source: str | None
    attributes: dict[str, Any] = Field(description="The lead's details routing matches on")
    queued_at: Timestamp
    mql_event_id: str

    @classmethod
    def of(cls, row: QueueEntry) -> QueuedView:
        lead = row.lead or {}
        return cls(
            lead_id=row.lead_id,
            cycle=row.cycle,
            attempt=row.attempt,
            why=row.why,
            routing_rule=row.rule,
            tried=list(row.tried),
            skipped=_skips(row.skipped),
            excluded=list(row.exclude),
            email=lead.get("email"),
            grade=lead.get("grade"),
            source=lead.get("source"),
            attributes=dict(lead.get("attributes") or {}),
            queued_at=row.queued_at,
            mql_event_id=row.mql_event_id,
        )


class LeadAssignments(BaseModel):
    lead_id: str
    assignments: list[AssignmentView] = Field(
        description="Newest cycle first; within a cycle, the latest attempt first"
    )
    queued: list[QueuedView] = Field(description="Its cycles waiting in the unassigned queue")


class QueuePage(BaseModel):
    total: int = Field(description="Leads waiting")
    items: list[QueuedView] = Field(description="Oldest first")
    next_offset: int | None = Field(description="The offset of the next page; null on the last")


class Figures(BaseModel):
    assigned: int = Field(description="Leads given in the window (every attempt)")
    open: int = Field(description="Of those, still held unanswered")
    accepted: int = Field(description="Of those, accepted (converted ones included)")
    rejected: int
    converted: int
    reassigned: int = Field(description="Taken from the rep (a missed deadline, an admin)")
    median_seconds_to_accept: float | None = Field(
        description="Median time from assignment to acceptance; null without acceptances"
    )


class RepFigures(Figures):
    rep_id: str
    name: str
    reasons: dict[str, int] = Field(description="Assignments by reason (routed, …)")


class PoolFigures(Figures):
    pool: str


class RepStats(BaseModel):
    from_: Timestamp = Field(serialization_alias="from")
    to: Timestamp
    reps: list[RepFigures] = Field(description="Every rep, and anyone assigned in the window")
    pools: list[PoolFigures] = Field(description="Leads dealt by each pool")


def _accepted(row: Assignment) -> bool:
    return row.answered_at is not None and row.status != REJECTED


def _figures(rows: Sequence[Assignment]) -> dict[str, Any]:
    waits = [
        (row.answered_at - row.assigned_at).total_seconds()
        for row in rows
        if _accepted(row) and row.answered_at is not None
    ]
    return {
        "assigned": len(rows),
        "open": sum(row.status == ASSIGNED for row in rows),
        "accepted": sum(_accepted(row) for row in rows),
        "rejected": sum(row.status == REJECTED for row in rows),
        "converted": sum(row.status == CONVERTED for row in rows),
        "reassigned": sum(row.status == REASSIGNED for row in rows),
        "median_seconds_to_accept": median(waits) if waits else None,
    }


router = APIRouter(tags=["handoff"], dependencies=[RequireOps], responses=error_responses(401, 403))


@router.get(
    "/handoff/leads/{lead_id}",
    summary="A lead's assignments (every attempt, with rule, pool, strategy, skipped reps "
    "and reason) and its place in the queue",
    responses=error_responses(404, 422),
)
async def lead_assignments(lead_id: LeadId, session: SessionDep) -> LeadAssignments:
    rows = (
        await session.scalars(
            select(Assignment)
            .where(Assignment.lead_id == lead_id)
            .order_by(Assignment.cycle.desc(), Assignment.attempt.desc())
        )
    ).all()
    queued = (
        await session.scalars(
            select(QueueEntry).where(QueueEntry.lead_id == lead_id).order_by(QueueEntry.cycle)
        )
    ).all()
    if not rows and not queued:
        raise ApiError(404, "not_found", f"no assignment for lead {lead_id!r}")
    return LeadAssignments(
        lead_id=lead_id,
        assignments=[AssignmentView.of(row) for row in rows],
        queued=[QueuedView.of(row) for row in queued],
    )


@router.get(
    "/handoff/queue",
    summary="Leads nobody could take yet, oldest first",
    responses=error_responses(422),
)
async def unassigned_queue(
    session: SessionDep, limit: Limit = 100, offset: Offset = 0
) -> QueuePage:
    total = await session.scalar(select(func.count()).select_from(QueueEntry)) or 0
    rows = (
        await session.scalars(
            select(QueueEntry)
            .order_by(QueueEntry.queued_at, QueueEntry.lead_id, QueueEntry.cycle)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return QueuePage(
        total=total,
        items=[QueuedView.of(row) for row in rows],
        next_offset=offset + limit if offset + limit < total else None,
    )


@router.get(
    "/handoff/reps/stats",
    summary="The fairness ledger: per rep and per pool, leads assigned in the window and "
    "what became of them",
    responses=error_responses(422),
)
async def rep_stats(
    session: SessionDep,
    clock: ClockDep,
    from_: Annotated[
        Instant | None,
        Query(alias="from", description="Start (RFC 3339, included); default: 30 days before `to`"),
    ] = None,
    to: Annotated[
        Instant | None, Query(description="End (RFC 3339, excluded); default: now")
    ] = None,
) -> RepStats:
    end = to or clock.now()
    start = from_ or end - STATS_WINDOW
    if start >= end:
        raise ApiError(
            422,
            "invalid_request",
            "invalid fields: from",
            fields=[{"field": "from", "message": "must come before `to`"}],
        )
    rows = (
        await session.scalars(
            select(Assignment).where(
                Assignment.assigned_at >= start,
                Assignment.assigned_at < end,
                Assignment.rep_id != "",
            )
        )
    ).all()
    reps = (await session.scalars(select(RepRecord).order_by(RepRecord.id))).all()
    by_rep: dict[str, list[Assignment]] = {rep.id: [] for rep in reps}
    names = {rep.id: rep.name for rep in reps}
    by_pool: dict[str, list[Assignment]] = {}
    for row in rows:
        by_rep.setdefault(row.rep_id, []).append(row)
        names.setdefault(row.rep_id, row.rep_name)
        if row.pool is not None:
            by_pool.setdefault(row.pool, []).append(row)
    rep_figures = []
    for rep_id in sorted(by_rep):
        held = by_rep[rep_id]
        reasons: dict[str, int] = {}
        for row in held:
            reasons[row.reason] = reasons.get(row.reason, 0) + 1
        rep_figures.append(
            RepFigures(rep_id=rep_id, name=names[rep_id], reasons=reasons, **_figures(held))
        )
    return RepStats(
        from_=start,
        to=end,
        reps=rep_figures,
        pools=[PoolFigures(pool=pool, **_figures(by_pool[pool])) for pool in sorted(by_pool)],
    )
