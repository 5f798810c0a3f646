"""SLA clocks end to end, on the embedded broker with every service running: three MQLs are
assigned; one is accepted in time (met), one is rejected with a reason, and nobody answers
the third: it is warned, then breached when the injected clock passes its deadline, and the
handoff service reassigns it (the pool's `on_breach`), which cancels the missed clocks and
starts the next rep's. Rep actions come as `lead.status` records another system (a CRM)
produces."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from schemas.events import LeadStatusData
from schemas.registry import STATUS
from schemas.topics import LEAD_ASSIGNED, LEAD_STATUS, SLA_EVENTS
from services.bus import encode
from services.clock import ManualClock
from services.codec import envelope
from services.launch.runtime import Runtime
from services.settings import Settings
from tests.conftest import MONDAY_10AM_NEW_YORK
from tests.support import eventually, produce, read_topic, values

WARNING = MONDAY_10AM_NEW_YORK + timedelta(hours=3)  # 13:00 in New York
DEADLINE = MONDAY_10AM_NEW_YORK + timedelta(hours=4)  # 14:00: four business hours


async def rep_action(
    settings: Settings,
    assignment: dict[str, Any],
    action: str,
    at: datetime,
    reason: str | None = None,
) -> None:
    lead_id = assignment["lead_id"]
    data = LeadStatusData.model_validate(
        {
            "lead_id": lead_id,
            "cycle": assignment["cycle"],
            "status": action,
            "rep_id": assignment["rep_id"],
            "reason": reason,
            "at": at,
            "actor": "crm-test",
            "origin": "crm:test",
        }
    )
    event = envelope(
        STATUS,
        event_id=f"crm-test:{lead_id}:{action}",
        source="test/crm",
        type_="lead.status",
        time=at,
        subject=lead_id,
        data=data,
    )
    await produce(settings, LEAD_STATUS, [(lead_id.encode(), encode(event))])


async def clocks_of(client: httpx.AsyncClient, lead_id: str) -> dict[tuple[str, int], Any]:
    response = await client.get(f"/sla/leads/{lead_id}")
    if response.status_code != 200:
        return {}
    return {(each["clock"], each["attempt"]): each for each in response.json()["clocks"]}


async def test_met_rejected_warned_and_breached(
    pipeline: Runtime, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    settings = pipeline.settings
    for name in ("accepts", "rejects", "forgets"):
        response = await client.post(
            "/v1/track",
            json={
                "event": "form_submit",
                "userId": f"u-{name}",
                "messageId": f"demo-{name}",
                "traits": {"email": f"{name}@example.org"},
                "properties": {"form": "demo-request"},
            },
        )
        assert response.status_code == 200, response.text
    assigned = {
        event["data"]["lead_id"]: event["data"]
        for event in values(await read_topic(settings, LEAD_ASSIGNED, expect=3))
    }
    lead_of = {
        name: (await client.get("/leads", params={"email": f"{name}@example.org"})).json()["items"][
            0
        ]["lead_id"]
        for name in ("accepts", "rejects", "forgets")
    }
    accepts, rejects, forgets = (lead_of[name] for name in ("accepts", "rejects", "forgets"))
    assert set(assigned) == {accepts, rejects, forgets}

    async def started(lead_id: str) -> dict[tuple[str, int], Any]:
        found = await clocks_of(client, lead_id)
        return found if len(found) == 2 else {}

    for lead_id in assigned:
        opened = await eventually(lambda lead_id=lead_id: started(lead_id))  # type: ignore[misc]
        accept = opened["accept", 1]
        assert accept["status"] == "running"
        assert accept["policy"]["name"] == "accept-within-4-business-hours"
        assert accept["deadline"] == DEADLINE.isoformat()
        assert accept["rep_id"] == assigned[lead_id]["rep_id"]
        assert opened["first_touch", 1]["status"] == "running"

    answered_at = MONDAY_10AM_NEW_YORK + timedelta(minutes=30)
    await rep_action(settings, assigned[accepts], "accepted", answered_at)
    await rep_action(settings, assigned[rejects], "rejected", answered_at, reason="not_icp")

    async def ended(lead_id: str, key: tuple[str, int], status: str) -> dict[str, Any] | None:
        found = (await clocks_of(client, lead_id)).get(key)
        return found if found and found["status"] == status else None

    met = await eventually(lambda: ended(accepts, ("accept", 1), "met"))
    assert (met["action"], met["business_seconds"], met["ended_at"]) == (
        "accepted",
        1800.0,
        answered_at.isoformat(),
    )
    qualify = await eventually(lambda: ended(accepts, ("qualify", 1), "running"))
    assert qualify["policy"]["name"] == "qualify-within-10-business-days"
    rejected = await eventually(lambda: ended(rejects, ("accept", 1), "met"))
    assert (rejected["action"], rejected["reason"]) == ("rejected", "not_icp")
    await eventually(lambda: ended(rejects, ("first_touch", 1), "cancelled"))

    clock.set(WARNING + timedelta(seconds=1))

    async def warned() -> dict[str, Any] | None:
        found = (await clocks_of(client, forgets)).get(("accept", 1))
        return found if found and found["warned_at"] else None

    assert (await eventually(warned))["warned_at"] == WARNING.isoformat()

    clock.set(DEADLINE + timedelta(seconds=1))

    async def reassigned() -> dict[str, Any] | None:
        published = values(await read_topic(settings, LEAD_ASSIGNED, expect=4, timeout=2))
        again = [each["data"] for each in published if each["data"]["attempt"] == 2]
        return again[0] if again else None

    second = await eventually(reassigned)  # the inbound pool's on_breach: back to the queue
    assert second["lead_id"] == forgets
    assert second["rep_id"] != assigned[forgets]["rep_id"]  # never the rep who missed it

    async def next_clock_started() -> list[dict[str, Any]] | None:
        events = values(await read_topic(settings, SLA_EVENTS, expect=16, timeout=2))
        kinds = [(each["data"]["attempt"], each["data"]["kind"]) for each in events]
        return events if kinds.count((2, "clock_started")) == 2 else None

    events = await eventually(next_clock_started)

    def story(lead_id: str) -> list[tuple[str, int, str]]:
        return [
            (each["data"]["clock"], each["data"]["attempt"], each["data"]["kind"])
            for each in events
            if each["data"]["lead_id"] == lead_id
        ]

    assert story(accepts) == [
        ("accept", 1, "clock_started"),
        ("first_touch", 1, "clock_started"),
        ("accept", 1, "met"),
        ("qualify", 1, "clock_started"),
    ]
    assert story(rejects) == [
        ("accept", 1, "clock_started"),
        ("first_touch", 1, "clock_started"),
        ("accept", 1, "met"),
        ("first_touch", 1, "cancelled"),
    ]
    assert story(forgets) == [
        ("accept", 1, "clock_started"),
        ("first_touch", 1, "clock_started"),
        ("accept", 1, "warning"),
        ("accept", 1, "breached"),
        ("accept", 1, "cancelled"),
        ("first_touch", 1, "cancelled"),
        ("accept", 2, "clock_started"),
        ("first_touch", 2, "clock_started"),
    ]
    breach = next(each for each in events if each["data"]["kind"] == "breached")
    assert breach["id"] == f"sla:{forgets}:1:accept:1:breached"
    data = breach["data"]
    assert (data["at"], data["deadline"], data["on_breach"], data["rep_id"]) == (
        "2026-11-23T19:00:00Z",
        "2026-11-23T19:00:00Z",
        "reassign",
        assigned[forgets]["rep_id"],
    )
    assert (data["business_seconds"], data["wall_seconds"]) == (4 * 3600.0, 4 * 3600.0)
    ids = [each["id"] for each in events]
    assert len(ids) == len(set(ids)), "every transition is published once"

    now = await clocks_of(client, forgets)
    missed, next_one = now["accept", 1], now["accept", 2]
    assert (missed["status"], missed["breached_at"], missed["reason"]) == (
        "cancelled",
        DEADLINE.isoformat(),
        f"reassigned to {second['rep_id']}",
    )
    assert (next_one["status"], next_one["rep_id"]) == ("running", second["rep_id"])
    assert next_one["started_at"] == second["assigned_at"].replace("Z", "+00:00")
