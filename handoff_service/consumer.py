"""Routes each `lead.mql` to a rep and emits `lead.assigned` through the outbox."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.models import Assignment, RoundRobinCursor
from handoff_service.routing import Roster, round_robin
from schemas.envelope import CloudEvent
from schemas.events import LeadAssignedData, LeadMqlData
from schemas.registry import ASSIGNED
from schemas.topics import LEAD_MQL
from services.clock import Clock
from services.codec import PoisonRecord, decode
from services.outbox import Emitter
from services.runner import ConsumerSpec

STRATEGY = "round_robin"

MqlEvent = CloudEvent[LeadMqlData]


def parse_mql(topic: str, value: bytes | None) -> MqlEvent:
    if topic != LEAD_MQL:
        raise PoisonRecord(f"handoff does not consume {topic}")
    return decode(MqlEvent, value)


class MqlRouter:
    def __init__(self, roster: Roster, clock: Clock) -> None:
        self.roster = roster
        self._clock = clock
        self._emitter = Emitter(service="handoff", source="leadflow/handoff", clock=clock)

    def spec(self) -> ConsumerSpec[MqlEvent]:
        return ConsumerSpec(
            name="handoff",
            group_id="handoff",
            topics=(LEAD_MQL,),
            parse=parse_mql,
            event_id=lambda event: event.id,
            handle=self.apply_batch,
        )

    async def apply_batch(self, session: AsyncSession, events: Sequence[MqlEvent]) -> None:
        for event in events:
            await self.assign(session, event)

    async def assign(self, session: AsyncSession, event: MqlEvent) -> None:
        mql = event.data
        if await session.get(Assignment, (mql.lead_id, mql.cycle)) is not None:
            return  # this cycle was already handed off
        cursor = await self._cursor(session)
        rep, cursor.cursor = round_robin(self.roster.active_reps, cursor.cursor)
        assigned_at = self._clock.now()
        data = LeadAssignedData(
            lead_id=mql.lead_id,
            cycle=mql.cycle,
            rep_id=rep.id,
            rep_name=rep.name,
            rep_email=str(rep.email),
            routing_rule=f"pool:{self.roster.pool}",
            strategy=STRATEGY,
            assigned_at=assigned_at,
            mql_event_id=event.id,
        )
        session.add(Assignment(**data.model_dump(), status="assigned"))
        self._emitter.emit(
            session,
            ASSIGNED,
            event_id=f"assigned:{mql.lead_id}:{mql.cycle}",
            time=assigned_at,
            key=mql.lead_id,
            data=data,
        )

    async def _cursor(self, session: AsyncSession) -> RoundRobinCursor:
        query = select(RoundRobinCursor).where(RoundRobinCursor.pool == self.roster.pool)
        cursor = await session.scalar(query.with_for_update())
        if cursor is None:
            cursor = RoundRobinCursor(pool=self.roster.pool, cursor=0)
            session.add(cursor)
        return cursor
