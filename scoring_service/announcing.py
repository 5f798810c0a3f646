"""When a qualification is announced as a `lead.mql`, held back, or revoked: pure decisions.

The fold says, in event time, whether a lead qualified in its current cycle. Whether the
world has been told is the lead's own record (the `lead.mql` that stands, a hold waiting
out the allowed lateness). Announcing is the reconciliation of the two, so the MQLs that
stand are a function of the activity log alone, however its events arrived:

* qualified, nothing announced: hold for the allowed lateness (facts on other partitions
  may still arrive, older in event time), then announce if the fold still says qualified;
* no longer qualified while a hold waits: the hold is dropped, nobody was told;
* no longer qualified after the announcement: the MQL is revoked (`lead.mql_revoked`),
  unless sales already acted on it (accepted, rejected, converted), which settles it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class Announcement(enum.Enum):
    NONE = "none"
    HOLD = "hold"
    ANNOUNCE = "announce"
    DROP_HOLD = "drop_hold"
    REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class Told:
    """What the world has been told about a lead's current cycle."""

    standing: bool
    """A `lead.mql` stands for the cycle."""
    due_at: datetime | None
    """A qualification is held until then."""
    revocable: bool
    """Sales has not acted on the standing MQL yet."""


@dataclass(frozen=True, slots=True)
class Decision:
    action: Announcement
    due_at: datetime | None = None
    """For HOLD: when to announce."""


def decide(qualified: bool, told: Told, now: datetime, hold: timedelta) -> Decision:
    if qualified:
        if told.standing:
            return Decision(Announcement.NONE)
        due = told.due_at if told.due_at is not None else now + hold
        if due <= now:
            return Decision(Announcement.ANNOUNCE)
        return Decision(Announcement.HOLD, due)
    if told.standing:
        return Decision(Announcement.REVOKE if told.revocable else Announcement.NONE)
    if told.due_at is not None:
        return Decision(Announcement.DROP_HOLD)
    return Decision(Announcement.NONE)


def mql_event_id(lead_id: str, cycle: int) -> str:
    """The id of a lead's `lead.mql` for a cycle: stable, so redelivery and replay repeat it."""
    return f"mql:{lead_id}:{cycle}"


def revocation_event_id(mql_id: str) -> str:
    return f"{mql_id}:revoked"


def parse_mql_event_id(event_id: str) -> tuple[str, int]:
    """(lead id, cycle) of an id made by `mql_event_id`."""
    prefix, _, rest = event_id.partition(":")
    lead_id, _, cycle = rest.rpartition(":")
    if prefix != "mql" or not lead_id or not cycle.isdigit():
        raise ValueError(f"not an MQL event id: {event_id!r}")
    return lead_id, int(cycle)
