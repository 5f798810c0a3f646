"""The reps API: the roster as stored (ops reads, admin changes), away periods, and every
version of a rep. A change is validated like the routing file (unknown pool, capacity 0,
overlapping hours, unknown time zone: a 422 naming the field) and changes nothing then."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service import roster
from handoff_service.assignments import open_leads
from handoff_service.models import AwayPeriod, RepHistory, RepRecord
from handoff_service.router import RosterState, unavailable
from handoff_service.routing_file import Away, RoutingFile
from services.api_keys import digest, presented_key
from services.deps import ClockDep, ContextDep, SessionDep
from services.errors import ApiError, error_responses, field_errors
from services.models import ApiKey
from services.params import printable
from services.responses import Timestamp
from services.security import RequireAdmin, RequireOps

RepId = Annotated[
    str,
    Path(min_length=1, max_length=64, description="A rep's id, e.g. rep-ada"),
    AfterValidator(printable),
]
AwayId = Annotated[int, Path(ge=1, le=2**63 - 1, description="An away period's id")]

Hours = dict[str, str | list[str]]
HOURS_HELP = (
    'Working hours per weekday in the rep\'s time zone: {"mon-fri": "09:00-17:00"}, several '
    'ranges a day allowed ("09:00-12:00, 13:00-17:00"), a day left out is a day off; null: '
    "any time"
)


# --- requests -------------------------------------------------------------------------------


class NewRep(BaseModel):
    """A rep, as the routing file writes one (without away periods: `POST …/away`)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Unique, e.g. rep-ada")
    name: str
    email: str = Field(description="Unique among the reps")
    team: str | None = None
    pools: list[str] | str = Field(description="The pools they take leads from")
    weight: float = Field(default=1.0, description="Their share in a weighted pool")
    capacity: int | None = Field(
        default=None, description="The most open, unanswered leads they hold; null: no limit"
    )
    time_zone: str = Field(default="UTC", description="IANA name, e.g. Europe/Berlin")
    hours: Hours | None = Field(default=None, description=HOURS_HELP)
    active: bool = True


class RepChange(BaseModel):
    """The fields to change; those left out keep their value (null clears team, capacity
    and hours)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    email: str | None = None
    team: str | None = None
    pools: list[str] | str | None = None
    weight: float | None = None
    capacity: int | None = None
    time_zone: str | None = None
    hours: Hours | None = Field(default=None, description=HOURS_HELP)
    active: bool | None = None


class NewAway(BaseModel):
    """Out of office from `from` until `until` (open-ended without it). A date is a whole
    day in the rep's time zone, both ends included; a time without an offset is theirs."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", description="2026-12-24, or 2026-12-24T09:00[+01:00]")
    until: str | None = None
    note: str | None = None


# --- responses ------------------------------------------------------------------------------


class AwayView(BaseModel):
    id: int = Field(description="To end it early: DELETE /reps/{rep_id}/away/{id}")
    from_: str = Field(serialization_alias="from")
    until: str | None
    note: str | None
    origin: str = Field(description="`file` (the routing file) or `api`")
    created_at: Timestamp
    created_by: str

    @classmethod
    def of(cls, row: AwayPeriod) -> AwayView:
        return cls(
            id=row.id,
            from_=row.starts,
            until=row.until,
            note=row.note,
            origin=row.origin,
            created_at=row.created_at,
            created_by=row.created_by,
        )


Unavailable = Literal["inactive", "away", "outside_hours", "full"]


class RepView(BaseModel):
    id: str
    name: str
    email: str
    team: str | None
    pools: list[str]
    weight: float
    capacity: int | None
    time_zone: str
    hours: dict[str, list[str]] | None
    active: bool
    away: list[AwayView]
    open_leads: int = Field(description="Leads they hold unanswered")
    unavailable: Unavailable | None = Field(
        description="Why they cannot take a lead now; null when they can"
    )
    version: int = Field(description="Grows with every change: GET /reps/{rep_id}/history")
    origin: str = Field(description="`file` (seeded from the routing file) or `api`")
    updated_at: Timestamp
    updated_by: str


class RepList(BaseModel):
    items: list[RepView]


class AwaySnapshot(BaseModel):
    id: int | None = None
    from_: str = Field(alias="from", serialization_alias="from")
    until: str | None = None
    note: str | None = None


class RepSnapshot(BaseModel):
    id: str
    name: str
    email: str
    team: str | None
    pools: list[str]
    weight: float
    capacity: int | None
    time_zone: str
    hours: dict[str, list[str]] | None
    active: bool
    away: list[AwaySnapshot]


class FieldChange(BaseModel):
    from_: Any = Field(alias="from", serialization_alias="from")
    to: Any


class RepVersion(BaseModel):
    version: int
    change: str = Field(
        description="created, updated, away_added, away_removed; file_created, file_updated, "
        "file_removed, file_pools_removed when the routing file made it"
    )
    changes: dict[str, FieldChange] = Field(description="Field -> its value before and after")
    record: RepSnapshot = Field(description="The rep after the change")
    actor: str = Field(description="Who: an API key's name, or file:<path>")
    at: Timestamp


class RepHistoryView(BaseModel):
    rep_id: str
    versions: list[RepVersion] = Field(description="Oldest first")


# --- helpers --------------------------------------------------------------------------------


async def _actor(request: Request, session: AsyncSession) -> str:
    """The calling API key's name (the role check has already accepted the key)."""
    key = presented_key(request) or ""
    name = await session.scalar(select(ApiKey.name).where(ApiKey.key_hash == digest(key)))
    return name or "api"


async def _row(session: AsyncSession, rep_id: str) -> RepRecord:
    row = await session.get(RepRecord, rep_id)
    if row is None:
        raise ApiError(404, "not_found", f"no rep {rep_id!r}")
    return row


def _invalid(exc: roster.RosterChangeError) -> ApiError:
    return ApiError(422, "invalid_request", str(exc), fields=exc.fields)


async def _views(session: AsyncSession, rows: list[RepRecord], now: datetime) -> list[RepView]:
    away = await roster.away_by_rep(session)
    state = RosterState(open_leads=await open_leads(session))
    views = []
    for row in rows:
        periods = away.get(row.id, [])
        rep = roster.rep_of(row, periods)
        views.append(
            RepView(
                id=row.id,
                **roster.record_values(row),
                away=[AwayView.of(period) for period in periods],
                open_leads=state.open(row.id),
                unavailable=unavailable(rep, state, now),
                version=row.version,
                origin=row.origin,
                updated_at=row.updated_at,
                updated_by=row.updated_by,
            )
        )
    return views


def build_router(routing: RoutingFile) -> APIRouter:
    """The reps API over the routing file's pools (reps come from the database)."""
    router = APIRouter(tags=["reps"], responses=error_responses(401, 403))

    @router.get("/reps", dependencies=[RequireOps], summary="Every rep, as routing sees them now")
    async def list_reps(session: SessionDep, clock: ClockDep) -> RepList:
        rows = await roster.stored_rows(session)
        return RepList(items=await _views(session, rows, clock.now()))

    @router.get(
        "/reps/{rep_id}",
        dependencies=[RequireOps],
        summary="One rep",
        responses=error_responses(404, 422),
    )
    async def get_rep(rep_id: RepId, session: SessionDep, clock: ClockDep) -> RepView:
        (view,) = await _views(session, [await _row(session, rep_id)], clock.now())
        return view

    @router.post(
        "/reps",
        dependencies=[RequireAdmin],
        status_code=201,
        summary="Add a rep (validated like the routing file)",
        responses=error_responses(409, 422),
    )
    async def create_rep(body: NewRep, request: Request, context: ContextDep) -> RepView:
        try:
            rep = roster.validated_rep({**body.model_dump(), "away": ()})
        except roster.RosterChangeError as exc:
            raise _invalid(exc) from exc
        async with context.sessions() as session, session.begin():
            if await session.get(RepRecord, rep.id) is not None:
                raise ApiError(409, "rep_exists", f"rep {rep.id!r} exists; change it with PATCH")
            actor = await _actor(request, session)
            now = context.clock.now()
            try:
                row = await roster.create_rep(session, routing, rep, actor, now)
            except roster.RosterChangeError as exc:
                raise _invalid(exc) from exc
            await session.flush()
            (view,) = await _views(session, [row], now)
            return view

    @router.patch(
        "/reps/{rep_id}",
        dependencies=[RequireAdmin],
        summary="Change a rep: name, email, team, pools, weight, capacity, time zone, "
        "working hours, active",
        responses=error_responses(404, 422),
    )
    async def update_rep(
        rep_id: RepId, body: RepChange, request: Request, context: ContextDep
    ) -> RepView:
        async with context.sessions() as session, session.begin():
            row = await _row(session, rep_id)
            actor = await _actor(request, session)
            now = context.clock.now()
            changes = body.model_dump(include=body.model_fields_set)
            try:
                await roster.update_rep(session, routing, row, changes, actor, now)
            except roster.RosterChangeError as exc:
                raise _invalid(exc) from exc
            await session.flush()
            (view,) = await _views(session, [row], now)
            return view

    @router.post(
        "/reps/{rep_id}/away",
        dependencies=[RequireAdmin],
        status_code=201,
        summary="Mark a rep away (out of office) for a period",
        responses=error_responses(404, 422),
    )
    async def add_away(
        rep_id: RepId, body: NewAway, request: Request, context: ContextDep
    ) -> RepView:
        try:
            period = Away.model_validate(
                {"from": body.from_, "until": body.until, "note": body.note}
            )
        except ValidationError as exc:
            fields: list[dict[str, str]] = []  # `from`: a day or a moment, one problem
            for each in field_errors(exc.errors()):
                name = "until" if each["field"] == "(body)" else each["field"].split(".")[0]
                if name not in {field["field"] for field in fields}:
                    fields.append({**each, "field": name})
            names = ", ".join(sorted({each["field"] for each in fields}))
            raise ApiError(
                422, "invalid_request", f"invalid fields: {names}", fields=fields
            ) from exc
        async with context.sessions() as session, session.begin():
            row = await _row(session, rep_id)
            actor = await _actor(request, session)
            now = context.clock.now()
            await roster.add_away(session, row, period, actor, now)
            (view,) = await _views(session, [row], now)
            return view

    @router.delete(
        "/reps/{rep_id}/away/{away_id}",
        dependencies=[RequireAdmin],
        summary="End or cancel an away period",
        responses=error_responses(404, 422),
    )
    async def remove_away(
        rep_id: RepId, away_id: AwayId, request: Request, context: ContextDep
    ) -> RepView:
        async with context.sessions() as session, session.begin():
            row = await _row(session, rep_id)
            period = await session.get(AwayPeriod, away_id)
            if period is None or period.rep_id != rep_id:
                raise ApiError(404, "not_found", f"rep {rep_id!r} has no away period {away_id}")
            actor = await _actor(request, session)
            now = context.clock.now()
            await roster.remove_away(session, row, period, actor, now)
            (view,) = await _views(session, [row], now)
            return view

    @router.get(
        "/reps/{rep_id}/history",
        dependencies=[RequireOps],
        summary="Every version of a rep: what changed, who changed it, when",
        responses=error_responses(404, 422),
    )
    async def rep_history(rep_id: RepId, session: SessionDep) -> RepHistoryView:
        await _row(session, rep_id)
        rows = (
            await session.scalars(
                select(RepHistory).where(RepHistory.rep_id == rep_id).order_by(RepHistory.version)
            )
        ).all()
        return RepHistoryView(
            rep_id=rep_id,
            versions=[
                RepVersion(
                    version=row.version,
                    change=row.change,
                    changes={
                        name: FieldChange.model_validate(value)
                        for name, value in row.changes.items()
                    },
                    record=RepSnapshot.model_validate(row.record),
                    actor=row.actor,
                    at=row.at,
                )
                for row in rows
            ],
        )

    return router
