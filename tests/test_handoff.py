"""The handoff service over the real broker and both databases: MQLs routed by the routing
file with the stored reps, capacity and away periods through the consumer, the queue and its
drain, re-routing on a missed deadline, and redelivery changing nothing.

`lead.mql`, `lead.mql_revoked` and `sla.events` records are produced here, as scoring and
the SLA monitor would; only the handoff part runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from handoff_service.accounts import record_owner
from handoff_service.models import Assignment
from handoff_service.queue import QueueDrainer
from handoff_service.routing_file import RoutingError
from schemas.events import LeadMqlData, LeadMqlRevokedData, RevocationReason, SlaEventData
from schemas.registry import MQL, MQL_REVOKED, SLA_EVENT, Contract
from schemas.topics import LEAD_ASSIGNED, LEAD_MQL, SLA_EVENTS
from services.bus import encode
from services.clock import ManualClock
from services.codec import envelope
from services.db import create_engine, session_factory
from services.launch.runtime import Runtime
from services.settings import Settings
from tests.conftest import EXAMPLES, MONDAY_10AM_NEW_YORK, http_client
from tests.support import eventually, produce, read_topic, values

REASON_CODES = yaml.safe_dump(
    {"reason_codes": yaml.safe_load((EXAMPLES / "routing.yaml").read_text())["reason_codes"]}
)
"""The example's reason codes, which the shipped CRM mappings name."""
ROUTING = (
    REASON_CODES
    + """\
pools:
  emea:
    strategy: round_robin
    fallback: queue
    on_breach: reassign
    max_reassignments: 1
  inbound:
    strategy: round_robin
    fallback: queue
    on_breach: queue
rules:
  - name: germany
    when: {country: DE}
    pool: emea
  - name: us
    when: {country: US}
    pool: inbound
reps:
  - {id: rep-a, name: Rep A, email: a@example.com, pools: [emea], capacity: 1}
  - {id: rep-b, name: Rep B, email: b@example.com, pools: [emea], capacity: 1}
  - id: rep-c
    name: Rep C
    email: c@example.com
    pools: [inbound]
    time_zone: America/New_York
    hours: {mon-fri: "09:00-17:00"}
"""
)


def record(contract: Contract, event_id: str, lead_id: str, data: Any) -> tuple[bytes, bytes]:
    event = envelope(
        contract,
        event_id=event_id,
        source="tests",
        type_=contract.name,
        time=MONDAY_10AM_NEW_YORK,
        subject=lead_id,
        data=data,
    )
    return lead_id.encode(), encode(event)


def mql(lead_id: str, *, cycle: int = 1, event_id: str | None = None, **attributes: Any) -> Any:
    data = LeadMqlData(
        lead_id=lead_id,
        email=f"{lead_id}@{lead_id}.example",
        cycle=cycle,
        score=120,
        grade="B1",
        reason="trigger",
        trigger="demo-request",
        rulebook_version="t",
        qualified_at=MONDAY_10AM_NEW_YORK,
        attributes=attributes,
    )
    return record(MQL, event_id or f"mql:{lead_id}:{cycle}", lead_id, data)


def revoked(lead_id: str, *, cycle: int = 1) -> Any:
    data = LeadMqlRevokedData(
        lead_id=lead_id,
        cycle=cycle,
        mql_event_id=f"mql:{lead_id}:{cycle}",
        reason=RevocationReason.DISQUALIFIED,
        detail="disqualified by competitor",
        current_lead_id=lead_id,
        revoked_at=MONDAY_10AM_NEW_YORK,
    )
    return record(MQL_REVOKED, f"revoked:{lead_id}:{cycle}", lead_id, data)


def breach(
    lead_id: str,
    rep_id: str,
    started_at: datetime,
    *,
    event_id: str | None = None,
    after: timedelta = timedelta(hours=4),
    **clock: Any,
) -> Any:
    """A breach as the SLA monitor reports it; `clock` may name the clock and attempt."""
    data = SlaEventData(
        lead_id=lead_id,
        cycle=1,
        kind="breached",
        policy="accept-within-4-business-hours",
        rep_id=rep_id,
        started_at=started_at,
        deadline=started_at + after,
        at=started_at + after,
        **clock,
    )
    return record(SLA_EVENT, event_id or f"sla:{lead_id}:1:{rep_id}:breached", lead_id, data)


@dataclass
class Handoff:
    runtime: Runtime
    http: httpx.AsyncClient
    clock: ManualClock

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    async def lead(self, lead_id: str) -> dict[str, Any] | None:
        response = await self.http.get(f"/handoff/leads/{lead_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def current(
        self, lead_id: str, check: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> dict[str, Any]:
        """The lead's latest attempt, once there is one that passes `check`."""

        async def probe() -> dict[str, Any] | None:
            found = await self.lead(lead_id)
            if not found or not found["assignments"]:
                return None
            latest: dict[str, Any] = found["assignments"][0]
            return latest if check(latest) else None

        return await eventually(probe)

    async def queued(self, lead_id: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            found = await self.lead(lead_id)
            return found["queued"][0] if found and found["queued"] else None

        return await eventually(probe)

    async def rows(self, lead_id: str) -> list[Assignment]:
        engine = create_engine(self.settings.effective_database_url)
        try:
            async with session_factory(engine)() as session:
                query = (
                    select(Assignment)
                    .where(Assignment.lead_id == lead_id)
                    .order_by(Assignment.cycle, Assignment.attempt)
                )
                return list((await session.scalars(query)).all())
        finally:
            await engine.dispose()


async def _running(settings: Settings, clock: ManualClock) -> AsyncIterator[Handoff]:
    runtime = Runtime(settings, clock, ["handoff"])
    await runtime.start()
    try:
        async with http_client(runtime) as http:
            yield Handoff(runtime, http, clock)
    finally:
        await runtime.stop()


@pytest.fixture
async def handoff(settings: Settings, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Handoff]:
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    async for running in _running(settings.model_copy(update={"routing": routing}), clock):
        yield running


async def test_capacity_queues_and_a_freed_rep_gets_the_queued_lead(handoff: Handoff) -> None:
    settings = handoff.settings
    await produce(settings, LEAD_MQL, [mql(f"ld_{n}", country="DE") for n in (1, 2)])
    first = await handoff.current("ld_1")
    second = await handoff.current("ld_2")
    await produce(settings, LEAD_MQL, [mql("ld_3", country="DE")])
    assert {first["rep_id"], second["rep_id"]} == {"rep-a", "rep-b"}
    assert (first["routing_rule"], first["pool"], first["strategy"], first["reason"]) == (
        "germany",
        "emea",
        "round_robin",
        "routed",
    )
    waiting = await handoff.queued("ld_3")
    assert waiting["why"] == "nobody_available"
    assert waiting["routing_rule"] == "germany"
    assert waiting["tried"] == ["emea"]
    assert sorted((skip["rep_id"], skip["reason"]) for skip in waiting["skipped"]) == [
        ("rep-a", "full"),
        ("rep-b", "full"),
    ]
    queue = (await handoff.http.get("/handoff/queue")).json()
    assert queue["total"] == 1
    assert [item["lead_id"] for item in queue["items"]] == ["ld_3"]
    reps = {rep["id"]: rep for rep in (await handoff.http.get("/reps")).json()["items"]}
    assert (reps["rep-a"]["open_leads"], reps["rep-a"]["unavailable"]) == (1, "full")

    # the first lead's MQL is revoked: its rep's capacity frees, the queued lead goes to them
    await produce(settings, LEAD_MQL, [revoked("ld_1")])
    closed = await handoff.current("ld_1", lambda a: a["status"] == "revoked")
    assert closed["closed_at"] is not None
    drained = await handoff.current("ld_3")
    assert (drained["rep_id"], drained["reason"]) == (first["rep_id"], "from_queue")
    assert (await handoff.http.get("/handoff/queue")).json() == {
        "total": 0,
        "items": [],
        "next_offset": None,
    }
    assigned = values(await read_topic(settings, LEAD_ASSIGNED, expect=3))
    assert sorted(event["id"] for event in assigned) == [
        "assigned:ld_1:1",
        "assigned:ld_2:1",
        "assigned:ld_3:1",
    ]
    (from_queue,) = [e["data"] for e in assigned if e["data"]["lead_id"] == "ld_3"]
    assert (from_queue["reason"], from_queue["pool"], from_queue["attempt"]) == (
        "from_queue",
        "emea",
        1,
    )


async def test_away_reps_are_skipped_and_a_rep_back_takes_the_queue(handoff: Handoff) -> None:
    settings, http = handoff.settings, handoff.http
    today = {"from": "2026-11-23", "note": "offsite"}
    response = await http.post("/reps/rep-a/away", json=today)
    assert response.status_code == 201, response.text
    assert response.json()["unavailable"] == "away"
    away_id = response.json()["away"][0]["id"]
    await produce(settings, LEAD_MQL, [mql("ld_1", country="de")])
    taken = await handoff.current("ld_1")
    assert taken["rep_id"] == "rep-b"
    assert taken["skipped"] == [{"rep_id": "rep-a", "reason": "away", "pool": "emea"}]

    await produce(settings, LEAD_MQL, [mql("ld_2", country="DE")])
    waiting = await handoff.queued("ld_2")
    assert sorted((s["rep_id"], s["reason"]) for s in waiting["skipped"]) == [
        ("rep-a", "away"),
        ("rep-b", "full"),
    ]
    deleted = await http.delete(f"/reps/rep-a/away/{away_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["away"] == []
    back = await handoff.current("ld_2")
    assert (back["rep_id"], back["reason"]) == ("rep-a", "from_queue")


async def test_queued_outside_hours_and_assigned_when_they_start(handoff: Handoff) -> None:
    settings, clock = handoff.settings, handoff.clock
    clock.set(datetime.fromisoformat("2026-11-23T18:00:00-05:00"))  # Monday evening in New York
    await produce(settings, LEAD_MQL, [mql("ld_us", country="US"), mql("ld_fr", country="FR")])
    evening = await handoff.queued("ld_us")
    assert evening["skipped"] == [{"rep_id": "rep-c", "reason": "outside_hours", "pool": "inbound"}]
    unmatched = await handoff.queued("ld_fr")
    assert (unmatched["why"], unmatched["routing_rule"], unmatched["tried"]) == (
        "no_rule",
        None,
        [],
    )
    clock.set(datetime.fromisoformat("2026-11-24T09:00:00-05:00"))  # Tuesday morning
    morning = await handoff.current("ld_us")
    assert (morning["rep_id"], morning["reason"]) == ("rep-c", "from_queue")
    queue = (await handoff.http.get("/handoff/queue")).json()
    assert [item["lead_id"] for item in queue["items"]] == ["ld_fr"]  # no rule takes it


async def test_a_missed_deadline_reassigns_once_and_redelivery_changes_nothing(
    handoff: Handoff,
) -> None:
    settings = handoff.settings
    await produce(settings, LEAD_MQL, [mql("ld_1", country="DE")])
    first = await handoff.current("ld_1")
    assert first["rep_id"] == "rep-a"
    started = datetime.fromisoformat(first["assigned_at"])
    await produce(settings, SLA_EVENTS, [breach("ld_1", "rep-a", started)])
    second = await handoff.current("ld_1", lambda a: a["attempt"] == 2)
    assert (second["rep_id"], second["reason"], second["pool"]) == (
        "rep-b",
        "reassigned_after_breach",
        "emea",
    )
    found = await handoff.lead("ld_1")
    assert found is not None
    previous = found["assignments"][1]
    assert (previous["attempt"], previous["status"], previous["rep_id"]) == (
        1,
        "reassigned",
        "rep-a",
    )
    assert previous["breached_at"] is not None
    assert "missed the accept deadline" in previous["status_reason"]

    # the same breach again (redelivered, or re-sent under another id), a breach of another
    # clock, and one of the new attempt's accept clock: at most one reassignment in this
    # pool, so the lead stays with rep-b, its breach recorded
    second_started = datetime.fromisoformat(second["assigned_at"])
    await produce(
        settings,
        SLA_EVENTS,
        [
            breach("ld_1", "rep-a", started),
            breach("ld_1", "rep-a", started, event_id="sla:resent"),
            breach("ld_1", "rep-a", started, event_id="sla:named", clock="accept", attempt=1),
            breach(
                "ld_1",
                "rep-b",
                second_started,
                event_id="sla:first-touch",
                after=timedelta(hours=1),
                clock="first_touch",
                attempt=2,
            ),
            breach("ld_1", "rep-b", second_started, clock="accept", attempt=2),
        ],
    )
    missed = await handoff.current("ld_1", lambda a: a["breached_at"] is not None)
    assert datetime.fromisoformat(missed["breached_at"]) == second_started + timedelta(hours=4)
    rows = await handoff.rows("ld_1")
    assert [(row.attempt, row.rep_id, row.status) for row in rows] == [
        (1, "rep-a", "reassigned"),
        (2, "rep-b", "assigned"),
    ]
    assigned = values(await read_topic(settings, LEAD_ASSIGNED, expect=2))
    assert [event["id"] for event in assigned] == ["assigned:ld_1:1", "assigned:ld_1:1:2"]
    assert assigned[1]["data"]["reason"] == "reassigned_after_breach"
    assert assigned[1]["data"]["attempt"] == 2


async def test_a_missed_deadline_in_a_queueing_pool_puts_the_lead_back(handoff: Handoff) -> None:
    settings = handoff.settings
    await produce(settings, LEAD_MQL, [mql("ld_1", country="US")])
    held = await handoff.current("ld_1")
    await produce(
        settings,
        SLA_EVENTS,
        [breach("ld_1", "rep-c", datetime.fromisoformat(held["assigned_at"]))],
    )
    waiting = await handoff.queued("ld_1")
    assert (waiting["why"], waiting["attempt"], waiting["excluded"]) == ("breach", 2, ["rep-c"])
    closed = await handoff.current("ld_1")
    assert closed["status"] == "reassigned"
    # nobody else is in the pool: it waits, never going back to the rep who missed it
    (drainer,) = [w for w in handoff.runtime.parts[0].workers if isinstance(w, QueueDrainer)]
    assert await drainer.drain_once(force=True) == 0
    assert (await handoff.queued("ld_1"))["excluded"] == ["rep-c"]


async def test_an_accounts_owner_gets_its_next_lead_and_its_rule_decides_a_breach(
    handoff: Handoff,
) -> None:
    settings = handoff.settings
    engine = create_engine(settings.effective_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            # as the accept action records it: rep-b accepted an earlier lead of Initech
            owned = await record_owner(
                session,
                "https://www.Initech.example/about",
                "rep-b",
                lead_id="ld_0",
                cycle=1,
                at=MONDAY_10AM_NEW_YORK,
            )
            assert owned
            again = await record_owner(
                session,
                "initech.example",
                "rep-a",
                lead_id="ld_9",
                cycle=1,
                at=MONDAY_10AM_NEW_YORK,
            )
            assert not again  # the owner is an active rep: the account stays theirs
    finally:
        await engine.dispose()
    await produce(settings, LEAD_MQL, [mql("ld_1", country="DE", company_domain="initech.example")])
    first = await handoff.current("ld_1")
    assert (first["rep_id"], first["reason"], first["strategy"], first["pool"]) == (
        "rep-b",
        "account_owner",
        "account_owner",
        None,
    )
    assert first["routing_rule"] == "germany"
    # a missed deadline: the rule's pool (emea) reassigns, past the owner who missed it
    started = datetime.fromisoformat(first["assigned_at"])
    await produce(settings, SLA_EVENTS, [breach("ld_1", "rep-b", started)])
    second = await handoff.current("ld_1", lambda a: a["attempt"] == 2)
    assert (second["rep_id"], second["reason"], second["pool"]) == (
        "rep-a",
        "reassigned_after_breach",
        "emea",
    )
    assert second["skipped"] == []


async def test_a_redelivered_or_repeated_mql_is_assigned_once(handoff: Handoff) -> None:
    settings = handoff.settings
    await produce(
        settings,
        LEAD_MQL,
        [
            mql("ld_1", country="DE"),
            mql("ld_1", country="DE"),
            mql("ld_1", country="DE", event_id="mql:ld_1:1:again"),
        ],
    )
    await handoff.current("ld_1")
    assigned = values(await read_topic(settings, LEAD_ASSIGNED, expect=1))
    assert [event["id"] for event in assigned] == ["assigned:ld_1:1"]
    assert len(await handoff.rows("ld_1")) == 1


async def test_a_bad_routing_file_stops_the_start_naming_file_line_and_field(
    settings: Settings, clock: ManualClock, tmp_path: Path
) -> None:
    bad = tmp_path / "routing.yaml"
    text = ROUTING.replace("    pool: inbound\n", "    pool: inbond\n")
    bad.write_text(text)
    line = text.splitlines().index("    pool: inbond") + 1
    with pytest.raises(RoutingError) as caught:
        Runtime(settings.model_copy(update={"routing": bad}), clock, ["handoff"])
    assert f"{bad} line {line}: rules[1].pool: unknown pool 'inbond'" in str(caught.value)
