"""The handoff consumer: routes each `lead.mql` to a rep (or the queue) and emits
`lead.assigned` through the outbox; closes the assignment of an MQL that scoring revoked
(`lead.mql_revoked`, on the same topic); re-routes a lead whose rep missed the accept
deadline (`sla.events`, kind `breached`), per its pool's `on_breach`."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.dispatch import Dispatcher
from schemas.envelope import CloudEvent
from schemas.events import LeadMqlData, LeadMqlRevokedData, SlaEventData
from schemas.topics import LEAD_MQL, SLA_EVENTS
from services.codec import PoisonRecord, decode, decode_either
from services.runner import ConsumerSpec

MqlEvent = CloudEvent[LeadMqlData]
RevokedEvent = CloudEvent[LeadMqlRevokedData]
SlaEvent = CloudEvent[SlaEventData]
HandoffInput = MqlEvent | RevokedEvent | SlaEvent


def parse_handoff_input(topic: str, value: bytes | None) -> HandoffInput:
    if topic == LEAD_MQL:
        return decode_either(MqlEvent, RevokedEvent, value)
    if topic == SLA_EVENTS:
        return decode(SlaEvent, value)
    raise PoisonRecord(f"handoff does not consume {topic}")


def _routes(event: HandoffInput) -> bool:
    """Whether the event needs routing's state: all but the SLA events other than a breach."""
    return not isinstance(event.data, SlaEventData) or event.data.kind == "breached"


class MqlRouter:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def spec(self) -> ConsumerSpec[HandoffInput]:
        return ConsumerSpec(
            name="handoff",
            group_id="handoff",
            topics=(LEAD_MQL, SLA_EVENTS),
            parse=parse_handoff_input,
            event_id=lambda event: event.id,
            handle=self.apply_batch,
        )

    async def apply_batch(self, session: AsyncSession, events: Sequence[HandoffInput]) -> None:
        """One batch under the routing lock: leads waiting in the queue are served before the
        batch's new MQLs, then each event in turn."""
        if not any(_routes(event) for event in events):
            return
        dispatcher = self.dispatcher
        snapshot = await dispatcher.snapshot(session)
        await dispatcher.drain(session, snapshot)
        for event in events:
            data = event.data
            if isinstance(data, LeadMqlData):
                await dispatcher.route_mql(session, snapshot, event.id, data)
            elif isinstance(data, LeadMqlRevokedData):
                await dispatcher.close_revoked(session, snapshot, data)
            else:
                await dispatcher.on_breach(session, snapshot, data)
        await dispatcher.finish(session, snapshot)
