"""The SLA monitor's part: the clock starter, its outbox relay, and the SLA API."""

from __future__ import annotations

from services.context import AppContext
from services.parts import Part, consumer_part
from sla_monitor.api import build_router
from sla_monitor.consumer import ClockStarter
from sla_monitor.policy import load_policy


def build_part(context: AppContext) -> Part:
    """Loads the configured SLA policy (a bad file stops the start) and assembles the part."""
    policy = load_policy(context.settings.sla_policy)
    part = consumer_part(context, "sla", [ClockStarter(policy, context.clock).spec()])
    part.routers.append(build_router(policy))
    return part
