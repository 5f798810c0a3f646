"""The gateway's pure logic: Segment normalization, clock skew, bots, signatures, mappings."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from schemas.events import ActivityType
from services.errors import ApiError
from services.gateway import bots
from services.gateway.body import gunzip
from services.gateway.mapping import (
    MappingError,
    MappingFileError,
    load_mappings,
    map_payload,
    parse_form,
)
from services.gateway.segment import corrected_time, parse_call, to_activity_event
from services.gateway.signature import SignatureError, sign, verify

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MAPPINGS = load_mappings(ROOT / "examples" / "webhooks")
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"
)


def event_for(call: str, payload: dict[str, Any], **kwargs: Any) -> Any:
    return to_activity_event(parse_call(call, payload), channel="http:/v1/x", now=NOW, **kwargs)


# --- Segment calls ------------------------------------------------------------------------


def test_page_call_is_a_page_view_with_the_page_context_as_properties() -> None:
    event = event_for(
        "page",
        {
            "anonymousId": "a1",
            "name": "Pricing",
            "context": {"page": {"url": "https://x.io/pricing", "title": "Pricing"}},
            "properties": {"title": "Plans"},
        },
    )
    assert event.type == "lead.activity.page_view"
    assert event.data.event_name == "Pricing"
    assert event.data.properties == {"url": "https://x.io/pricing", "title": "Plans"}


def test_identify_call_turns_traits_into_lead_attributes() -> None:
    event = event_for(
        "identify",
        {"userId": "u1", "traits": {"email": "Ann@X.io", "firstName": "Ann", "title": "CTO"}},
    )
    assert event.data.activity_type is ActivityType.IDENTIFY
    assert event.subject == "email:ann@x.io"
    assert event.data.attributes == {"first_name": "Ann", "job_title": "CTO"}


def test_alias_links_the_previous_id_to_the_user_id() -> None:
    event = event_for("alias", {"userId": "u1", "previousId": "anon-9", "messageId": "m-a"})
    assert event.id == "m-a"
    assert event.data.event_name == "alias"
    assert event.data.identity.user_id == "u1"
    assert event.data.properties == {"previous_id": "anon-9"}


def test_group_traits_describe_the_company() -> None:
    event = event_for(
        "group",
        {
            "userId": "u1",
            "groupId": "g1",
            "traits": {
                "name": "Initech",
                "industry": "Software",
                "employees": 250,
                "website": "https://www.initech.com/about",
                "plan": "enterprise",
                "email": "billing@initech.com",
            },
        },
    )
    assert event.subject == "user:u1"  # a company's email is not the person's
    assert event.data.attributes == {
        "company": "Initech",
        "industry": "Software",
        "company_size": 250,
        "company_domain": "initech.com",
        "company_plan": "enterprise",
        "company_email": "billing@initech.com",
    }
    assert event.data.properties == {"group_id": "g1"}


@pytest.mark.parametrize("call", ["alias", "group"])
def test_alias_and_group_need_their_ids(call: str) -> None:
    with pytest.raises(ValueError, match="previousId" if call == "alias" else "groupId"):
        parse_call(call, {"userId": "u1"})


def test_clock_skew_is_corrected_from_sent_at() -> None:
    # The client's clock is 1 h fast: it stamped the event 10 s before sending it.
    client_time = NOW + timedelta(hours=1)
    corrected = corrected_time(client_time - timedelta(seconds=10), client_time, NOW)
    assert corrected == NOW - timedelta(seconds=10)
    assert corrected_time(client_time, None, NOW) == client_time
    assert corrected_time(None, client_time, NOW) == NOW


def test_a_batch_sent_at_corrects_each_message_and_the_original_is_kept() -> None:
    event = event_for(
        "track",
        {"event": "x", "anonymousId": "a", "timestamp": "2030-01-01T00:00:00Z"},
        batch_sent_at=datetime(2030, 1, 1, 0, 0, 5, tzinfo=UTC),
    )
    assert event.time == NOW - timedelta(seconds=5)
    assert event.data.context["original_timestamp"] == "2030-01-01T00:00:00+00:00"


# --- bots -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "reason"),
    [
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "crawler"),
        ("Mozilla/5.0 (compatible; bingbot/2.0)", "crawler"),
        ("facebookexternalhit/1.1", "crawler"),
        (CHROME.replace("Chrome/", "HeadlessChrome/"), "headless_browser"),
        ("Mozilla/5.0 Barracuda Sentinel (EE)", "email_scanner"),
        (CHROME, None),
        (None, None),
    ],
)
def test_user_agents_of_machines_are_recognised(user_agent: str | None, reason: str | None) -> None:
    found = bots.user_agent_reason(user_agent)
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_a_bot_is_flagged_not_dropped() -> None:
    event = event_for(
        "page", {"anonymousId": "a", "context": {"userAgent": "Googlebot/2.1 (+google)"}}
    )
    assert event.data.is_bot is True
    assert event.data.context["bot_reason"] == "crawler_user_agent"
    human = event_for("page", {"anonymousId": "a", "context": {"userAgent": CHROME}})
    assert human.data.is_bot is False
    assert "bot_reason" not in human.data.context


def test_a_click_seconds_after_delivery_is_a_link_scanner() -> None:
    delivered = NOW - timedelta(seconds=2)
    assert bots.scanner_click_reason(NOW, delivered, 10) == "click_2s_after_delivery"
    assert bots.scanner_click_reason(NOW, NOW - timedelta(minutes=5), 10) is None
    assert bots.scanner_click_reason(NOW, None, 10) is None


# --- bodies ---------------------------------------------------------------------------------


def test_gzip_bodies_are_inflated_within_the_limit_only() -> None:
    assert gunzip(gzip.compress(b"{}"), 10) == b"{}"
    with pytest.raises(ApiError) as too_big:
        gunzip(gzip.compress(b"0" * 100_000), 32 * 1024)  # 100 KB from a ~100 byte body
    assert too_big.value.status == 413
    with pytest.raises(ApiError) as broken:
        gunzip(b"not gzip", 10)
    assert broken.value.status == 400


# --- Standard Webhooks signatures ---------------------------------------------------------


def signed_headers(body: bytes, *, at: datetime = NOW, msg_id: str = "msg_1") -> dict[str, str]:
    """Headers made by the Standard Webhooks reference library, as a real sender would."""
    signature = Webhook(SECRET).sign(msg_id, at, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def test_signatures_of_the_reference_library_verify() -> None:
    body = b'{"type": "form_submit"}'
    headers = signed_headers(body)
    assert verify(SECRET, headers, body, now=NOW, tolerance_seconds=300) == (
        "msg_1",
        int(NOW.timestamp()),
    )
    # and ours verify with the reference library (which checks against the wall clock)
    stamp = int(datetime.now(UTC).timestamp())
    ours = {**headers, "webhook-timestamp": str(stamp)}
    ours["webhook-signature"] = sign(SECRET, "msg_1", stamp, body)
    assert Webhook(SECRET).verify(body, ours) == {"type": "form_submit"}


def test_one_matching_signature_among_several_is_enough() -> None:
    body = b"{}"
    headers = signed_headers(body)
    headers["webhook-signature"] = "v1,bm9wZQ== " + headers["webhook-signature"]
    verify(SECRET, headers, body, now=NOW, tolerance_seconds=300)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"webhook-signature": "v1,bm9wZQ=="}, "does not match"),
        ({"webhook-id": ""}, "missing header webhook-id"),
        ({"webhook-timestamp": "yesterday"}, "whole seconds"),
        ({"webhook-timestamp": str(int(NOW.timestamp()) - 301)}, "too old"),
        ({"webhook-timestamp": str(int(NOW.timestamp()) + 301)}, "future"),
    ],
)
def test_bad_signatures_and_replays_are_refused(change: dict[str, str], message: str) -> None:
    body = b"{}"
    headers = {**signed_headers(body), **change}
    with pytest.raises(SignatureError, match=message):
        verify(SECRET, headers, body, now=NOW, tolerance_seconds=300)


def test_a_changed_body_does_not_verify() -> None:
    headers = signed_headers(b'{"email": "a@x.io"}')
    with pytest.raises(SignatureError):
        verify(SECRET, headers, b'{"email": "b@x.io"}', now=NOW, tolerance_seconds=300)


# --- webhook mappings ------------------------------------------------------------------------


def test_zoom_webinar_attendance_maps_to_webinar_attend() -> None:
    payload = {
        "event": "webinar.participant_joined",
        "event_ts": 1_795_000_000_000,
        "payload": {
            "account_id": "acc",
            "object": {
                "id": "81234567890",
                "uuid": "4444AAAiAAAAAiAiAiiAii==",
                "topic": "Scoring leads that sales trusts",
                "participant": {
                    "user_id": "16778240",
                    "user_name": "Dana Scully",
                    "id": "iFxeBPYun6SAiWUzBcEkX",
                    "join_time": "2026-11-20T17:00:05Z",
                    "email": "Dana@Example.org",
                    "registrant_id": "r-1",
                },
            },
        },
    }
    (mapped,) = map_payload(MAPPINGS["zoom"], payload)
    assert mapped.activity_type is ActivityType.WEBINAR_ATTEND
    assert mapped.email == "dana@example.org"
    assert mapped.time == datetime(2026, 11, 20, 17, 0, 5, tzinfo=UTC)
    assert mapped.properties == {
        "webinar": "Scoring leads that sales trusts",
        "webinar_id": "81234567890",
        "registrant_id": "r-1",
    }


def test_zoom_registration_carries_the_registrant_as_attributes() -> None:
    payload = {
        "event": "webinar.registration_created",
        "event_ts": 1_795_000_000_000,
        "payload": {
            "object": {
                "id": "81234567890",
                "topic": "T",
                "registrant": {
                    "id": "r-2",
                    "email": "pat@corp.com",
                    "first_name": "Pat",
                    "last_name": "Lee",
                    "org": "Corp",
                },
            }
        },
    }
    (mapped,) = map_payload(MAPPINGS["zoom"], payload)
    assert mapped.activity_type is ActivityType.WEBINAR_REGISTER
    assert mapped.time == datetime.fromtimestamp(1_795_000_000, UTC)  # epoch ms
    assert mapped.attributes == {"first_name": "Pat", "last_name": "Lee", "company": "Corp"}


def test_hubspot_email_events_list_maps_each_event() -> None:
    payload = {
        "events": [
            {
                "id": "e1",
                "type": "OPEN",
                "recipient": "ann@x.io",
                "created": 1_795_000_000_000,
                "emailCampaignId": 42,
            },
            {
                "id": "e2",
                "type": "CLICK",
                "recipient": "ann@x.io",
                "created": 1_795_000_003_000,
                "url": "https://x.io/pricing",
                "userAgent": CHROME,
                "sentBy": {"id": "s1", "created": 1_795_000_001_000},
                "filteredEvent": False,
            },
            {"id": "e3", "type": "DELIVERED", "recipient": "ann@x.io", "created": 1},
        ]
    }
    opened, clicked, delivered = map_payload(MAPPINGS["hubspot-email"], payload)
    assert opened.activity_type is ActivityType.EMAIL_OPEN
    assert clicked.activity_type is ActivityType.EMAIL_CLICK
    assert clicked.properties["url"] == "https://x.io/pricing"
    assert clicked.delivered_at == datetime.fromtimestamp(1_795_000_001, UTC)
    assert clicked.flagged_bot is False
    assert delivered.activity_type is ActivityType.CUSTOM  # kept, rules may match it by name
    assert delivered.event_name == "DELIVERED"


def test_hubspot_form_submission_from_a_workflow_webhook() -> None:
    payload = {
        "vid": 3234574,
        "canonical-vid": 3234574,
        "properties": {
            "email": {"value": "kim@initech.com"},
            "firstname": {"value": "Kim"},
            "company": {"value": "Initech"},
            "numemployees": {"value": "201-500"},
        },
        "form-submissions": [
            {
                "conversion-id": "c1",
                "timestamp": 1_795_000_000_000,
                "form-id": "fd2b-11",
                "portal-id": 62515,
                "page-url": "https://initech.com/demo",
                "title": "demo-request",
            }
        ],
    }
    (mapped,) = map_payload(MAPPINGS["hubspot-forms"], payload)
    assert mapped.activity_type is ActivityType.FORM_SUBMIT
    assert mapped.properties["form"] == "demo-request"
    assert mapped.user_id == "3234574"
    assert mapped.attributes == {
        "first_name": "Kim",
        "company": "Initech",
        "company_size": "201-500",
    }


def test_mailchimp_form_encoded_unsubscribe() -> None:
    body = (
        b"type=unsubscribe&fired_at=2026-11-20+10%3A00%3A00&data%5Baction%5D=unsub"
        b"&data%5Breason%5D=manual&data%5Bid%5D=8a25ff1d98&data%5Blist_id%5D=a6b5da1054"
        b"&data%5Bemail%5D=api%2Bunsub%40mailchimp.com&data%5Bmerges%5D%5BFNAME%5D=Mailchimp"
    )
    payload = parse_form(body)
    assert payload["data"]["merges"] == {"FNAME": "Mailchimp"}
    (mapped,) = map_payload(MAPPINGS["mailchimp"], payload)
    assert mapped.activity_type is ActivityType.UNSUBSCRIBE
    assert mapped.email == "api+unsub@mailchimp.com"
    assert mapped.time == datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert mapped.properties == {"list_id": "a6b5da1054", "reason": "manual"}


def test_an_unreadable_payload_names_what_is_missing() -> None:
    with pytest.raises(MappingError) as caught:
        map_payload(MAPPINGS["zoom"], {"event": "webinar.participant_joined", "payload": {}})
    (problem,) = caught.value.fields
    assert "payload.object.participant.email" in problem["field"]
    assert "no identity" in problem["message"]
    with pytest.raises(MappingError) as untyped:
        map_payload(MAPPINGS["zoom"], {"payload": {}})
    assert untyped.value.fields[0]["field"].startswith("event")
    with pytest.raises(MappingError) as unmapped:
        map_payload(MAPPINGS["zoom"], {"event": "webinar.deleted", "payload": {}})
    assert any("unmapped event type" in item["message"] for item in unmapped.value.fields)


def test_a_bad_item_in_a_list_is_named_by_its_index() -> None:
    payload = {"events": [{"type": "OPEN", "recipient": "a@x.io"}, {"type": "OPEN"}]}
    with pytest.raises(MappingError) as caught:
        map_payload(MAPPINGS["hubspot-email"], payload)
    assert caught.value.fields[0]["field"] == "events.1.recipient"


def test_an_invalid_mapping_file_stops_the_start_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "tool.yaml").write_text("type: kind\ntypes: {a: not_an_activity}\nemail: e\n")
    with pytest.raises(MappingFileError, match=r"tool\.yaml.*types\.a"):
        load_mappings(tmp_path)
