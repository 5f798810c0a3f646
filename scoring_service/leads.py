"""A stored lead as scoring's decisions read it: its fold state, and the `lead.mql` that stands
for its current cycle."""

from __future__ import annotations

from scoring_service import engine
from scoring_service.announcing import mql_event_id
from scoring_service.engine import LeadState
from scoring_service.models import Lead


def state_of(lead: Lead) -> LeadState:
    """The lead's fold state, to continue from (a new lead's is the initial one)."""
    return LeadState.from_json(lead.state) if lead.state else engine.initial_state()


def standing_mql(lead: Lead) -> str | None:
    """The id of the `lead.mql` that stands for the lead's current cycle, if one does
    (leads scored before ids were kept have only the flag)."""
    if lead.mql_event_id is not None:
        return lead.mql_event_id
    return mql_event_id(lead.id, lead.mql_cycle) if lead.qualified_in_cycle else None
