"""Read API for handoff: who a lead was assigned to, and why."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from handoff_service.models import Assignment
from services.deps import SessionDep
from services.errors import ApiError, error_responses
from services.params import LeadId
from services.responses import Timestamp
from services.security import RequireOps


class AssignmentView(BaseModel):
    cycle: int = Field(description="The qualification cycle the MQL was for")
    rep_id: str
    rep_name: str
    rep_email: str
    routing_rule: str = Field(description="The roster rule that chose the rep's pool")
    strategy: str = Field(description="How the rep was chosen within it, e.g. round_robin")
    status: str = Field(description="`assigned`, or `revoked` when its MQL was revoked")
    status_reason: str | None = Field(description="Why it was closed (a revoked MQL)")
    assigned_at: Timestamp
    mql_event_id: str

    @classmethod
    def of(cls, row: Assignment) -> AssignmentView:
        return cls(
            cycle=row.cycle,
            rep_id=row.rep_id,
            rep_name=row.rep_name,
            rep_email=row.rep_email,
            routing_rule=row.routing_rule,
            strategy=row.strategy,
            status=row.status,
            status_reason=row.status_reason,
            assigned_at=row.assigned_at,
            mql_event_id=row.mql_event_id,
        )


class LeadAssignments(BaseModel):
    lead_id: str
    assignments: list[AssignmentView] = Field(description="Newest cycle first")


router = APIRouter(tags=["handoff"], dependencies=[RequireOps], responses=error_responses(401, 403))


@router.get(
    "/handoff/leads/{lead_id}",
    summary="A lead's assignments, newest cycle first",
    responses=error_responses(404, 422),
)
async def lead_assignments(lead_id: LeadId, session: SessionDep) -> LeadAssignments:
    rows = (
        await session.scalars(
            select(Assignment)
            .where(Assignment.lead_id == lead_id)
            .order_by(Assignment.cycle.desc())
        )
    ).all()
    if not rows:
        raise ApiError(404, "not_found", f"no assignment for lead {lead_id!r}")
    return LeadAssignments(lead_id=lead_id, assignments=[AssignmentView.of(row) for row in rows])
