"""Kafka topic names (before the installation's optional prefix)."""

from typing import Final

LEAD_ACTIVITY: Final = "lead.activity"
LEAD_SCORED: Final = "lead.scored"
LEAD_MQL: Final = "lead.mql"
LEAD_ASSIGNED: Final = "lead.assigned"
LEAD_STATUS: Final = "lead.status"
SLA_EVENTS: Final = "sla.events"


def dlq_for(topic: str) -> str:
    """Where a consumer of `topic` parks records it cannot parse."""
    return f"{topic}.dlq"


LEAD_ACTIVITY_DLQ: Final = dlq_for(LEAD_ACTIVITY)

CONSUMED: Final = (LEAD_ACTIVITY, LEAD_MQL, LEAD_ASSIGNED, LEAD_STATUS, SLA_EVENTS)
ALL: Final = (
    LEAD_ACTIVITY,
    LEAD_SCORED,
    LEAD_MQL,
    LEAD_ASSIGNED,
    LEAD_STATUS,
    SLA_EVENTS,
    *(dlq_for(topic) for topic in CONSUMED),
)
