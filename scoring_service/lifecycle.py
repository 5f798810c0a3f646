"""Keeps a lead's owner and stage in step with handoff's `lead.assigned` and `lead.status`.

Stages: lead -> mql -> (handoff) sal or rejected -> sql -> ... A recycled lead returns to
nurture, its engagement treated per the rulebook's recycle policy, and can qualify again in
a new cycle.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import LeadAssignedData, LeadStatusData
from schemas.topics import LEAD_ASSIGNED, LEAD_STATUS
from scoring_service import engine, store
from scoring_service.consumer import state_of
from scoring_service.models import Lead
from scoring_service.rulebooks import RulebookCache
from services.clock import Clock
from services.codec import PoisonRecord, decode
from services.runner import ConsumerSpec

LifecycleEvent = CloudEvent[LeadAssignedData] | CloudEvent[LeadStatusData]

STAGE_FOR_STATUS = {
    "accepted": "sal",
    "rejected": "rejected",
    "contacted": None,
    "converted": "sql",
    "recycled": "nurture",
}


def parse_lifecycle(topic: str, value: bytes | None) -> LifecycleEvent:
    if topic == LEAD_ASSIGNED:
        return decode(CloudEvent[LeadAssignedData], value)
    if topic == LEAD_STATUS:
        return decode(CloudEvent[LeadStatusData], value)
    raise PoisonRecord(f"scoring lifecycle does not consume {topic}")


class LifecycleApplier:
    def __init__(self, rulebooks: RulebookCache, clock: Clock) -> None:
        self._rulebooks = rulebooks
        self._clock = clock

    def spec(self) -> ConsumerSpec[LifecycleEvent]:
        return ConsumerSpec(
            name="scoring-lifecycle",
            group_id="scoring-lifecycle",
            topics=(LEAD_ASSIGNED, LEAD_STATUS),
            parse=parse_lifecycle,
            event_id=lambda event: event.id,
            handle=self.apply_batch,
        )

    async def apply_batch(self, session: AsyncSession, events: Sequence[LifecycleEvent]) -> None:
        for event in events:
            lead = await store.resolve_merged(session, event.data.lead_id)
            if lead is None or event.data.cycle != lead.mql_cycle:
                continue  # an unknown lead or a stale cycle changes nothing
            if isinstance(event.data, LeadAssignedData):
                lead.owner_rep_id = event.data.rep_id
                lead.owner_name = event.data.rep_name
            else:
                await self._status(session, lead, event.data)
            lead.updated_at = self._clock.now()

    async def _status(self, session: AsyncSession, lead: Lead, data: LeadStatusData) -> None:
        stage = STAGE_FOR_STATUS[data.status]
        if stage is not None:
            lead.stage = stage
        if data.status == "recycled":
            active = await self._rulebooks.active(session)
            state = engine.recycle(active.rulebook, state_of(lead), data.at)
            view = engine.snapshot(active.rulebook, state, data.at)
            lead.state = state.to_json()
            lead.fit, lead.engagement, lead.score = view.fit, view.engagement, view.total
            lead.grade = view.grade
            lead.qualified_in_cycle = False
            lead.owner_rep_id = None
            lead.owner_name = None
