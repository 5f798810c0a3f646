"""The SLA monitor's part: the consumer that starts and ends clocks, the scheduler that fires
warnings and breaches, their outbox relay, and the SLA API."""

from __future__ import annotations

from services.context import AppContext
from services.parts import Part, consumer_part
from sla_monitor.api import build_router
from sla_monitor.consumer import SlaConsumer
from sla_monitor.policy import load_policy
from sla_monitor.scheduler import SlaScheduler


def build_part(context: AppContext) -> Part:
    """Loads the configured SLA file (a bad file stops the start) and assembles the part."""
    policy = load_policy(context.settings.sla_policy)
    part = consumer_part(
        context,
        "sla",
        [SlaConsumer(policy, context.clock).spec()],
        extra=lambda relay: [
            SlaScheduler(
                context.sessions,
                policy,
                context.clock,
                poll_interval=context.settings.poll_interval_seconds,
                after_commit=relay.notify,
            )
        ],
    )
    part.routers.append(build_router(policy))
    return part
