"""Ops API: a lead's SLA clocks, and the clocks across leads (what is open, what is due)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError
from sqlalchemy import Select, case, select

from services.deps import ClockDep, SessionDep
from services.errors import ApiError, error_responses
from services.params import MAX_OFFSET, MAX_PAGE, Instant, LeadId, printable
from services.responses import Timestamp
from services.security import RequireOps
from sla_monitor.calendar import business_time_between
from sla_monitor.lifecycle import OPEN_STATES, ClockName, ClockState
from sla_monitor.models import SlaClock
from sla_monitor.policy import SlaPolicy

OnBreach = Literal["reassign", "queue", "notify", "none"]


class PolicyView(BaseModel):
    """What the clock runs under, as recorded when it started."""

    name: str = Field(description="The target's name in the SLA file")
    target: str = Field(description="The time allowed, as written (`4h`, `2d`)")
    calendar: str = Field(description="The business calendar it counts on (`always`: wall time)")
    timezone: str | None = Field(description="The calendar's time zone, while the file has it")
    on_breach: OnBreach
    notify: str | None = Field(description="Who is told, when the file names someone")


class ClockView(BaseModel):
    cycle: int = Field(description="The qualification cycle the MQL was for")
    clock: ClockName
    attempt: int = Field(
        description="The assignment attempt it times (accept, first_touch), or the acceptance "
        "(qualify)"
    )
    policy: PolicyView
    rep_id: str | None
    team: str | None
    pool: str | None
    started_at: Timestamp
    warn_at: Timestamp | None = Field(description="When its warning is due (none without one)")
    deadline: Timestamp
    status: ClockState
    reason: str | None = Field(
        description="Why it was cancelled, or the reason code of the answer that ended it"
    )
    action: str | None = Field(description="The rep's action that ended it (`accepted`, …)")
    warned_at: Timestamp | None
    breached_at: Timestamp | None
    ended_at: Timestamp | None
    overdue: bool = Field(
        description="Still unanswered (running or breached) and past its deadline"
    )
    business_seconds: float | None = Field(
        description="Business time from its start to its end, or to now while unanswered"
    )
    wall_seconds: float = Field(description="Wall-clock time, likewise")


class LeadClocks(BaseModel):
    lead_id: str
    clocks: list[ClockView] = Field(
        description="Newest cycle first; within it the latest start first, accept before "
        "first_touch"
    )


class ListedClock(ClockView):
    lead_id: str


class ClockPage(BaseModel):
    items: list[ListedClock] = Field(description="Earliest deadline first")
    next_offset: int | None = Field(description="The offset of the next page; null on the last")


OPEN = "open"
STATES = (OPEN, *(state.value for state in ClockState))


def _state(value: str) -> str:
    if value not in STATES:
        raise PydanticCustomError(
            "clock_state",
            "Input should be one of {states}",
            {"states": ", ".join(f"'{state}'" for state in STATES)},
        )
    return value


StateFilter = Annotated[
    str,
    Query(
        description="A clock state, or `open`: running or breached (still unanswered)",
        json_schema_extra={"enum": list(STATES)},
    ),
    AfterValidator(_state),
]
RepFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=100, description="Only this rep's clocks"),
    AfterValidator(printable),
]
TeamFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=100, description="Only clocks of reps of this team"),
    AfterValidator(printable),
]
DueBefore = Annotated[
    Instant | None, Query(description="Only clocks whose deadline is before this (RFC 3339)")
]
ClockFilter = Annotated[ClockName | None, Query(description="Only this clock")]
ClockLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most clocks in one page")]
ClockOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Clocks to skip")]

_CLOCK_ORDER = case(
    {name.value: position for position, name in enumerate(ClockName)}, value=SlaClock.clock
)


def build_router(policy: SlaPolicy) -> APIRouter:
    router = APIRouter(tags=["sla"], dependencies=[RequireOps], responses=error_responses(401, 403))

    def view(row: SlaClock, now: datetime) -> ClockView:
        return ClockView(**_fields(policy, row, now))

    @router.get(
        "/sla/leads/{lead_id}",
        summary="A lead's SLA clocks: policy, deadline, state",
        responses=error_responses(404, 422),
    )
    async def lead_clocks(lead_id: LeadId, session: SessionDep, clock: ClockDep) -> LeadClocks:
        query = (
            select(SlaClock)
            .where(SlaClock.lead_id == lead_id)
            .order_by(
                SlaClock.cycle.desc(),
                SlaClock.started_at.desc(),
                _CLOCK_ORDER,
                SlaClock.attempt.desc(),
            )
        )
        rows = (await session.scalars(query)).all()
        if not rows:
            raise ApiError(404, "not_found", f"no SLA clock for lead {lead_id!r}")
        now = clock.now()
        return LeadClocks(lead_id=lead_id, clocks=[view(row, now) for row in rows])

    @router.get(
        "/sla/clocks",
        summary="Clocks across leads: the open ones by default, earliest deadline first",
        responses=error_responses(422),
    )
    async def list_clocks(
        session: SessionDep,
        time: ClockDep,
        state: StateFilter = OPEN,
        due_before: DueBefore = None,
        rep: RepFilter = None,
        team: TeamFilter = None,
        clock: ClockFilter = None,
        limit: ClockLimit = 50,
        offset: ClockOffset = 0,
    ) -> ClockPage:
        query = _filtered(state, due_before, rep, team, clock)
        rows = (await session.scalars(query.offset(offset).limit(limit + 1))).all()
        now = time.now()
        items = [
            ListedClock(lead_id=row.lead_id, **_fields(policy, row, now)) for row in rows[:limit]
        ]
        more = len(rows) > limit
        return ClockPage(items=items, next_offset=offset + limit if more else None)

    return router


def _filtered(
    state: str,
    due_before: datetime | None,
    rep: str | None,
    team: str | None,
    name: ClockName | None,
) -> Select[SlaClock]:
    states = OPEN_STATES if state == OPEN else {ClockState(state)}
    query = select(SlaClock).where(SlaClock.status.in_([each.value for each in states]))
    if due_before is not None:
        query = query.where(SlaClock.deadline < due_before)
    if rep is not None:
        query = query.where(SlaClock.rep_id == rep)
    if team is not None:
        query = query.where(SlaClock.team == team)
    if name is not None:
        query = query.where(SlaClock.clock == name.value)
    return query.order_by(
        SlaClock.deadline, SlaClock.lead_id, SlaClock.cycle, _CLOCK_ORDER, SlaClock.attempt
    )


def _fields(policy: SlaPolicy, row: SlaClock, now: datetime) -> dict[str, object]:
    status = ClockState(row.status)
    unanswered = status in OPEN_STATES
    calendar = policy.calendars.get(row.calendar)
    if unanswered:
        until = max(now, row.started_at)
        wall = (until - row.started_at).total_seconds()
        business = (
            None
            if calendar is None
            else business_time_between(calendar, row.started_at, until).total_seconds()
        )
    else:
        wall = (
            row.wall_seconds
            or max((row.ended_at or row.started_at) - row.started_at, timedelta()).total_seconds()
        )
        business = row.business_seconds
    return {
        "cycle": row.cycle,
        "clock": ClockName(row.clock),
        "attempt": row.attempt,
        "policy": PolicyView(
            name=row.policy,
            target=row.target,
            calendar=row.calendar,
            timezone=calendar.timezone if calendar is not None else None,
            on_breach=_on_breach(row.on_breach),
            notify=row.notify,
        ),
        "rep_id": row.rep_id,
        "team": row.team,
        "pool": row.pool,
        "started_at": row.started_at,
        "warn_at": row.warn_at,
        "deadline": row.deadline,
        "status": status,
        "reason": row.reason,
        "action": row.action,
        "warned_at": row.warned_at,
        "breached_at": row.breached_at,
        "ended_at": row.ended_at,
        "overdue": unanswered and now > row.deadline,
        "business_seconds": business,
        "wall_seconds": wall,
    }


_ON_BREACH: dict[str, OnBreach] = {
    "reassign": "reassign",
    "queue": "queue",
    "notify": "notify",
    "none": "none",
}


def _on_breach(value: str) -> OnBreach:
    return _ON_BREACH.get(value, "none")
