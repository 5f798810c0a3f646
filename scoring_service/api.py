"""Read API for leads: score, stage, owner and identities."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import EmailStr
from sqlalchemy import select

from scoring_service.models import Lead, LeadIdentity, LedgerEntry
from services.deps import SessionDep
from services.errors import ApiError

router = APIRouter(tags=["leads"])


def lead_view(lead: Lead, identities: list[str]) -> dict[str, Any]:
    owner = {"rep_id": lead.owner_rep_id, "name": lead.owner_name} if lead.owner_rep_id else None
    return {
        "lead_id": lead.id,
        "email": lead.email,
        "score": lead.score,
        "stage": lead.stage,
        "mql_cycle": lead.mql_cycle,
        "owner": owner,
        "attributes": lead.attributes,
        "identities": sorted(identities),
        "rulebook_version": lead.rulebook_version,
        "created_at": lead.created_at.isoformat(),
        "updated_at": lead.updated_at.isoformat(),
        "last_activity_at": lead.last_activity_at.isoformat() if lead.last_activity_at else None,
    }


@router.get("/leads", summary="Find leads, e.g. by email")
async def list_leads(
    session: SessionDep,
    email: EmailStr | None = None,
    stage: str | None = None,
    limit: int = Query(default=50, ge=1, le=500),
) -> dict[str, Any]:
    query = select(Lead).order_by(Lead.updated_at.desc(), Lead.id).limit(limit)
    if email is not None:
        owner = await session.scalar(
            select(LeadIdentity.lead_id).where(LeadIdentity.key == f"email:{email.lower()}")
        )
        query = query.where(Lead.id == owner)
    if stage is not None:
        query = query.where(Lead.stage == stage)
    leads = (await session.scalars(query)).all()
    return {"items": [await _view(session, lead) for lead in leads]}


@router.get("/leads/{lead_id}", summary="One lead's score, stage and owner")
async def get_lead(lead_id: str, session: SessionDep) -> dict[str, Any]:
    lead = await session.get(Lead, lead_id)
    if lead is None:
        raise ApiError(404, "not_found", f"no lead with id {lead_id!r}")
    return await _view(session, lead)


@router.get("/leads/{lead_id}/ledger", summary="Every rule's points for a lead")
async def get_ledger(lead_id: str, session: SessionDep) -> dict[str, Any]:
    if await session.get(Lead, lead_id) is None:
        raise ApiError(404, "not_found", f"no lead with id {lead_id!r}")
    rows = (
        await session.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.lead_id == lead_id)
            .order_by(LedgerEntry.event_time, LedgerEntry.id)
        )
    ).all()
    return {
        "lead_id": lead_id,
        "entries": [
            {
                "rule": row.rule,
                "points": row.points,
                "event_id": row.event_id,
                "event_time": row.event_time.isoformat(),
                "rulebook_version": row.rulebook_version,
            }
            for row in rows
        ],
    }


async def _view(session: SessionDep, lead: Lead) -> dict[str, Any]:
    keys = (
        await session.scalars(select(LeadIdentity.key).where(LeadIdentity.lead_id == lead.id))
    ).all()
    return lead_view(lead, list(keys))
