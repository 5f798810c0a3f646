"""Starts an "accept within N hours" clock for every `lead.assigned`."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import LeadAssignedData, SlaEventData
from schemas.registry import SLA_EVENT
from schemas.topics import LEAD_ASSIGNED
from services.clock import Clock
from services.codec import PoisonRecord, decode
from services.outbox import Emitter
from services.runner import ConsumerSpec
from sla_monitor.models import SlaClock
from sla_monitor.policy import AcceptPolicy

AssignedEvent = CloudEvent[LeadAssignedData]


def parse_assigned(topic: str, value: bytes | None) -> AssignedEvent:
    if topic != LEAD_ASSIGNED:
        raise PoisonRecord(f"sla monitor does not consume {topic}")
    return decode(AssignedEvent, value)


class ClockStarter:
    def __init__(self, policy: AcceptPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._emitter = Emitter(service="sla", source="leadflow/sla", clock=clock)

    def spec(self) -> ConsumerSpec[AssignedEvent]:
        return ConsumerSpec(
            name="sla",
            group_id="sla",
            topics=(LEAD_ASSIGNED,),
            parse=parse_assigned,
            event_id=lambda event: event.id,
            handle=self.apply_batch,
        )

    async def apply_batch(self, session: AsyncSession, events: Sequence[AssignedEvent]) -> None:
        for event in events:
            await self.start_clock(session, event)

    async def start_clock(self, session: AsyncSession, event: AssignedEvent) -> None:
        assigned = event.data
        if await session.get(SlaClock, (assigned.lead_id, assigned.cycle)) is not None:
            return
        started_at = assigned.assigned_at
        deadline = self.policy.deadline(started_at)
        session.add(
            SlaClock(
                lead_id=assigned.lead_id,
                cycle=assigned.cycle,
                policy=self.policy.name,
                rep_id=assigned.rep_id,
                started_at=started_at,
                deadline=deadline,
                status="running",
            )
        )
        data = SlaEventData(
            lead_id=assigned.lead_id,
            cycle=assigned.cycle,
            kind="clock_started",
            policy=self.policy.name,
            rep_id=assigned.rep_id,
            started_at=started_at,
            deadline=deadline,
            at=self._clock.now(),
        )
        self._emitter.emit(
            session,
            SLA_EVENT,
            event_id=f"sla:{assigned.lead_id}:{assigned.cycle}:clock_started",
            type_="sla.clock_started",
            time=started_at,
            key=assigned.lead_id,
            data=data,
        )
