"""Pure domain logic, no broker or database: normalization.

The rulebook and the scoring fold are tested in tests/test_rules.py, routing in
tests/test_router.py, business calendars in tests/test_sla_calendar.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.events import ActivityType
from services.gateway.segment import InvalidEmail, SegmentTrack, to_activity_event

NOW = datetime(2026, 11, 23, 15, tzinfo=UTC)


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
