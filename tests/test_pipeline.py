"""End to end through HTTP and Kafka: tracked activity becomes an MQL, an owner and a clock."""

from __future__ import annotations

from typing import Any

import httpx

from schemas.topics import LEAD_ACTIVITY, LEAD_ASSIGNED, LEAD_MQL, LEAD_SCORED, SLA_EVENTS
from services.runtime import Runtime
from tests.support import eventually, read_topic, values


def track(event: str, **fields: Any) -> dict[str, Any]:
    return {"event": event, **fields}


async def lead_by_email(client: httpx.AsyncClient, email: str) -> dict[str, Any] | None:
    response = await client.get("/leads", params={"email": email})
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    return items[0] if items else None


async def test_activity_to_mql_to_assignment_to_sla_clock(
    pipeline: Runtime, client: httpx.AsyncClient
) -> None:
    settings = pipeline.settings
    calls = [
        track(
            "page_view",
            anonymousId="anon-7",
            messageId="m-1",
            properties={"url": "https://example.com/pricing"},
        ),
        track("Email Link Clicked", anonymousId="anon-7", messageId="m-2"),
        track(
            "form_submit",
            anonymousId="anon-7",
            messageId="m-3",
            traits={"email": "Dana@Example.org", "company": "Initech"},
            properties={"form": "demo-request"},
        ),
    ]
    for body in calls:
        response = await client.post("/v1/track", json=body)
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True}

    activity = await read_topic(settings, LEAD_ACTIVITY, expect=3)
    assert {record.key for record in activity} == {b"anon:anon-7", b"email:dana@example.org"}

    mqls = values(await read_topic(settings, LEAD_MQL, expect=1))
    assert len(mqls) == 1, "one qualification cycle gives exactly one lead.mql"
    mql = mqls[0]
    assert mql["type"] == "lead.mql"
    assert mql["data"]["reason"] == "trigger"
    assert mql["data"]["trigger"] == "demo-request"
    assert mql["data"]["cycle"] == 1
    assert mql["data"]["email"] == "dana@example.org"
    lead_id = mql["data"]["lead_id"]
    # pricing page 15 + page view 2 + email click 8 + form 10
    assert mql["data"]["score"] == 35
    assert mql["data"]["top_rules"][0] == {"rule": "pricing-page-view", "points": 15}
    assert mql["data"]["grade"] == "D3"

    scored = values(await read_topic(settings, LEAD_SCORED, expect=1))
    # one lead.scored per lead per consumer batch: the latest wins (compaction-friendly)
    scores = [event["data"]["score"] for event in scored]
    assert scores == sorted(scores)
    assert scored[-1]["data"]["score"] == 35
    assert scored[-1]["data"]["grade"] == "D3"  # no fit details known yet; 35 engagement
    assert scored[-1]["data"]["cause_event_id"] == "m-3"

    assigned = values(await read_topic(settings, LEAD_ASSIGNED, expect=1))
    assert assigned[0]["data"]["rep_id"] == "rep-ada"
    assert assigned[0]["data"]["strategy"] == "round_robin"

    async def owned() -> dict[str, Any] | None:
        lead = await lead_by_email(client, "dana@example.org")
        return lead if lead and lead["owner"] else None

    lead = await eventually(owned)
    assert lead["lead_id"] == lead_id
    assert lead["stage"] == "mql"
    assert lead["score"] == 35
    assert lead["owner"] == {"rep_id": "rep-ada", "name": "Ada Lovelace"}
    assert lead["identities"] == ["anon:anon-7", "email:dana@example.org"]
    assert lead["attributes"]["company"] == "Initech"

    detail = (await client.get(f"/leads/{lead_id}")).json()
    assert detail == lead

    async def clock_started() -> httpx.Response | None:
        response = await client.get(f"/sla/leads/{lead_id}")
        return response if response.status_code == 200 else None

    sla = (await eventually(clock_started)).json()
    clock = sla["clocks"][0]
    assert clock["policy"]["name"] == "accept-within-4-business-hours"
    assert clock["started_at"] == "2026-11-23T15:00:00+00:00"  # Monday 10:00 New York
    assert clock["deadline"] == "2026-11-23T19:00:00+00:00"  # four working hours later
    assert clock["status"] == "running"

    sla_events = values(await read_topic(settings, SLA_EVENTS, expect=1))
    assert sla_events[0]["data"]["kind"] == "clock_started"


async def test_round_robin_spreads_mqls_over_the_roster(
    pipeline: Runtime, client: httpx.AsyncClient
) -> None:
    for number in range(4):
        response = await client.post(
            "/v1/track",
            json=track(
                "form_submit",
                userId=f"user-{number}",
                messageId=f"demo-{number}",
                properties={"form": "demo-request"},
            ),
        )
        assert response.status_code == 200
    assigned = values(await read_topic(pipeline.settings, LEAD_ASSIGNED, expect=4))
    reps = sorted(event["data"]["rep_id"] for event in assigned)
    assert reps == ["rep-ada", "rep-ada", "rep-alan", "rep-grace"]


async def test_unknown_lead_and_clock_are_404(client: httpx.AsyncClient) -> None:
    for path in ("/leads/ld_missing", "/sla/leads/ld_missing", "/handoff/leads/ld_missing"):
        response = await client.get(path)
        assert response.status_code == 404
        assert "ld_missing" in response.json()["error"]["message"]
