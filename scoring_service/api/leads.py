"""The leads API (ops key): find leads, one lead with its scores decayed to now, and the ledger
that explains its score."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query
from pydantic import BaseModel, EmailStr, Field
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.lifecycle import LeadStage
from scoring_service import engine, store
from scoring_service.leads import state_of
from scoring_service.models import Lead, LedgerEntry
from scoring_service.rulebooks import RulebookCache
from services.deps import ClockDep, SessionDep
from services.errors import ApiError, error_responses
from services.params import LeadId, Limit, Offset, Score, Since, Stage
from services.responses import Timestamp
from services.security import RequireOps


class Owner(BaseModel):
    rep_id: str
    name: str | None


class LeadView(BaseModel):
    """A lead: its scores decayed to now, grade, stage, owner and identities."""

    lead_id: str
    email: str | None
    fit: float
    engagement: float
    score: float = Field(description="fit + engagement")
    grade: str = Field(description="Fit letter and engagement digit, e.g. A1 (the best)")
    disqualified_by: list[str] = Field(description="The disqualifiers that apply")
    stage: LeadStage
    mql_cycle: int = Field(description="Qualification cycles so far (a recycle starts one)")
    owner: Owner | None = Field(description="The rep it was routed to in its current cycle")
    attributes: dict[str, Any]
    identities: list[str] = Field(description="Identity keys: email:…, user:…, anon:…")
    source: str | None
    rulebook_version: str
    created_at: Timestamp
    updated_at: Timestamp
    last_activity_at: Timestamp | None


class LeadDetail(LeadView):
    merged_from: str | None = Field(
        default=None,
        description="The id asked for, when that lead was merged into this one (absent otherwise)",
    )


class LeadPage(BaseModel):
    items: list[LeadView]
    next_offset: int | None = Field(description="The offset of the next page; null on the last")


class LedgerLine(BaseModel):
    rule: str
    kind: str = Field(description="fit, engagement, …")
    points: float
    event_id: str
    event_time: Timestamp
    rulebook_version: str


class Ledger(BaseModel):
    lead_id: str
    entries: list[LedgerLine] = Field(description="In event-time order")


View = TypeVar("View", bound=LeadView)


def lead_view(
    model: type[View], lead: Lead, identities: list[str], snapshot: engine.Snapshot
) -> View:
    owner = Owner(rep_id=lead.owner_rep_id, name=lead.owner_name) if lead.owner_rep_id else None
    return model(
        lead_id=lead.id,
        email=lead.email,
        fit=snapshot.fit,
        engagement=snapshot.engagement,
        score=snapshot.total,
        grade=snapshot.grade,
        disqualified_by=list(snapshot.disqualified_by),
        stage=lead.stage,
        mql_cycle=lead.mql_cycle,
        owner=owner,
        attributes=lead.attributes,
        identities=sorted(identities),
        source=lead.source,
        rulebook_version=lead.rulebook_version,
        created_at=lead.created_at,
        updated_at=lead.updated_at,
        last_activity_at=lead.last_activity_at,
    )


def _line(entry: LedgerEntry) -> LedgerLine:
    return LedgerLine(
        rule=entry.rule,
        kind=entry.kind,
        points=entry.points,
        event_id=entry.event_id,
        event_time=entry.event_time,
        rulebook_version=entry.rulebook_version,
    )


def build_router(cache: RulebookCache) -> APIRouter:
    router = APIRouter(
        tags=["leads"], dependencies=[RequireOps], responses=error_responses(401, 403)
    )

    async def snapshot(session: AsyncSession, lead: Lead, now: datetime) -> engine.Snapshot:
        rulebook = await cache.get(session, lead.rulebook_version)
        return engine.snapshot(rulebook, state_of(lead), now)

    async def found(session: AsyncSession, lead_id: str) -> Lead:
        lead = await store.resolve_merged(session, lead_id)
        if lead is None:
            raise ApiError(404, "not_found", f"no lead with id {lead_id!r}")
        return lead

    @router.get(
        "/leads",
        summary="Find leads by email, stage, grade, score or recent change; paged",
        responses=error_responses(422),
    )
    async def list_leads(
        session: SessionDep,
        clock: ClockDep,
        email: EmailStr | None = None,
        stage: Stage = None,
        grade: Annotated[str | None, Query(pattern=r"^[A-D][1-4]?$")] = None,
        min_score: Score = None,
        max_score: Score = None,
        updated_since: Since = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> LeadPage:
        where = store.LeadFilter(
            email=email,
            stage=stage,
            grade=grade,
            min_score=min_score,
            max_score=max_score,
            updated_since=updated_since,
        )
        leads = await store.find_leads(session, where, offset=offset, limit=limit + 1)
        page = leads[:limit]
        identities = await store.identities_of(session, [lead.id for lead in page])
        now = clock.now()
        items = [
            lead_view(LeadView, lead, identities[lead.id], await snapshot(session, lead, now))
            for lead in page
        ]
        more = len(leads) > limit
        return LeadPage(items=items, next_offset=offset + limit if more else None)

    @router.get(
        "/leads/{lead_id}",
        summary="One lead: fit, engagement decayed to now, grade, stage, owner",
        response_model_exclude_unset=True,  # `merged_from` only when it was merged
        responses=error_responses(404, 422),
    )
    async def get_lead(lead_id: LeadId, session: SessionDep, clock: ClockDep) -> LeadDetail:
        lead = await found(session, lead_id)
        identities = await store.identities_of(session, [lead.id])
        view = lead_view(
            LeadDetail, lead, identities[lead.id], await snapshot(session, lead, clock.now())
        )
        if lead.id != lead_id:
            view.merged_from = lead_id
        return view

    @router.get(
        "/leads/{lead_id}/ledger",
        summary="Every contribution to a lead's score",
        responses=error_responses(404, 422),
    )
    async def get_ledger(lead_id: LeadId, session: SessionDep) -> Ledger:
        lead = await found(session, lead_id)
        entries = await store.ledger_of(session, lead.id)
        return Ledger(lead_id=lead.id, entries=[_line(entry) for entry in entries])

    return router
