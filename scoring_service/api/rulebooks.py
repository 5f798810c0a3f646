"""The rulebooks API: stored versions (ops key to read, admin to store and activate), the
simulation of a candidate against the active one, and the re-apply jobs activation starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, Field

from scoring_service import rulebooks, store
from scoring_service.jobs import Reapplier
from scoring_service.models import ScoringJob, StoredRulebook
from scoring_service.rulebooks import RulebookCache, RulebookConflict
from scoring_service.rules import RulebookError, parse_rulebook_text
from scoring_service.simulation import LeadHistory, Tally, compare
from services.context import AppContext
from services.deps import ContextDep, SessionDep
from services.errors import ApiError, error_responses
from services.params import Instant, JobId, RulebookVersion
from services.responses import Timestamp
from services.security import RequireAdmin, RequireOps

MAX_RULEBOOK_BYTES = 256 * 1024
YamlBody = Annotated[
    str, Body(media_type="application/yaml", description="The rulebook as YAML text")
]


class RulebookVersionView(BaseModel):
    version: str
    active: bool
    fingerprint: str = Field(description="Of the parsed rules: equal rules, equal fingerprint")
    created_at: Timestamp
    activated_at: Timestamp | None

    @classmethod
    def of(cls, row: StoredRulebook) -> RulebookVersionView:
        return cls(
            version=row.version,
            active=row.active,
            fingerprint=row.fingerprint,
            created_at=row.created_at,
            activated_at=row.activated_at,
        )


class RulebookList(BaseModel):
    items: list[RulebookVersionView] = Field(description="Oldest first")


class RulebookDetail(RulebookVersionView):
    body: str = Field(description="The rulebook's YAML, as stored")


JobKind = Literal["reapply"]
JobStatus = Literal["running", "done", "failed"]


class JobView(BaseModel):
    """A re-apply job: activating a version re-scores every lead from its log."""

    job_id: str
    kind: JobKind
    rulebook_version: str
    status: JobStatus
    total: int = Field(description="Leads to re-score")
    done: int = Field(description="Leads re-scored so far")
    progress: float = Field(description="done / total, 0 to 1")
    result: dict[str, int] = Field(description="When done: `rescored` and `new_mqls`")
    error: str | None
    created_at: Timestamp
    finished_at: Timestamp | None

    @classmethod
    def of(cls, job: ScoringJob) -> JobView:
        return cls(
            job_id=job.id,
            kind=cast(JobKind, job.kind),
            rulebook_version=job.rulebook_version,
            status=cast(JobStatus, job.status),
            total=job.total,
            done=job.done,
            progress=round(job.done / job.total, 4) if job.total else 1.0,
            result=job.result,
            error=job.error,
            created_at=job.created_at,
            finished_at=job.finished_at,
        )


class TallyView(BaseModel):
    """The MQLs a rulebook version produces in the window."""

    version: str
    mqls: int
    by_grade: dict[str, int]
    by_source: dict[str, int]
    by_reason: dict[str, int] = Field(description="`threshold` or the trigger's name")

    @classmethod
    def of(cls, version: str, tally: Tally) -> TallyView:
        return cls(
            version=version,
            mqls=tally.mqls,
            by_grade=dict(sorted(tally.by_grade.items())),
            by_source=dict(sorted(tally.by_source.items())),
            by_reason=dict(sorted(tally.by_reason.items())),
        )


class Simulation(BaseModel):
    """The MQLs the candidate would have produced in [from, to), next to the active one's."""

    start: Timestamp = Field(alias="from")
    end: Timestamp = Field(alias="to")
    candidate: TallyView
    active: TallyView
    difference: int = Field(description="candidate MQLs minus the active rulebook's")


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


def build_router(cache: RulebookCache, reapplier: Reapplier) -> APIRouter:
    router = APIRouter(tags=["rulebooks"], responses=error_responses(401, 403))

    @router.get(
        "/rulebooks",
        dependencies=[RequireOps],
        summary="Stored rulebook versions; which one is active",
    )
    async def list_rulebooks(session: SessionDep) -> RulebookList:
        rows = await store.stored_rulebooks(session)
        return RulebookList(items=[RulebookVersionView.of(row) for row in rows])

    @router.get(
        "/rulebooks/{version}",
        dependencies=[RequireOps],
        summary="One rulebook version, with its YAML",
        responses=error_responses(404, 422),
    )
    async def get_rulebook(version: RulebookVersion, session: SessionDep) -> RulebookDetail:
        row = await store.stored_rulebook(session, version)
        if row is None:
            raise ApiError(404, "not_found", f"no rulebook version {version!r}")
        return RulebookDetail(**RulebookVersionView.of(row).model_dump(), body=row.body)

    @router.post(
        "/rulebooks",
        dependencies=[RequireAdmin],
        status_code=201,
        summary="Upload a rulebook version (validated; not yet active)",
        responses=error_responses(400, 409, 413, 422),
    )
    async def upload_rulebook(
        request: Request, context: ContextDep, _body: YamlBody = ""
    ) -> RulebookVersionView:
        text = await _yaml_text(request)
        async with context.sessions() as session, session.begin():
            try:
                row = await rulebooks.store(session, text, origin="rulebook", clock=context.clock)
            except RulebookConflict as exc:
                raise ApiError(409, "version_exists", str(exc)) from exc
            except RulebookError as exc:
                raise _invalid_rulebook(exc) from exc
            return RulebookVersionView.of(row)

    @router.post(
        "/rulebooks/{version}/activate",
        dependencies=[RequireAdmin],
        status_code=202,
        summary="Switch to a version and re-score every lead from the log (a job)",
        responses=error_responses(404, 422),
    )
    async def activate_rulebook(version: RulebookVersion) -> JobView:
        try:
            job = await reapplier.start(version)
        except LookupError as exc:
            raise ApiError(404, "not_found", f"no rulebook version {version!r}") from exc
        return JobView.of(job)

    @router.post(
        "/rulebooks/simulate",
        dependencies=[RequireOps],
        summary="MQLs a candidate rulebook would have produced, against the active",
        responses=error_responses(400, 413, 422),
    )
    async def simulate(
        request: Request,
        context: ContextDep,
        start: Annotated[Instant, Query(alias="from")],
        end: Annotated[Instant, Query(alias="to")],
        _body: YamlBody = "",
    ) -> Simulation:
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
        return Simulation.model_validate(
            {
                "from": start,
                "to": end,
                "candidate": TallyView.of(candidate.version, proposed),
                "active": TallyView.of(active.version, current),
                "difference": proposed.mqls - current.mqls,
            }
        )

    @router.get(
        "/jobs/{job_id}",
        dependencies=[RequireOps],
        summary="Progress of a re-apply job",
        responses=error_responses(404, 422),
    )
    async def get_job(job_id: JobId, session: SessionDep) -> JobView:
        job = await store.job(session, job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return JobView.of(job)

    return router


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
