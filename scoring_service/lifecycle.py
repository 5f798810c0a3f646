"""Keeps a lead's owner and stage in step with handoff's `lead.assigned` and `lead.status`.

The stages and how a rep's action moves a lead are schemas.lifecycle's. A recycled lead returns
to nurture, its engagement treated per the rulebook's recycle policy, and can qualify again in
a new cycle.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import LeadAssignedData, LeadStatusData
from schemas.lifecycle import StageEvent, next_stage
from schemas.topics import LEAD_ASSIGNED, LEAD_STATUS
from scoring_service import store
from scoring_service.consumer import ActivityApplier
from scoring_service.leads import standing_mql
from scoring_service.models import Lead
from services.clock import Clock
from services.codec import PoisonRecord, decode
from services.runner import ConsumerSpec

LifecycleEvent = CloudEvent[LeadAssignedData] | CloudEvent[LeadStatusData]


def parse_lifecycle(topic: str, value: bytes | None) -> LifecycleEvent:
    if topic == LEAD_ASSIGNED:
        return decode(CloudEvent[LeadAssignedData], value)
    if topic == LEAD_STATUS:
        return decode(CloudEvent[LeadStatusData], value)
    raise PoisonRecord(f"scoring lifecycle does not consume {topic}")


class LifecycleApplier:
    def __init__(self, scoring: ActivityApplier, clock: Clock) -> None:
        self._scoring = scoring
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
            lead = await _locked(session, event.data.lead_id)
            if lead is None or event.data.cycle != lead.mql_cycle or standing_mql(lead) is None:
                continue  # an unknown lead, a stale cycle or a revoked MQL changes nothing
            if isinstance(event.data, LeadAssignedData):
                if event.data.mql_event_id != standing_mql(lead):
                    continue
                lead.owner_rep_id = event.data.rep_id
                lead.owner_name = event.data.rep_name
            elif (action := StageEvent(event.data.status)) is StageEvent.RECYCLED:
                await self._scoring.recycle(session, lead, event.data.at, cause=event.id)
            else:
                lead.stage = next_stage(lead.stage, action)
            lead.updated_at = self._clock.now()


async def _locked(session: AsyncSession, lead_id: str) -> Lead | None:
    """The lead (or the one it was merged into), locked like scoring locks it."""
    lead = (await store.leads_for_update(session, [lead_id])).get(lead_id)
    if lead is not None and lead.merged_into is not None:
        lead = (await store.leads_for_update(session, [lead.merged_into])).get(lead.merged_into)
    return lead
