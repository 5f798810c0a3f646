"""The handoff service's part: the MQL router consuming `lead.mql`, its outbox relay, and the
handoff API."""

from __future__ import annotations

from handoff_service.api import router
from handoff_service.consumer import MqlRouter
from handoff_service.routing import load_roster
from services.context import AppContext
from services.parts import Part, consumer_part


def build_part(context: AppContext) -> Part:
    """Loads the configured roster (a bad file stops the start) and assembles the part."""
    roster = load_roster(context.settings.roster)
    part = consumer_part(context, "handoff", [MqlRouter(roster, context.clock).spec()])
    part.routers.append(router)
    return part
