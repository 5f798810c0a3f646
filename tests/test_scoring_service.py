"""The scoring service against the real broker and databases: event-time determinism,
identity stitching and merges, rulebook versions, simulation, re-apply and recycling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from schemas.events import ActivityData, ActivityType, Identity, LeadStatusData
from schemas.registry import STATUS
from schemas.topics import LEAD_ACTIVITY, LEAD_MQL, LEAD_SCORED, LEAD_STATUS
from scoring_service import engine, store
from scoring_service.consumer import ActivityApplier, parse_activity
from scoring_service.identity import lead_id_for, person_id
from scoring_service.models import Lead
from scoring_service.rulebooks import RulebookCache, install_configured
from scoring_service.rules import parse_rulebook_text
from services.clock import ManualClock
from services.codec import envelope
from services.db import create_engine, session_factory
from services.gateway.clean import activity_event
from services.launch.runtime import Runtime
from services.outbox import write_pending
from services.settings import Settings
from tests.conftest import OPS_KEY, http_client
from tests.support import eventually, produce, read_topic, values

RULEBOOK = """
version: "t-1"
mql: {threshold: 30}
fit:
  - name: software
    if: {industry: software}
    points: 10
engagement:
  - name: page-view
    when: {activity: page_view}
    points: 5
  - name: webinar
    when: {activity: webinar_attend}
    points: 20
triggers:
  - name: demo-request
    when: {activity: form_submit, form: demo-request}
"""
LOWER_THRESHOLD = RULEBOOK.replace('"t-1"', '"t-2"').replace("threshold: 30", "threshold: 10")
T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def activity(
    event_id: str,
    minutes: int,
    kind: ActivityType = ActivityType.PAGE_VIEW,
    *,
    email: str | None = None,
    user: str | None = None,
    anon: str | None = None,
    **properties: Any,
) -> tuple[bytes, bytes]:
    identity = Identity(email=email, user_id=user, anonymous_id=anon)
    time = T0 + timedelta(minutes=minutes)
    attributes = properties.pop("attributes", {})
    event = activity_event(
        event_id=event_id,
        source="test",
        time=time,
        identity=identity,
        activity_type=kind,
        event_name=kind.value,
        properties=properties,
        attributes=attributes,
        context={},
        channel="test",
        received_at=time,
    )
    return identity.key().encode(), event.model_dump_json().encode()


@pytest.fixture
async def scoring(settings: Settings, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Runtime]:
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(RULEBOOK)
    runtime = Runtime(
        settings.model_copy(update={"rulebook": rulebook}), clock, ["scoring", "handoff"]
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
async def client(scoring: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(scoring) as http:
        yield http


async def leads(settings: Settings) -> list[Lead]:
    db = create_engine(settings.effective_database_url)
    try:
        async with session_factory(db)() as session:
            return list((await session.scalars(select(Lead).order_by(Lead.id))).all())
    finally:
        await db.dispose()


async def lead_json(client: httpx.AsyncClient, lead_id: str) -> dict[str, Any] | None:
    response = await client.get(f"/leads/{lead_id}")
    return response.json() if response.status_code == 200 else None


async def test_late_events_score_exactly_as_in_event_time_order(
    scoring: Runtime, client: httpx.AsyncClient
) -> None:
    settings = scoring.settings
    events = [
        activity(f"e{n}", minutes, user="late") for n, minutes in enumerate([50, 10, 40, 0, 30, 20])
    ]
    for one in events:  # one batch each, newest first for some: late arrivals
        await produce(settings, LEAD_ACTIVITY, [one])
    lead_id = lead_id_for("user:late")

    async def all_applied() -> dict[str, Any] | None:
        lead = await lead_json(client, lead_id)
        return lead if lead and lead["score"] == 30 else None

    lead = await eventually(all_applied)
    assert lead["stage"] == "mql"
    records = [
        engine.ActivityRecord(
            json.loads(value)["id"],
            datetime.fromisoformat(json.loads(value)["time"]),
            ActivityData.model_validate(json.loads(value)["data"]),
        )
        for _, value in events
    ]
    expected, steps = engine.replay(parse_rulebook_text(RULEBOOK), records)
    stored = next(row for row in await leads(settings) if row.id == lead_id)
    assert stored.state == expected.to_json()
    mqls = values(await read_topic(settings, LEAD_MQL, expect=1))
    assert len(mqls) == 1
    qualifying = next(step.qualification for step in steps if step.qualification)
    assert mqls[0]["data"]["qualified_at"] == qualifying.time.isoformat().replace("+00:00", "Z")


async def test_anonymous_history_joins_the_known_lead_and_known_leads_merge(
    scoring: Runtime, client: httpx.AsyncClient
) -> None:
    settings = scoring.settings
    await produce(
        settings,
        LEAD_ACTIVITY,
        [
            activity("a1", 0, anon="visitor"),
            activity("a2", 1, anon="visitor"),
        ],
    )
    await produce(
        settings, LEAD_ACTIVITY, [activity("k1", 2, email="kim@corp.example", user="u-kim")]
    )
    anonymous_id = lead_id_for("anon:visitor")
    known_id = person_id(["email:kim@corp.example", "user:u-kim"])
    await eventually(lambda: lead_json(client, anonymous_id))
    await eventually(lambda: lead_json(client, known_id))

    # the visitor identifies as Kim: one person, whose id comes from all three keys
    await produce(
        settings,
        LEAD_ACTIVITY,
        [
            activity(
                "k2",
                3,
                ActivityType.IDENTIFY,
                email="kim@corp.example",
                anon="visitor",
                attributes={"industry": "software"},
            ),
        ],
    )

    final_id = person_id(["anon:visitor", "email:kim@corp.example", "user:u-kim"])
    other_id = known_id if final_id == anonymous_id else anonymous_id

    async def merged() -> dict[str, Any] | None:
        lead = await lead_json(client, other_id)
        return lead if lead and len(lead["identities"]) == 3 else None

    survivor = await eventually(merged)
    assert survivor["lead_id"] == final_id
    assert survivor["identities"] == ["anon:visitor", "email:kim@corp.example", "user:u-kim"]
    assert survivor["merged_from"] == other_id
    assert survivor["fit"] == 10
    assert survivor["score"] == 25  # three page views before + software fit
    by_own_id = await lead_json(client, final_id)
    assert by_own_id is not None and "merged_from" not in by_own_id
    listed = (await client.get("/leads", params={"email": "kim@corp.example"})).json()
    assert [item["lead_id"] for item in listed["items"]] == [final_id]
    assert "merged_from" not in listed["items"][0]
    scored = values(await read_topic(settings, LEAD_SCORED, expect=3))
    assert any(other_id in event["data"]["merged_ids"] for event in scored)


async def test_management_api_needs_a_key_with_the_right_role(scoring: Runtime) -> None:
    async with http_client(scoring, api_key=None) as anonymous:
        response = await anonymous.get("/leads")
        assert response.status_code == 401
        assert "API key" in response.json()["error"]["message"]
    async with http_client(scoring, api_key=OPS_KEY) as ops:
        assert (await ops.get("/leads")).status_code == 200
        forbidden = await ops.post("/rulebooks", content=LOWER_THRESHOLD)
        assert forbidden.status_code == 403
        assert "admin" in forbidden.json()["error"]["message"]
    async with http_client(scoring, api_key="lf_admin_wrong") as wrong:
        assert (await wrong.get("/leads")).status_code == 401


async def test_rulebook_versions_simulation_and_reapply(
    scoring: Runtime, client: httpx.AsyncClient
) -> None:
    settings = scoring.settings
    await produce(
        settings,
        LEAD_ACTIVITY,
        [
            activity(
                "d1", 0, ActivityType.FORM_SUBMIT, email="demo@corp.example", form="demo-request"
            ),
            activity("p1", 1, email="pat@corp.example"),
            activity("p2", 2, email="pat@corp.example"),
            activity("q1", 3, email="quinn@corp.example"),
        ],
    )
    pat = lead_id_for("email:pat@corp.example")

    async def pat_scored() -> dict[str, Any] | None:
        lead = await lead_json(client, pat)
        return lead if lead and lead["score"] == 10 else None

    await eventually(pat_scored)
    await eventually(lambda: lead_json(client, lead_id_for("email:quinn@corp.example")))
    assert len(values(await read_topic(settings, LEAD_MQL, expect=1))) == 1

    bad = await client.post("/rulebooks", content="version: x\nmql: {threshold: -1}\n")
    assert bad.status_code == 422
    assert "line 2" in bad.json()["error"]["message"]
    assert "mql.threshold" in bad.json()["error"]["message"]

    window = {"from": T0.isoformat(), "to": (T0 + timedelta(days=1)).isoformat()}
    before = [(row.id, row.score, row.stage) for row in await leads(settings)]
    simulated = await client.post("/rulebooks/simulate", params=window, content=LOWER_THRESHOLD)
    assert simulated.status_code == 200, simulated.text
    body = simulated.json()
    assert body["active"]["mqls"] == 1
    assert body["candidate"]["mqls"] == 2  # pat reaches 10; quinn (5) does not
    assert body["candidate"]["by_reason"] == {"demo-request": 1, "threshold": 1}
    assert body["difference"] == 1
    assert [(row.id, row.score, row.stage) for row in await leads(settings)] == before

    uploaded = await client.post(
        "/rulebooks", content=LOWER_THRESHOLD, headers={"content-type": "application/yaml"}
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["active"] is False
    clash = await client.post(
        "/rulebooks", content=LOWER_THRESHOLD.replace("points: 5", "points: 6")
    )
    assert clash.status_code == 409
    versions = (await client.get("/rulebooks")).json()["items"]
    assert [(item["version"], item["active"]) for item in versions] == [
        ("t-1", True),
        ("t-2", False),
    ]

    started = await client.post("/rulebooks/t-2/activate")
    assert started.status_code == 202
    job_id = started.json()["job_id"]

    async def finished() -> dict[str, Any] | None:
        job = (await client.get(f"/jobs/{job_id}")).json()
        return job if job["status"] != "running" else None

    job = await eventually(finished)
    assert job["status"] == "done", job
    assert (job["done"], job["total"], job["progress"]) == (3, 3, 1.0)
    assert job["result"] == {"rescored": 3, "new_mqls": 1}
    mqls = values(await read_topic(settings, LEAD_MQL, expect=2))
    assert sorted(event["data"]["lead_id"] for event in mqls) == sorted(
        [lead_id_for("email:demo@corp.example"), pat]
    )  # no second MQL for the demo lead
    rescored = [
        event
        for event in values(await read_topic(settings, LEAD_SCORED, expect=6))
        if event["data"]["rulebook_version"] == "t-2"
    ]
    assert len(rescored) == 3
    assert (await client.get("/rulebooks")).json()["items"][1]["active"] is True


async def test_recycled_lead_can_qualify_again_in_a_new_cycle(
    scoring: Runtime, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    settings = scoring.settings
    await produce(
        settings,
        LEAD_ACTIVITY,
        [
            activity("r1", 0, ActivityType.WEBINAR_ATTEND, email="rae@corp.example"),
            activity("r2", 1, ActivityType.WEBINAR_ATTEND, email="rae@corp.example"),
        ],
    )
    rae = lead_id_for("email:rae@corp.example")

    async def owned() -> dict[str, Any] | None:
        lead = await lead_json(client, rae)
        return lead if lead and lead["owner"] else None

    assert (await eventually(owned))["mql_cycle"] == 1
    recycled = envelope(
        STATUS,
        event_id="status-1",
        source="test",
        type_="lead.status",
        time=T0 + timedelta(hours=1),
        subject=rae,
        data=LeadStatusData(
            lead_id=rae,
            cycle=1,
            status="recycled",
            reason="no budget yet",
            at=T0 + timedelta(hours=1),
        ),
    )
    await produce(settings, LEAD_STATUS, [(rae.encode(), recycled.model_dump_json().encode())])

    async def nurtured() -> dict[str, Any] | None:
        lead = await lead_json(client, rae)
        return lead if lead and lead["stage"] == "nurture" else None

    lead = await eventually(nurtured)
    assert lead["engagement"] == 0  # the rulebook's recycle policy: reset
    assert lead["owner"] is None
    await produce(
        settings,
        LEAD_ACTIVITY,
        [
            activity("r3", 120, ActivityType.WEBINAR_ATTEND, email="rae@corp.example"),
            activity("r4", 121, ActivityType.WEBINAR_ATTEND, email="rae@corp.example"),
        ],
    )
    mqls = values(await read_topic(settings, LEAD_MQL, expect=2))
    assert [event["data"]["cycle"] for event in mqls] == [1, 2]
    assert (await eventually(owned))["stage"] == "mql"


async def test_a_lead_merged_twice_in_one_batch_points_at_the_final_survivor(
    database_url: str, tmp_path: Path
) -> None:
    """Visitor A folds into B, then B into C, all in one batch: every merged-away id must
    lead to C, including A, which the batch created and never stored before."""
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(RULEBOOK)
    engine_ = create_engine(database_url)
    sessions = session_factory(engine_)
    clock = ManualClock(T0 + timedelta(days=1))
    applier = ActivityApplier(RulebookCache(), clock)
    batch = [
        activity("m1", 0, email="cy@corp.example"),
        activity("m2", 1, user="u-b"),
        activity("m3", 2, anon="a-1"),
        activity("m4", 3, user="u-b", anon="a-1"),  # A (newer history) into B
        activity("m5", 4, user="u-b", email="cy@corp.example"),  # B into C
    ]
    try:
        async with sessions() as session, session.begin():
            await install_configured(session, rulebook, clock=clock)
        async with sessions() as session, session.begin():
            incoming = [parse_activity(LEAD_ACTIVITY, value) for _, value in batch]
            await applier.apply_batch(session, incoming)
            await write_pending(session)
        keys = ["email:cy@corp.example", "user:u-b", "anon:a-1"]
        survivor = person_id(keys)
        async with sessions() as session:
            for merged in {lead_id_for(key) for key in keys} - {survivor}:
                lead = await session.get(Lead, merged)
                assert lead is not None and lead.merged_into == survivor
                resolved = await store.resolve_merged(session, merged)
                assert resolved is not None and resolved.id == survivor
            final = await session.get(Lead, survivor)
            assert final is not None and final.score == 25  # five page views, one lead
    finally:
        await engine_.dispose()
