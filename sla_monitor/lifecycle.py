"""An SLA clock's states and the one rule for how it moves between them (pure).

```
            ┌── answered by the deadline ──> met
 running ───┼── answered after it ─────────> met_late
   │        └── deadline passed ──> breached ── answered ──> met_late
   └──────────── cancelled (from running or breached) ─────> cancelled
```

A warning is sent while the clock runs and leaves it running. `met`, `met_late` and
`cancelled` are final: a clock ends once, so a redelivered answer or a second scheduler
finds nothing left to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ClockName(StrEnum):
    """The promises sales makes on a lead, each timed by its own clock."""

    ACCEPT = "accept"
    """From the assignment to the rep accepting or rejecting the lead."""
    FIRST_TOUCH = "first_touch"
    """From the assignment to the rep's first contact with the lead."""
    QUALIFY = "qualify"
    """From the acceptance to the lead converted, rejected or recycled."""


class ClockState(StrEnum):
    RUNNING = "running"
    """Started, not answered, its deadline not yet passed (as far as the scheduler knows)."""
    MET = "met"
    """Answered by the deadline."""
    BREACHED = "breached"
    """The deadline passed without an answer; it still waits for one."""
    MET_LATE = "met_late"
    """Answered after the deadline."""
    CANCELLED = "cancelled"
    """No answer is owed any more: reassigned, recycled, disqualified, merged away."""


OPEN_STATES = frozenset({ClockState.RUNNING, ClockState.BREACHED})
"""A clock still waiting for its answer."""


class Happening(StrEnum):
    """What moves a clock."""

    WARNING_DUE = "warning_due"
    """Its warning time came (the scheduler)."""
    DEADLINE_PASSED = "deadline_passed"
    """Its deadline passed (the scheduler)."""
    ANSWERED = "answered"
    """The rep did what the clock waits for (a `lead.status`)."""
    CANCELLED = "cancelled"
    """The answer is no longer owed."""


class Kind(StrEnum):
    """The `kind` of the `sla.events` record each transition emits."""

    CLOCK_STARTED = "clock_started"
    WARNING = "warning"
    MET = "met"
    MET_LATE = "met_late"
    BREACHED = "breached"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Transition:
    state: ClockState
    kind: Kind


class InvalidClockTransition(ValueError):
    """The happening does not apply to a clock in that state."""

    def __init__(self, state: ClockState, happening: Happening) -> None:
        super().__init__(f"{happening.value} does not apply to a clock that is {state.value}")
        self.state = state
        self.happening = happening


_ALLOWED = {
    ClockState.RUNNING: frozenset(Happening),
    ClockState.BREACHED: frozenset({Happening.ANSWERED, Happening.CANCELLED}),
}


def allows(state: ClockState, happening: Happening) -> bool:
    """Whether `happening` moves a clock in `state` (`transition` would not refuse it)."""
    return happening in _ALLOWED.get(state, frozenset())


def transition(
    state: ClockState, happening: Happening, *, at: datetime, deadline: datetime
) -> Transition:
    """Where a clock in `state` goes on `happening` at `at` (event time), and the event it
    emits; InvalidClockTransition when nothing applies (a final state, a warning after the
    breach). An answer at the deadline itself is in time."""
    if not allows(state, happening):
        raise InvalidClockTransition(state, happening)
    if happening is Happening.WARNING_DUE:
        return Transition(ClockState.RUNNING, Kind.WARNING)
    if happening is Happening.DEADLINE_PASSED:
        return Transition(ClockState.BREACHED, Kind.BREACHED)
    if happening is Happening.CANCELLED:
        return Transition(ClockState.CANCELLED, Kind.CANCELLED)
    if state is ClockState.RUNNING and at <= deadline:
        return Transition(ClockState.MET, Kind.MET)
    return Transition(ClockState.MET_LATE, Kind.MET_LATE)
