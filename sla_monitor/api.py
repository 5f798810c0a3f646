"""Ops API: the follow-up clock of a lead."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from services.auth import OpsDep
from services.deps import ClockDep, SessionDep
from services.errors import ApiError
from services.params import LeadId
from sla_monitor.models import SlaClock
from sla_monitor.policy import AcceptPolicy


def clock_view(row: SlaClock, policy: AcceptPolicy, now: datetime) -> dict[str, Any]:
    current = row.policy == policy.name
    return {
        "cycle": row.cycle,
        "policy": {
            "name": row.policy,
            "accept_within_hours": policy.accept_within_hours if current else None,
            "business_hours": policy.business_hours if current else None,
            "timezone": policy.calendar.timezone if current else None,
        },
        "rep_id": row.rep_id,
        "started_at": row.started_at.isoformat(),
        "deadline": row.deadline.isoformat(),
        "status": row.status,
        "reason": row.reason,  # why it was cancelled (a revoked MQL)
        "overdue": row.status == "running" and now > row.deadline,
    }


def build_router(policy: AcceptPolicy) -> APIRouter:
    router = APIRouter(tags=["sla"], dependencies=[OpsDep])

    @router.get("/sla/leads/{lead_id}", summary="A lead's follow-up clock: policy, deadline")
    async def lead_clock(lead_id: LeadId, session: SessionDep, clock: ClockDep) -> dict[str, Any]:
        rows = (
            await session.scalars(
                select(SlaClock).where(SlaClock.lead_id == lead_id).order_by(SlaClock.cycle.desc())
            )
        ).all()
        if not rows:
            raise ApiError(404, "not_found", f"no SLA clock for lead {lead_id!r}")
        now = clock.now()
        return {"lead_id": lead_id, "clocks": [clock_view(row, policy, now) for row in rows]}

    return router
