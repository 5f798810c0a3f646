"""Pure domain logic, no broker or database: routing, calendars, normalization.

The rulebook and the scoring fold are tested in tests/test_rules.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from handoff_service.routing import Rep, RosterError, load_roster, round_robin
from schemas.events import ActivityType
from services.gateway.segment import InvalidEmail, SegmentTrack, to_activity_event
from sla_monitor.calendar import BusinessCalendar, add_business_time
from sla_monitor.policy import AcceptPolicy, PolicyError, load_policy
from tests.conftest import EXAMPLES

NOW = datetime(2026, 11, 23, 15, tzinfo=UTC)


# --- routing ----------------------------------------------------------------------------


def test_round_robin_takes_turns_and_wraps() -> None:
    reps = tuple(Rep(id=f"r{n}", name=f"R{n}", email=f"r{n}@x.io") for n in range(3))
    cursor, chosen = 0, []
    for _ in range(5):
        rep, cursor = round_robin(reps, cursor)
        chosen.append(rep.id)
    assert chosen == ["r0", "r1", "r2", "r0", "r1"]
    with pytest.raises(ValueError, match="no active rep"):
        round_robin((), 0)


def test_example_roster_skips_inactive_and_refuses_duplicates(tmp_path: Path) -> None:
    roster = load_roster(EXAMPLES / "roster.yaml")
    assert [rep.id for rep in roster.active_reps] == ["rep-ada", "rep-grace", "rep-alan"]
    duplicate = tmp_path / "roster.yaml"
    duplicate.write_text(
        "reps:\n  - {id: a, name: A, email: a@x.io}\n  - {id: a, name: B, email: b@x.io}\n"
    )
    with pytest.raises(RosterError, match="unique"):
        load_roster(duplicate)


# --- business calendar ------------------------------------------------------------------

NY = BusinessCalendar(timezone="America/New_York", holidays=(date(2026, 12, 25),))


def ny(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=NY.zone)


@pytest.mark.parametrize(
    ("start", "hours", "due"),
    [
        (ny(23, 10), 4, ny(23, 14)),  # Monday morning: same day
        (ny(23, 15), 4, ny(24, 11)),  # rolls past 17:00 into Tuesday
        (ny(27, 16), 4, ny(30, 12)),  # Friday afternoon: Monday noon
        (ny(28, 12), 4, ny(30, 13)),  # Saturday: counts from Monday 09:00
        (ny(23, 7), 1, ny(23, 10)),  # before opening: counts from 09:00
        (ny(24, 16, month=12), 2, ny(28, 10, month=12)),  # Christmas is a holiday
    ],
)
def test_business_hours_skip_nights_weekends_and_holidays(
    start: datetime, hours: int, due: datetime
) -> None:
    assert add_business_time(NY, start, timedelta(hours=hours)) == due


def test_deadline_keeps_the_callers_timezone() -> None:
    due = add_business_time(NY, datetime(2026, 11, 23, 15, tzinfo=UTC), timedelta(hours=4))
    assert due == datetime(2026, 11, 23, 19, tzinfo=UTC)
    assert due.tzinfo == UTC


def test_wall_clock_policy_ignores_the_calendar() -> None:
    policy = AcceptPolicy(name="p", accept_within_hours=2, business_hours=False)
    assert policy.deadline(NOW) == NOW + timedelta(hours=2)


def test_bad_calendar_and_policy_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        BusinessCalendar(timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="opens must be before closes"):
        BusinessCalendar(opens=time(18), closes=time(9))
    bad = tmp_path / "sla.yaml"
    bad.write_text("name: x\naccept_within_hours: -1\n")
    with pytest.raises(PolicyError, match="accept_within_hours"):
        load_policy(bad)


# --- gateway normalization --------------------------------------------------------------


def test_track_call_becomes_an_activity_event() -> None:
    body = SegmentTrack.model_validate(
        {
            "event": "Webinar Attended",
            "userId": "u1",
            "messageId": "m1",
            "context": {
                "traits": {"email": "Pat@Corp.com", "firstName": "Pat"},
                "userAgent": "curl",
            },
            "timestamp": "2026-11-20T10:00:00",
        }
    )
    event = to_activity_event(body, channel="http:/v1/track", now=NOW)
    assert event.id == "m1"
    assert event.type == "lead.activity.webinar_attend"
    assert event.subject == "email:pat@corp.com"
    assert event.time == datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert event.data.attributes == {"first_name": "Pat"}
    assert event.data.context == {"userAgent": "curl"}


def test_unknown_event_names_are_kept_as_custom_activities() -> None:
    body = SegmentTrack.model_validate({"event": "Trial Started", "anonymousId": "a"})
    event = to_activity_event(body, channel="t", now=NOW)
    assert event.data.activity_type == ActivityType.CUSTOM
    assert event.data.event_name == "Trial Started"
    assert event.id.startswith("gw-")


def test_invalid_email_names_where_it_came_from() -> None:
    body = SegmentTrack.model_validate(
        {"event": "form_submit", "anonymousId": "a", "properties": {"email": "nope"}}
    )
    with pytest.raises(InvalidEmail) as caught:
        to_activity_event(body, channel="t", now=NOW)
    assert caught.value.field == "properties.email"
