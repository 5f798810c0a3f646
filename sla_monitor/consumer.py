"""Starts an "accept within N hours" clock for every `lead.assigned`; cancels the clock of an
MQL that scoring revoked (`lead.mql_revoked`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import LeadAssignedData, LeadMqlData, LeadMqlRevokedData, SlaEventData
from schemas.registry import SLA_EVENT
from schemas.topics import LEAD_ASSIGNED, LEAD_MQL
from services.clock import Clock
from services.codec import PoisonRecord, decode, decode_either
from services.outbox import Emitter
from services.runner import ConsumerSpec
from sla_monitor.models import SlaClock
from sla_monitor.policy import AcceptPolicy

AssignedEvent = CloudEvent[LeadAssignedData]
MqlEvent = CloudEvent[LeadMqlData]
RevokedEvent = CloudEvent[LeadMqlRevokedData]
SlaInput = AssignedEvent | MqlEvent | RevokedEvent

CANCELLED = "cancelled"


def parse_sla_input(topic: str, value: bytes | None) -> SlaInput:
    if topic == LEAD_ASSIGNED:
        return decode(AssignedEvent, value)
    if topic == LEAD_MQL:
        return decode_either(RevokedEvent, MqlEvent, value)
    raise PoisonRecord(f"sla monitor does not consume {topic}")


class ClockStarter:
    def __init__(self, policy: AcceptPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._emitter = Emitter(service="sla", source="leadflow/sla", clock=clock)

    def spec(self) -> ConsumerSpec[SlaInput]:
        return ConsumerSpec(
            name="sla",
            group_id="sla",
            topics=(LEAD_ASSIGNED, LEAD_MQL),
            parse=parse_sla_input,
            event_id=lambda event: event.id,
            handle=self.apply_batch,
        )

    async def apply_batch(self, session: AsyncSession, events: Sequence[SlaInput]) -> None:
        for event in events:
            if isinstance(event.data, LeadAssignedData):
                await self.start_clock(session, event)
            elif isinstance(event.data, LeadMqlRevokedData):
                await self.cancel_clock(session, event.data)

    async def cancel_clock(self, session: AsyncSession, revoked: LeadMqlRevokedData) -> None:
        """The MQL no longer stands, so sales owes no follow-up: its clock is cancelled with
        the reason. A clock not started yet (the assignment is still on its way, on another
        topic) is recorded cancelled, so the assignment does not start it."""
        reason = revoked.reason.value + (f": {revoked.detail}" if revoked.detail else "")
        clock = await session.get(SlaClock, (revoked.lead_id, revoked.cycle))
        if clock is None:
            at = revoked.revoked_at
            session.add(
                SlaClock(
                    lead_id=revoked.lead_id,
                    cycle=revoked.cycle,
                    policy=self.policy.name,
                    rep_id=None,
                    started_at=at,
                    deadline=at,
                    status=CANCELLED,
                    reason=reason,
                )
            )
            return
        if clock.status != "running":
            return
        clock.status, clock.reason = CANCELLED, reason
        data = SlaEventData(
            lead_id=clock.lead_id,
            cycle=clock.cycle,
            kind="cancelled",
            policy=clock.policy,
            rep_id=clock.rep_id,
            started_at=clock.started_at,
            deadline=clock.deadline,
            at=self._clock.now(),
            reason=reason,
        )
        self._emitter.emit(
            session,
            SLA_EVENT,
            event_id=f"sla:{clock.lead_id}:{clock.cycle}:cancelled",
            type_="sla.cancelled",
            time=data.at,
            key=clock.lead_id,
            data=data,
        )

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
