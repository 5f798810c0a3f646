"""Starting and moving clocks in the database, each transition with its one `sla.events`
record, in the caller's transaction. Used by the consumer (starts, answers, cancellations)
and the scheduler (warnings, breaches); `sla_monitor.lifecycle` decides every move."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import SlaEventData
from schemas.registry import SLA_EVENT
from services.clock import Clock
from services.outbox import Emitter
from sla_monitor.calendar import business_time_between
from sla_monitor.lifecycle import (
    OPEN_STATES,
    ClockName,
    ClockState,
    Happening,
    Kind,
    allows,
    transition,
)
from sla_monitor.models import SlaClock
from sla_monitor.policy import SlaPolicy, Terms

FINAL_STATES = frozenset({ClockState.MET, ClockState.MET_LATE, ClockState.CANCELLED})


@dataclass(frozen=True)
class Start:
    """Who and what a new clock times."""

    lead_id: str
    cycle: int
    attempt: int
    started_at: datetime
    rep_id: str | None
    team: str | None
    pool: str | None
    cause_event_id: str | None


def event_id(row: SlaClock, kind: Kind) -> str:
    """Stable across redelivery and restarts: one id per clock and transition."""
    return f"sla:{row.lead_id}:{row.cycle}:{row.clock}:{row.attempt}:{kind.value}"


def next_due(row: SlaClock) -> datetime | None:
    """When the scheduler must look at a clock next: its warning, then its deadline."""
    if row.status != ClockState.RUNNING:
        return None
    if row.warn_at is not None and row.warned_at is None and row.warn_at < row.deadline:
        return row.warn_at
    return row.deadline


class ClockBook:
    """The clocks of the SLA monitor and the events their transitions emit."""

    def __init__(self, policy: SlaPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._emitter = Emitter(service="sla", source="leadflow/sla", clock=clock)

    async def open_clocks(
        self,
        session: AsyncSession,
        lead_id: str,
        cycle: int,
        names: Sequence[ClockName] = tuple(ClockName),
    ) -> list[SlaClock]:
        """The cycle's clocks still waiting for an answer, locked for this transaction (the
        scheduler skips them meanwhile, and this waits for the scheduler's)."""
        query = (
            select(SlaClock)
            .where(
                SlaClock.lead_id == lead_id,
                SlaClock.cycle == cycle,
                SlaClock.clock.in_([name.value for name in names]),
                SlaClock.status.in_([state.value for state in OPEN_STATES]),
            )
            .order_by(SlaClock.clock, SlaClock.attempt)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return list((await session.scalars(query)).all())

    async def latest_attempt(
        self, session: AsyncSession, lead_id: str, cycle: int, name: ClockName
    ) -> int:
        query = select(SlaClock.attempt).where(
            SlaClock.lead_id == lead_id, SlaClock.cycle == cycle, SlaClock.clock == name.value
        )
        return max((await session.scalars(query)).all(), default=0)

    async def start(self, session: AsyncSession, terms: Terms, start: Start) -> SlaClock | None:
        """Start `terms.clock` for `start`, unless that clock and attempt exists already."""
        key = (start.lead_id, start.cycle, terms.clock.value, start.attempt)
        if await session.get(SlaClock, key) is not None:
            return None
        deadline = terms.deadline(start.started_at)
        target = terms.target
        row = SlaClock(
            lead_id=start.lead_id,
            cycle=start.cycle,
            clock=terms.clock.value,
            attempt=start.attempt,
            policy=target.name,
            target=str(target.within),
            calendar=terms.calendar.name,
            rep_id=start.rep_id,
            team=start.team,
            pool=start.pool,
            on_breach=target.on_breach,
            notify=str(target.notify) if target.notify else None,
            started_at=start.started_at,
            warn_at=terms.warn_at(start.started_at, deadline),
            deadline=deadline,
            status=ClockState.RUNNING.value,
        )
        row.due_at = next_due(row)
        session.add(row)
        self._emit(
            session, row, Kind.CLOCK_STARTED, at=start.started_at, cause=start.cause_event_id
        )
        return row

    def move(
        self,
        session: AsyncSession,
        row: SlaClock,
        happening: Happening,
        *,
        at: datetime,
        reason: str | None = None,
        action: str | None = None,
        cause: str | None = None,
    ) -> bool:
        """Apply `happening` at `at` (event time) and emit its record; False (and nothing
        changes) when it does not apply to the clock's state."""
        state = ClockState(row.status)
        if not allows(state, happening):
            return False
        step = transition(state, happening, at=at, deadline=row.deadline)
        row.status = step.state.value
        if happening is Happening.WARNING_DUE:
            row.warned_at = at
        elif happening is Happening.DEADLINE_PASSED:
            row.breached_at = at
        if step.state in FINAL_STATES:
            row.ended_at = at
            row.reason = reason
            row.action = action
            business, wall = self.durations(row, at)
            row.business_seconds, row.wall_seconds = business, wall
        row.due_at = next_due(row)
        self._emit(session, row, step.kind, at=at, cause=cause)
        return True

    def durations(self, row: SlaClock, until: datetime) -> tuple[float | None, float]:
        """Business time (on the clock's calendar; None if the SLA file no longer has it)
        and wall time from the clock's start to `until`."""
        wall = max(until - row.started_at, timedelta()).total_seconds()
        calendar = self.policy.calendars.get(row.calendar)
        if calendar is None:
            return None, wall
        return business_time_between(calendar, row.started_at, until).total_seconds(), wall

    def _emit(
        self, session: AsyncSession, row: SlaClock, kind: Kind, *, at: datetime, cause: str | None
    ) -> None:
        business, wall = self.durations(row, at)
        data = SlaEventData(
            lead_id=row.lead_id,
            cycle=row.cycle,
            kind=kind.value,
            policy=row.policy,
            rep_id=row.rep_id,
            started_at=row.started_at,
            deadline=row.deadline,
            at=at,
            reason=row.reason,
            clock=ClockName(row.clock).value,
            attempt=row.attempt,
            state=ClockState(row.status).value,
            target=row.target,
            calendar=row.calendar,
            warn_at=row.warn_at,
            business_seconds=business,
            wall_seconds=wall,
            on_breach=row.on_breach,
            notify=row.notify,
            pool=row.pool,
            team=row.team,
            action=row.action,
            cause_event_id=cause,
            detected_at=self._clock.now(),
        )
        self._emitter.emit(
            session,
            SLA_EVENT,
            event_id=event_id(row, kind),
            type_=f"sla.{kind.value}",
            time=at,
            key=row.lead_id,
            data=data,
        )
