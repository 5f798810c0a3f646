"""Ops API: the follow-up clock of a lead."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from services.deps import ClockDep, SessionDep
from services.errors import ApiError, error_responses
from services.params import LeadId
from services.responses import Timestamp
from services.security import RequireOps
from sla_monitor.models import SlaClock
from sla_monitor.policy import AcceptPolicy


class PolicyView(BaseModel):
    """The policy a clock runs under; its terms only while it is the configured one."""

    name: str
    accept_within_hours: float | None
    business_hours: bool | None
    timezone: str | None


class ClockView(BaseModel):
    cycle: int = Field(description="The qualification cycle the MQL was for")
    policy: PolicyView
    rep_id: str | None
    started_at: Timestamp
    deadline: Timestamp
    status: str = Field(description="`running`, or `cancelled` when its MQL was revoked")
    reason: str | None = Field(description="Why it was cancelled (a revoked MQL)")
    overdue: bool = Field(description="Running and past its deadline")


class LeadClocks(BaseModel):
    lead_id: str
    clocks: list[ClockView] = Field(description="Newest cycle first")


def clock_view(row: SlaClock, policy: AcceptPolicy, now: datetime) -> ClockView:
    current = row.policy == policy.name
    return ClockView(
        cycle=row.cycle,
        policy=PolicyView(
            name=row.policy,
            accept_within_hours=policy.accept_within_hours if current else None,
            business_hours=policy.business_hours if current else None,
            timezone=policy.calendar.timezone if current else None,
        ),
        rep_id=row.rep_id,
        started_at=row.started_at,
        deadline=row.deadline,
        status=row.status,
        reason=row.reason,
        overdue=row.status == "running" and now > row.deadline,
    )


def build_router(policy: AcceptPolicy) -> APIRouter:
    router = APIRouter(tags=["sla"], dependencies=[RequireOps], responses=error_responses(401, 403))

    @router.get(
        "/sla/leads/{lead_id}",
        summary="A lead's follow-up clock: policy, deadline",
        responses=error_responses(404, 422),
    )
    async def lead_clock(lead_id: LeadId, session: SessionDep, clock: ClockDep) -> LeadClocks:
        rows = (
            await session.scalars(
                select(SlaClock).where(SlaClock.lead_id == lead_id).order_by(SlaClock.cycle.desc())
            )
        ).all()
        if not rows:
            raise ApiError(404, "not_found", f"no SLA clock for lead {lead_id!r}")
        now = clock.now()
        return LeadClocks(lead_id=lead_id, clocks=[clock_view(row, policy, now) for row in rows])

    return router
