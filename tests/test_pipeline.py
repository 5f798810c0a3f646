"""End to end through HTTP and Kafka: tracked activity becomes an MQL, an owner and a clock."""

from __future__ import annotations

from typing import Any

import httpx

from schemas.topics import LEAD_ACTIVITY, LEAD_ASSIGNED, LEAD_MQL, LEAD_SCORED, SLA_EVENTS
from services.launch.runtime import Runtime
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
    assert assigned[0]["id"] == f"assigned:{lead_id}:1"
    # no routing rule but the catch-all matches: the inbound pool, whose strategy is load_balanced
    assert assigned[0]["data"]["rep_id"] == "rep-ada"
    assert assigned[0]["data"]["routing_rule"] == "everyone-else"
    assert assigned[0]["data"]["pool"] == "inbound"
    assert assigned[0]["data"]["strategy"] == "load_balanced"
    assert assigned[0]["data"]["reason"] == "routed"

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


async def test_the_inbound_pool_spreads_mqls_over_its_reps(
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


async def test_a_demo_request_from_germany_is_routed_by_its_country_rule(
    pipeline: Runtime, client: httpx.AsyncClient
) -> None:
    """The routing file's rules decide the pool: a German lead goes to the EMEA pool's rep,
    a lead no other rule takes to the catch-all rule's pool."""
    for number, (email, country) in enumerate(
        [("dana@initech.example", "DE"), ("sam@acme.example", "US")]
    ):
        response = await client.post(
            "/v1/track",
            json=track(
                "form_submit",
                userId=f"user-{number}",
                messageId=f"demo-{number}",
                traits={"email": email, "country": country},
                properties={"form": "demo-request"},
            ),
        )
        assert response.status_code == 200, response.text
    mqls = values(await read_topic(pipeline.settings, LEAD_MQL, expect=2))
    country_of = {m["data"]["lead_id"]: m["data"]["attributes"]["country"] for m in mqls}
    assigned = values(await read_topic(pipeline.settings, LEAD_ASSIGNED, expect=2))
    routed = {
        country_of[event["data"]["lead_id"]]: (
            event["data"]["rep_id"],
            event["data"]["routing_rule"],
            event["data"]["pool"],
            event["data"]["strategy"],
            event["data"]["reason"],
        )
        for event in assigned
    }
    assert routed == {
        "DE": ("rep-alan", "emea-by-country", "emea", "round_robin", "routed"),
        "US": ("rep-ada", "everyone-else", "inbound", "load_balanced", "routed"),
    }
    (german,) = [lead for lead, country in country_of.items() if country == "DE"]
    detail = (await client.get(f"/handoff/leads/{german}")).json()
    (attempt,) = detail["assignments"]
    assert (attempt["attempt"], attempt["routing_rule"], attempt["tried"]) == (
        1,
        "emea-by-country",
        ["emea"],
    )
    assert (attempt["rep_name"], attempt["status"], attempt["skipped"]) == (
        "Alan Turing",
        "assigned",
        [],
    )

    async def owned() -> dict[str, Any] | None:
        lead = (await client.get(f"/leads/{german}")).json()
        return lead if lead["owner"] else None

    assert (await eventually(owned))["owner"] == {"rep_id": "rep-alan", "name": "Alan Turing"}


async def test_unknown_lead_and_clock_are_404(client: httpx.AsyncClient) -> None:
    for path in ("/leads/ld_missing", "/sla/leads/ld_missing", "/handoff/leads/ld_missing"):
        response = await client.get(path)
        assert response.status_code == 404
        assert "ld_missing" in response.json()["error"]["message"]


async def test_a_late_personal_email_revokes_the_mql_closes_the_assignment_and_the_clock(
    pipeline: Runtime, client: httpx.AsyncClient
) -> None:
    """The identify (keyed by e-mail) is older than the demo request (keyed by user id) but
    arrives after it: the MQL that went out is revoked, and sales is told through the
    handoff and the SLA clock, with the reason."""
    settings = pipeline.settings
    first = [
        {
            "type": "identify",
            "userId": "u-quinn",
            "timestamp": "2026-11-23T10:05:00Z",
            "traits": {"company": "Initech", "employees": 800, "industry": "software"},
        },
        {
            "type": "track",
            "event": "form_submit",
            "userId": "u-quinn",
            "timestamp": "2026-11-23T10:10:00Z",
            "properties": {"form": "demo-request"},
        },
    ]
    response = await client.post("/v1/batch", json={"batch": first})
    assert response.status_code == 200, response.text
    (mql,) = values(await read_topic(settings, LEAD_MQL, expect=1))
    lead_id = mql["data"]["lead_id"]

    async def assignment(status: str) -> dict[str, Any] | None:
        response = await client.get(f"/handoff/leads/{lead_id}")
        if response.status_code != 200:
            return None
        current: dict[str, Any] = response.json()["assignments"][0]
        return current if current["status"] == status else None

    async def sla_clock(status: str) -> dict[str, Any] | None:
        response = await client.get(f"/sla/leads/{lead_id}")
        if response.status_code != 200:
            return None
        current: dict[str, Any] = response.json()["clocks"][0]
        return current if current["status"] == status else None

    await eventually(lambda: assignment("assigned"))
    await eventually(lambda: sla_clock("running"))

    late = {
        "userId": "u-quinn",
        "timestamp": "2026-11-23T10:00:00Z",
        "traits": {"email": "quinn@gmail.com"},
    }
    assert (await client.post("/v1/identify", json=late)).status_code == 200

    published = values(await read_topic(settings, LEAD_MQL, expect=2))
    assert [event["type"] for event in published] == ["lead.mql", "lead.mql_revoked"]
    revoked = published[1]["data"]
    assert revoked["mql_event_id"] == mql["id"]
    assert (revoked["reason"], revoked["detail"]) == (
        "disqualified",
        "disqualified by personal-email",
    )
    closed = await eventually(lambda: assignment("revoked"))
    assert closed["status_reason"] == "disqualified: disqualified by personal-email"
    cancelled = await eventually(lambda: sla_clock("cancelled"))
    assert cancelled["reason"] == "disqualified: disqualified by personal-email"
    assert cancelled["overdue"] is False
    sla_events = values(await read_topic(settings, SLA_EVENTS, expect=4))
    assert [(event["data"]["clock"], event["data"]["kind"]) for event in sla_events] == [
        ("accept", "clock_started"),
        ("first_touch", "clock_started"),
        ("accept", "cancelled"),
        ("first_touch", "cancelled"),
    ]

    lead = (await client.get(f"/leads/{lead_id}")).json()
    assert lead["stage"] == "lead"
    assert lead["disqualified_by"] == ["personal-email"]
    assert lead["owner"] is None
