"""Read API for handoff: who a lead was assigned to, and why."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from handoff_service.models import Assignment
from services.auth import OpsDep
from services.deps import SessionDep
from services.errors import ApiError
from services.params import LeadId

router = APIRouter(tags=["handoff"], dependencies=[OpsDep])


@router.get("/handoff/leads/{lead_id}", summary="A lead's assignments, newest cycle first")
async def lead_assignments(lead_id: LeadId, session: SessionDep) -> dict[str, Any]:
    rows = (
        await session.scalars(
            select(Assignment)
            .where(Assignment.lead_id == lead_id)
            .order_by(Assignment.cycle.desc())
        )
    ).all()
    if not rows:
        raise ApiError(404, "not_found", f"no assignment for lead {lead_id!r}")
    return {
        "lead_id": lead_id,
        "assignments": [
            {
                "cycle": row.cycle,
                "rep_id": row.rep_id,
                "rep_name": row.rep_name,
                "rep_email": row.rep_email,
                "routing_rule": row.routing_rule,
                "strategy": row.strategy,
                "status": row.status,
                "status_reason": row.status_reason,  # why it was closed (a revoked MQL)
                "assigned_at": row.assigned_at.isoformat(),
                "mql_event_id": row.mql_event_id,
            }
            for row in rows
        ],
    }
