"""Routes each `lead.mql` to a rep and emits `lead.assigned` through the outbox; closes the
assignment of an MQL that scoring revoked (`lead.mql_revoked`, on the same topic)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.models import Assignment, RoundRobinCursor
from handoff_service.routing import Roster, round_robin
from schemas.envelope import CloudEvent
from schemas.events import LeadAssignedData, LeadMqlData, LeadMqlRevokedData
from schemas.registry import ASSIGNED
from schemas.topics import LEAD_MQL
from services.clock import Clock
from services.codec import PoisonRecord, decode_either
from services.outbox import Emitter
from services.runner import ConsumerSpec

STRATEGY = "round_robin"

MqlEvent = CloudEvent[LeadMqlData]
RevokedEvent = CloudEvent[LeadMqlRevokedData]
REVOKED_STATUS = "revoked"


def parse_mql(topic: str, value: bytes | None) -> MqlEvent | RevokedEvent:
    if topic != LEAD_MQL:
        raise PoisonRecord(f"handoff does not consume {topic}")
    return decode_either(MqlEvent, RevokedEvent, value)


class MqlRouter:
    def __init__(self, roster: Roster, clock: Clock) -> None:
        self.roster = roster
        self._clock = clock
        self._emitter = Emitter(service="handoff", source="leadflow/handoff", clock=clock)

    def spec(self) -> ConsumerSpec[MqlEvent | RevokedEvent]:
        return ConsumerSpec(
            name="handoff",
            group_id="handoff",
            topics=(LEAD_MQL,),
            parse=parse_mql,
            event_id=lambda event: event.id,
            handle=self.apply_batch,
        )

    async def apply_batch(
        self, session: AsyncSession, events: Sequence[MqlEvent | RevokedEvent]
    ) -> None:
        for event in events:
            if isinstance(event.data, LeadMqlData):
                await self.assign(session, event)
            else:
                await self.close_revoked(session, event.data)

    async def close_revoked(self, session: AsyncSession, revoked: LeadMqlRevokedData) -> None:
        """The MQL no longer stands: its assignment is closed with the reason. One that was
        never made (the revocation came first) is recorded closed, so it is never made."""
        assignment = await session.get(Assignment, (revoked.lead_id, revoked.cycle))
        reason = revoked.reason.value + (f": {revoked.detail}" if revoked.detail else "")
        if assignment is None:
            session.add(_closed_before_assignment(revoked, reason))
            return
        assignment.status = REVOKED_STATUS
        assignment.status_reason = reason

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


def _closed_before_assignment(revoked: LeadMqlRevokedData, reason: str) -> Assignment:
    return Assignment(
        lead_id=revoked.lead_id,
        cycle=revoked.cycle,
        rep_id="",
        rep_name="",
        rep_email="",
        routing_rule="",
        strategy="",
        status=REVOKED_STATUS,
        status_reason=reason,
        mql_event_id=revoked.mql_event_id,
        assigned_at=revoked.revoked_at,
    )
