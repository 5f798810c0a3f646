"""A clock's states and the one pure function that moves it, for every pair."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sla_monitor.lifecycle import (
    OPEN_STATES,
    ClockState,
    Happening,
    InvalidClockTransition,
    Kind,
    allows,
    transition,
)

DEADLINE = datetime(2026, 11, 23, 19, tzinfo=UTC)
BEFORE, AFTER = DEADLINE - timedelta(seconds=1), DEADLINE + timedelta(seconds=1)

RUNNING, MET, BREACHED, MET_LATE, CANCELLED = (
    ClockState.RUNNING,
    ClockState.MET,
    ClockState.BREACHED,
    ClockState.MET_LATE,
    ClockState.CANCELLED,
)

EXPECTED = {
    (RUNNING, Happening.WARNING_DUE, BEFORE): (RUNNING, Kind.WARNING),
    (RUNNING, Happening.DEADLINE_PASSED, DEADLINE): (BREACHED, Kind.BREACHED),
    (RUNNING, Happening.ANSWERED, BEFORE): (MET, Kind.MET),
    (RUNNING, Happening.ANSWERED, DEADLINE): (MET, Kind.MET),  # at the deadline is in time
    (RUNNING, Happening.ANSWERED, AFTER): (MET_LATE, Kind.MET_LATE),  # the breach never fired
    (RUNNING, Happening.CANCELLED, BEFORE): (CANCELLED, Kind.CANCELLED),
    (BREACHED, Happening.ANSWERED, AFTER): (MET_LATE, Kind.MET_LATE),
    (BREACHED, Happening.ANSWERED, BEFORE): (MET_LATE, Kind.MET_LATE),  # the breach went out
    (BREACHED, Happening.CANCELLED, AFTER): (CANCELLED, Kind.CANCELLED),
}


@pytest.mark.parametrize(("case", "outcome"), list(EXPECTED.items()))
def test_allowed_transitions(
    case: tuple[ClockState, Happening, datetime], outcome: tuple[ClockState, Kind]
) -> None:
    state, happening, at = case
    assert allows(state, happening)
    step = transition(state, happening, at=at, deadline=DEADLINE)
    assert (step.state, step.kind) == outcome


@pytest.mark.parametrize("state", list(ClockState))
@pytest.mark.parametrize("happening", list(Happening))
def test_everything_else_is_refused(state: ClockState, happening: Happening) -> None:
    if any((state, happening) == case[:2] for case in EXPECTED):
        return
    assert not allows(state, happening)
    with pytest.raises(InvalidClockTransition, match=f"{happening.value} does not apply"):
        transition(state, happening, at=AFTER, deadline=DEADLINE)


def test_final_states_take_nothing_and_open_ones_wait_for_an_answer() -> None:
    for state in (MET, MET_LATE, CANCELLED):
        assert not any(allows(state, happening) for happening in Happening)
    assert {RUNNING, BREACHED} == OPEN_STATES
    assert all(allows(state, Happening.ANSWERED) for state in OPEN_STATES)
