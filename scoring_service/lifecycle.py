"""Keeps a lead's owner and stage in step with handoff's `lead.assigned` and `lead.status`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import LeadAssignedData, LeadStatusData
from schemas.topics import LEAD_ASSIGNED, LEAD_STATUS
from scoring_service.models import Lead
from services.clock import Clock
from services.codec import decode
from services.runner import ConsumerSpec, PoisonRecord

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
    def __init__(self, clock: Clock) -> None:
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
            lead = await session.get(Lead, event.data.lead_id)
            if lead is None or event.data.cycle != lead.mql_cycle:
                continue  # an unknown lead or a stale cycle changes nothing
            _apply(lead, event.data)
            lead.updated_at = self._clock.now()


def _apply(lead: Lead, data: Any) -> None:
    if isinstance(data, LeadAssignedData):
        lead.owner_rep_id = data.rep_id
        lead.owner_name = data.rep_name
        return
    assert isinstance(data, LeadStatusData)
    stage = STAGE_FOR_STATUS[data.status]
    if stage is not None:
        lead.stage = stage
    if data.status == "recycled":
        lead.qualified_in_cycle = False
        lead.owner_rep_id = None
        lead.owner_name = None
