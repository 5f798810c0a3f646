"""Scoring's HTTP API: leads and their ledgers (ops), rulebook versions (admin to change),
simulation of a candidate rulebook, and re-apply jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import EmailStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scoring_service import engine, rulebooks, store
from scoring_service.consumer import state_of
from scoring_service.jobs import Reapplier, job_view
from scoring_service.models import Lead, LeadIdentity, LedgerEntry, ScoringJob, StoredRulebook
from scoring_service.rulebooks import RulebookCache, RulebookConflict
from scoring_service.rules import RulebookError, parse_rulebook_text
from scoring_service.simulation import LeadHistory, Tally, compare
from services.auth import AdminDep, OpsDep
from services.context import AppContext
from services.deps import ClockDep, ContextDep, SessionDep
from services.errors import ApiError
from services.params import (
    Instant,
    JobId,
    LeadId,
    Limit,
    Offset,
    RulebookVersion,
    Score,
    Since,
    Stage,
)

MAX_RULEBOOK_BYTES = 256 * 1024
YamlBody = Annotated[
    str, Body(media_type="application/yaml", description="The rulebook as YAML text")
]


async def _yaml_text(request: Request) -> str:
    raw = await request.body()
    if len(raw) > MAX_RULEBOOK_BYTES:
        raise ApiError(413, "payload_too_large", f"rulebook over {MAX_RULEBOOK_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_body", "rulebook must be UTF-8 text") from exc


def _invalid_rulebook(exc: RulebookError) -> ApiError:
    return ApiError(422, "invalid_rulebook", str(exc))


def lead_view(lead: Lead, identities: list[str], snapshot: engine.Snapshot) -> dict[str, Any]:
    owner = {"rep_id": lead.owner_rep_id, "name": lead.owner_name} if lead.owner_rep_id else None
    return {
        "lead_id": lead.id,
        "email": lead.email,
        "fit": snapshot.fit,
        "engagement": snapshot.engagement,
        "score": snapshot.total,
        "grade": snapshot.grade,
        "disqualified_by": list(snapshot.disqualified_by),
        "stage": lead.stage,
        "mql_cycle": lead.mql_cycle,
        "owner": owner,
        "attributes": lead.attributes,
        "identities": sorted(identities),
        "source": lead.source,
        "rulebook_version": lead.rulebook_version,
        "created_at": lead.created_at.isoformat(),
        "updated_at": lead.updated_at.isoformat(),
        "last_activity_at": lead.last_activity_at.isoformat() if lead.last_activity_at else None,
    }


def build_router(cache: RulebookCache, reapplier: Reapplier) -> APIRouter:
    router = APIRouter()

    async def view(session: AsyncSession, lead: Lead, now: datetime) -> dict[str, Any]:
        keys = (
            await session.scalars(select(LeadIdentity.key).where(LeadIdentity.lead_id == lead.id))
        ).all()
        rulebook = await cache.get(session, lead.rulebook_version)
        snapshot = engine.snapshot(rulebook, state_of(lead), now)
        return lead_view(lead, list(keys), snapshot)

    @router.get(
        "/leads",
        tags=["leads"],
        dependencies=[OpsDep],
        summary="Find leads by email, stage, grade, score or recent change; paged",
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
    ) -> dict[str, Any]:
        query = select(Lead).where(Lead.merged_into.is_(None))
        if email is not None:
            owner = select(LeadIdentity.lead_id).where(LeadIdentity.key == f"email:{email.lower()}")
            query = query.where(Lead.id.in_(owner))
        if stage is not None:
            query = query.where(Lead.stage == stage)
        if grade is not None:
            query = query.where(
                Lead.grade.startswith(grade) if len(grade) == 1 else Lead.grade == grade
            )
        if min_score is not None:
            query = query.where(Lead.score >= min_score)
        if max_score is not None:
            query = query.where(Lead.score <= max_score)
        if updated_since is not None:
            query = query.where(Lead.updated_at >= updated_since)
        query = query.order_by(Lead.updated_at.desc(), Lead.id).offset(offset).limit(limit + 1)
        leads = list((await session.scalars(query)).all())
        now = clock.now()
        items = [await view(session, lead, now) for lead in leads[:limit]]
        more = len(leads) > limit
        return {"items": items, "next_offset": offset + limit if more else None}

    @router.get(
        "/leads/{lead_id}",
        tags=["leads"],
        dependencies=[OpsDep],
        summary="One lead: fit, engagement decayed to now, grade, stage, owner",
    )
    async def get_lead(lead_id: LeadId, session: SessionDep, clock: ClockDep) -> dict[str, Any]:
        lead = await store.resolve_merged(session, lead_id)
        if lead is None:
            raise ApiError(404, "not_found", f"no lead with id {lead_id!r}")
        body = await view(session, lead, clock.now())
        if lead.id != lead_id:
            body["merged_from"] = lead_id
        return body

    @router.get(
        "/leads/{lead_id}/ledger",
        tags=["leads"],
        dependencies=[OpsDep],
        summary="Every contribution to a lead's score",
    )
    async def get_ledger(lead_id: LeadId, session: SessionDep) -> dict[str, Any]:
        lead = await store.resolve_merged(session, lead_id)
        if lead is None:
            raise ApiError(404, "not_found", f"no lead with id {lead_id!r}")
        rows = (
            await session.scalars(
                select(LedgerEntry)
                .where(LedgerEntry.lead_id == lead.id)
                .order_by(LedgerEntry.event_time, LedgerEntry.id)
            )
        ).all()
        return {
            "lead_id": lead.id,
            "entries": [
                {
                    "rule": row.rule,
                    "kind": row.kind,
                    "points": row.points,
                    "event_id": row.event_id,
                    "event_time": row.event_time.isoformat(),
                    "rulebook_version": row.rulebook_version,
                }
                for row in rows
            ],
        }

    @router.get(
        "/rulebooks",
        tags=["rulebooks"],
        dependencies=[OpsDep],
        summary="Stored rulebook versions; which one is active",
    )
    async def list_rulebooks(session: SessionDep) -> dict[str, Any]:
        rows = (
            await session.scalars(
                select(StoredRulebook).order_by(StoredRulebook.created_at, StoredRulebook.version)
            )
        ).all()
        return {"items": [_rulebook_view(row) for row in rows]}

    @router.get(
        "/rulebooks/{version}",
        tags=["rulebooks"],
        dependencies=[OpsDep],
        summary="One rulebook version, with its YAML",
    )
    async def get_rulebook(version: RulebookVersion, session: SessionDep) -> dict[str, Any]:
        row = await session.get(StoredRulebook, version)
        if row is None:
            raise ApiError(404, "not_found", f"no rulebook version {version!r}")
        return {**_rulebook_view(row), "body": row.body}

    @router.post(
        "/rulebooks",
        tags=["rulebooks"],
        dependencies=[AdminDep],
        status_code=201,
        summary="Upload a rulebook version (validated; not yet active)",
    )
    async def upload_rulebook(
        request: Request, context: ContextDep, _body: YamlBody = ""
    ) -> dict[str, Any]:
        text = await _yaml_text(request)
        async with context.sessions() as session, session.begin():
            try:
                row = await rulebooks.store(session, text, origin="rulebook", clock=context.clock)
            except RulebookConflict as exc:
                raise ApiError(409, "version_exists", str(exc)) from exc
            except RulebookError as exc:
                raise _invalid_rulebook(exc) from exc
            return _rulebook_view(row)

    @router.post(
        "/rulebooks/{version}/activate",
        tags=["rulebooks"],
        dependencies=[AdminDep],
        status_code=202,
        summary="Switch to a version and re-score every lead from the log (a job)",
    )
    async def activate_rulebook(version: RulebookVersion) -> dict[str, Any]:
        try:
            job = await reapplier.start(version)
        except LookupError as exc:
            raise ApiError(404, "not_found", f"no rulebook version {version!r}") from exc
        return job_view(job)

    @router.post(
        "/rulebooks/simulate",
        tags=["rulebooks"],
        dependencies=[OpsDep],
        summary="MQLs a candidate rulebook would have produced, against the active",
    )
    async def simulate(
        request: Request,
        context: ContextDep,
        start: Annotated[Instant, Query(alias="from")],
        end: Annotated[Instant, Query(alias="to")],
        _body: YamlBody = "",
    ) -> dict[str, Any]:
        if end <= start:
            raise ApiError(
                422,
                "invalid_request",
                "`to` must be after `from`",
                fields=[{"field": "to", "message": "must be after from"}],
            )
        try:
            candidate = parse_rulebook_text(await _yaml_text(request), origin="candidate")
        except RulebookError as exc:
            raise _invalid_rulebook(exc) from exc
        async with context.sessions() as session:
            active = await cache.active(session)
        proposed, current = Tally(), Tally()
        async for histories in _history_chunks(context, end):
            # replays are CPU work: off the event loop, which also serves the other parts
            chunk = await asyncio.to_thread(
                compare, candidate, active.rulebook, histories, start, end
            )
            proposed.add(chunk[0])
            current.add(chunk[1])
        return {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "candidate": {"version": candidate.version, **proposed.as_dict()},
            "active": {"version": active.version, **current.as_dict()},
            "difference": proposed.mqls - current.mqls,
        }

    @router.get(
        "/jobs/{job_id}",
        tags=["rulebooks"],
        dependencies=[OpsDep],
        summary="Progress of a re-apply job",
    )
    async def get_job(job_id: JobId, session: SessionDep) -> dict[str, Any]:
        job = await session.get(ScoringJob, job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return job_view(job)

    return router


def _rulebook_view(row: StoredRulebook) -> dict[str, Any]:
    return {
        "version": row.version,
        "active": row.active,
        "fingerprint": row.fingerprint,
        "created_at": row.created_at.isoformat(),
        "activated_at": row.activated_at.isoformat() if row.activated_at else None,
    }


async def _history_chunks(
    context: AppContext, end: datetime, chunk: int = 500
) -> AsyncIterator[list[LeadHistory]]:
    """Every lead's activities before `end`, a chunk of leads at a time, each chunk read in its
    own short session (SQLite's write lock is not held while the chunk is replayed)."""
    after = ""
    while True:
        async with context.sessions() as session:
            rows = await store.live_leads_after(session, after, chunk)
            if not rows:
                return
            logs = await store.activity_logs(session, [lead_id for lead_id, _ in rows], before=end)
        yield [
            LeadHistory(lead_id, source, tuple(logs.get(lead_id, ()))) for lead_id, source in rows
        ]
        after = rows[-1][0]
