"""Clocks in the database, without the broker: what the SLA consumer does with MQLs,
assignments, rep actions and revocations, and the scheduler that fires warnings and breaches
exactly once (two schedulers at a time, a restart between warning and breach, an outage)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from schemas.envelope import CloudEvent
from schemas.events import (
    LeadAssignedData,
    LeadMqlData,
    LeadMqlRevokedData,
    LeadStatusData,
    RevocationReason,
)
from schemas.registry import ASSIGNED, MQL, MQL_REVOKED, STATUS, Contract
from services.app import create_app
from services.bus import Publisher
from services.clock import ManualClock
from services.codec import envelope
from services.context import AppContext
from services.db import create_engine, session_factory
from services.models import OutboxRecord
from services.outbox import write_pending
from sla_monitor.api import build_router
from sla_monitor.consumer import SlaConsumer, SlaInput
from sla_monitor.models import SlaClock
from sla_monitor.policy import SlaPolicy, load_policy
from sla_monitor.scheduler import SlaScheduler
from tests.conftest import ADMIN_KEY, EXAMPLES, make_settings

POLICY = load_policy(EXAMPLES / "sla.yaml")
T0 = datetime(2026, 11, 23, 15, tzinfo=UTC)  # Monday 10:00 in New York
ACCEPT_DEADLINE = datetime(2026, 11, 23, 19, tzinfo=UTC)  # four business hours later
ACCEPT_WARNING = ACCEPT_DEADLINE - timedelta(hours=1)
MINUTE = timedelta(minutes=1)


def event(contract: Contract, event_id: str, lead_id: str, data: Any) -> SlaInput:
    built: Any = envelope(
        contract,
        event_id=event_id,
        source="test",
        type_=contract.name,
        time=T0,
        subject=lead_id,
        data=data,
    )
    return CloudEvent[type(data)].model_validate(built.model_dump())  # type: ignore[misc,no-any-return]


def mql(lead_id: str, cycle: int = 1, **details: Any) -> SlaInput:
    data = LeadMqlData(
        lead_id=lead_id,
        cycle=cycle,
        score=120,
        grade=details.pop("grade", "D3"),
        reason="trigger",
        trigger=details.pop("trigger", "demo-request"),
        rulebook_version="v1",
        qualified_at=T0,
        attributes=details,
        source="webinar",
    )
    return event(MQL, f"mql:{lead_id}:{cycle}", lead_id, data)


def assigned(
    lead_id: str, rep: str = "rep-ada", *, attempt: int = 1, at: datetime = T0, cycle: int = 1
) -> SlaInput:
    data = LeadAssignedData(
        lead_id=lead_id,
        cycle=cycle,
        rep_id=rep,
        rep_name=rep,
        rep_email=f"{rep}@example.com",
        routing_rule="everyone-else",
        strategy="round_robin",
        assigned_at=at,
        mql_event_id=f"mql:{lead_id}:{cycle}",
        pool="inbound",
        attempt=attempt,
    )
    return event(ASSIGNED, f"assigned:{lead_id}:{cycle}:{attempt}", lead_id, data)


def status(
    lead_id: str, action: str, at: datetime, *, reason: str | None = None, cycle: int = 1
) -> SlaInput:
    data = LeadStatusData.model_validate(
        {
            "lead_id": lead_id,
            "cycle": cycle,
            "status": action,
            "rep_id": "rep-ada",
            "reason": reason,
            "at": at,
        }
    )
    return event(STATUS, f"status:{lead_id}:{cycle}:{action}", lead_id, data)


def revoked(lead_id: str, at: datetime, cycle: int = 1) -> SlaInput:
    data = LeadMqlRevokedData(
        lead_id=lead_id,
        cycle=cycle,
        mql_event_id=f"mql:{lead_id}:{cycle}",
        reason=RevocationReason.DISQUALIFIED,
        detail="disqualified by personal-email",
        current_lead_id=lead_id,
        revoked_at=at,
    )
    return event(MQL_REVOKED, f"revoked:{lead_id}:{cycle}", lead_id, data)


@dataclass
class Sla:
    """The SLA monitor's consumer and schedulers on one database, no broker."""

    url: str
    clock: ManualClock
    policy: SlaPolicy = POLICY
    engines: list[AsyncEngine] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sessions = self.connect()
        self.consumer = SlaConsumer(self.policy, self.clock)

    def connect(self) -> async_sessionmaker[AsyncSession]:
        engine = create_engine(self.url)
        self.engines.append(engine)
        return session_factory(engine)

    def scheduler(self) -> SlaScheduler:
        """A scheduler of its own, on its own engine: another worker, or one restarted."""
        return SlaScheduler(self.connect(), self.policy, self.clock, poll_interval=0.05)

    async def apply(self, *events: SlaInput) -> None:
        async with self.sessions() as session, session.begin():
            await self.consumer.apply_batch(session, events)
            await write_pending(session)

    async def events(self) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(OutboxRecord.payload)
                .where(OutboxRecord.service == "sla")
                .order_by(OutboxRecord.id)
            )
            return [json.loads(payload) for payload in rows]

    async def kinds(self, lead_id: str) -> list[tuple[str, int, str]]:
        """(clock, attempt, kind) of the lead's `sla.events`, in order."""
        return [
            (each["data"]["clock"], each["data"]["attempt"], each["data"]["kind"])
            for each in await self.events()
            if each["data"]["lead_id"] == lead_id
        ]

    async def clocks(self, lead_id: str) -> dict[tuple[str, int], SlaClock]:
        async with self.sessions() as session:
            rows = await session.scalars(select(SlaClock).where(SlaClock.lead_id == lead_id))
            return {(row.clock, row.attempt): row for row in rows}

    async def close(self) -> None:
        for engine in self.engines:
            await engine.dispose()


@pytest.fixture
async def sla(sqlite_url: str) -> AsyncIterator[Sla]:
    running = Sla(sqlite_url, ManualClock(T0))
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def sla_on_both(database_url: str) -> AsyncIterator[Sla]:
    running = Sla(database_url, ManualClock(T0))
    try:
        yield running
    finally:
        await running.close()


# --- the consumer ---------------------------------------------------------------------------


async def test_an_assignment_starts_accept_and_first_touch_an_acceptance_ends_one(
    sla: Sla,
) -> None:
    await sla.apply(mql("ld_a"), assigned("ld_a"))
    clocks = await sla.clocks("ld_a")
    accept, first_touch = clocks["accept", 1], clocks["first_touch", 1]
    assert (accept.policy, accept.status, accept.deadline) == (
        "accept-within-4-business-hours",
        "running",
        ACCEPT_DEADLINE,
    )
    assert (accept.warn_at, accept.due_at, accept.calendar, accept.target) == (
        ACCEPT_WARNING,
        ACCEPT_WARNING,
        "new-york",
        "4h",
    )
    assert first_touch.deadline == T0 + timedelta(days=1)  # one business day: Tuesday 10:00
    assert (accept.rep_id, accept.pool) == ("rep-ada", "inbound")

    await sla.apply(status("ld_a", "accepted", T0 + timedelta(minutes=90)))
    clocks = await sla.clocks("ld_a")
    accept = clocks["accept", 1]
    assert (accept.status, accept.action, accept.due_at) == ("met", "accepted", None)
    assert (accept.business_seconds, accept.wall_seconds) == (5400, 5400)
    qualify = clocks["qualify", 1]
    assert (qualify.status, qualify.started_at) == ("running", T0 + timedelta(minutes=90))
    assert qualify.policy == "qualify-within-10-business-days"

    await sla.apply(status("ld_a", "contacted", T0 + timedelta(hours=2)))
    assert (await sla.clocks("ld_a"))["first_touch", 1].status == "met"
    assert await sla.kinds("ld_a") == [
        ("accept", 1, "clock_started"),
        ("first_touch", 1, "clock_started"),
        ("accept", 1, "met"),
        ("qualify", 1, "clock_started"),
        ("first_touch", 1, "met"),
    ]
    met = next(each for each in await sla.events() if each["data"]["kind"] == "met")
    assert met["id"] == "sla:ld_a:1:accept:1:met"
    assert met["type"] == "sla.met"
    assert met["time"] == "2026-11-23T16:30:00Z"
    data = met["data"]
    assert (data["policy"], data["target"], data["calendar"], data["state"]) == (
        "accept-within-4-business-hours",
        "4h",
        "new-york",
        "met",
    )
    assert (data["business_seconds"], data["wall_seconds"], data["on_breach"]) == (
        5400.0,
        5400.0,
        "reassign",
    )
    assert data["deadline"] == "2026-11-23T19:00:00Z"


async def test_a_rejection_ends_accept_and_cancels_first_touch(sla: Sla) -> None:
    await sla.apply(mql("ld_r"), assigned("ld_r"))
    await sla.apply(status("ld_r", "rejected", T0 + MINUTE, reason="not_icp"))
    clocks = await sla.clocks("ld_r")
    assert (clocks["accept", 1].status, clocks["accept", 1].reason) == ("met", "not_icp")
    assert (clocks["first_touch", 1].status, clocks["first_touch", 1].reason) == (
        "cancelled",
        "rejected",
    )
    assert ("qualify", 1) not in clocks
    assert await sla.kinds("ld_r") == [
        ("accept", 1, "clock_started"),
        ("first_touch", 1, "clock_started"),
        ("accept", 1, "met"),
        ("first_touch", 1, "cancelled"),
    ]


async def test_an_answer_after_the_deadline_is_met_late_breached_or_not(sla: Sla) -> None:
    later = ACCEPT_DEADLINE + timedelta(minutes=30)
    # the scheduler never ran before the answer came: met_late without a breach
    await sla.apply(mql("ld_n"), assigned("ld_n"))
    await sla.apply(status("ld_n", "accepted", later))
    # the breach went out first: breached, then met_late
    await sla.apply(mql("ld_l"), assigned("ld_l"))
    sla.clock.set(ACCEPT_DEADLINE + MINUTE)
    await sla.scheduler().fire_due()
    assert (await sla.clocks("ld_l"))["accept", 1].status == "breached"
    await sla.apply(status("ld_l", "accepted", later))
    for lead_id in ("ld_l", "ld_n"):
        accept = (await sla.clocks(lead_id))["accept", 1]
        assert (accept.status, accept.ended_at) == ("met_late", later)
        assert accept.business_seconds == 4.5 * 3600
    accept_kinds = {
        lead_id: [kind for clock, _, kind in await sla.kinds(lead_id) if clock == "accept"]
        for lead_id in ("ld_l", "ld_n")
    }
    assert accept_kinds == {  # the warning was due at 13:00, after the deadline: not sent
        "ld_l": ["clock_started", "breached", "met_late"],
        "ld_n": ["clock_started", "met_late"],
    }


async def test_a_reassignment_cancels_the_attempt_before_and_starts_the_next(sla: Sla) -> None:
    await sla.apply(mql("ld_x"), assigned("ld_x", "rep-ada"))
    sla.clock.set(ACCEPT_DEADLINE + MINUTE)
    await sla.scheduler().fire_due()
    reassigned_at = ACCEPT_DEADLINE + 2 * MINUTE
    await sla.apply(assigned("ld_x", "rep-grace", attempt=2, at=reassigned_at))
    await sla.apply(assigned("ld_x", "rep-alan", attempt=1))  # late, replaced: changes nothing
    clocks = await sla.clocks("ld_x")
    first, second = clocks["accept", 1], clocks["accept", 2]
    assert (first.status, first.reason, first.breached_at) == (
        "cancelled",
        "reassigned to rep-grace",
        ACCEPT_DEADLINE,
    )
    assert clocks["first_touch", 1].status == "cancelled"
    assert (second.status, second.rep_id, second.started_at) == (
        "running",
        "rep-grace",
        reassigned_at,
    )
    assert clocks["first_touch", 2].rep_id == "rep-grace"
    assert set(clocks) == {("accept", 1), ("first_touch", 1), ("accept", 2), ("first_touch", 2)}
    assert await sla.kinds("ld_x") == [
        ("accept", 1, "clock_started"),
        ("first_touch", 1, "clock_started"),
        ("accept", 1, "breached"),
        ("accept", 1, "cancelled"),
        ("first_touch", 1, "cancelled"),
        ("accept", 2, "clock_started"),
        ("first_touch", 2, "clock_started"),
    ]


async def test_a_reassignment_of_an_accepted_lead_cancels_its_qualify_clock(sla: Sla) -> None:
    await sla.apply(mql("ld_q"), assigned("ld_q", "rep-ada"))
    await sla.apply(status("ld_q", "accepted", T0 + MINUTE))
    await sla.apply(assigned("ld_q", "rep-grace", attempt=2, at=T0 + 2 * MINUTE))
    clocks = await sla.clocks("ld_q")
    assert {key: (row.status, row.rep_id) for key, row in clocks.items()} == {
        ("accept", 1): ("met", "rep-ada"),
        ("first_touch", 1): ("cancelled", "rep-ada"),
        ("qualify", 1): ("cancelled", "rep-ada"),
        ("accept", 2): ("running", "rep-grace"),
        ("first_touch", 2): ("running", "rep-grace"),
    }
    assert clocks["qualify", 1].reason == "reassigned to rep-grace"


async def test_a_revocation_cancels_what_runs_and_an_assignment_after_it_starts_nothing(
    sla: Sla,
) -> None:
    await sla.apply(mql("ld_v"), assigned("ld_v"), revoked("ld_v", T0 + MINUTE))
    clocks = await sla.clocks("ld_v")
    assert {key: row.status for key, row in clocks.items()} == {
        ("accept", 1): "cancelled",
        ("first_touch", 1): "cancelled",
    }
    assert clocks["accept", 1].reason == "disqualified: disqualified by personal-email"
    await sla.apply(revoked("ld_w", T0), assigned("ld_w"))  # the revocation was read first
    assert await sla.clocks("ld_w") == {}
    assert await sla.kinds("ld_w") == []


async def test_an_action_read_before_its_assignment_still_ends_the_clock(sla: Sla) -> None:
    await sla.apply(status("ld_s", "accepted", T0 + MINUTE))  # lead.status read first
    await sla.apply(mql("ld_s"), assigned("ld_s"))
    clocks = await sla.clocks("ld_s")
    assert clocks["accept", 1].status == "met"
    assert clocks["accept", 1].ended_at == T0 + MINUTE
    assert clocks["first_touch", 1].status == "running"
    assert clocks["qualify", 1].status == "running"


async def test_recycling_ends_qualify_and_cancels_the_rest(sla: Sla) -> None:
    await sla.apply(mql("ld_c"), assigned("ld_c"))
    await sla.apply(status("ld_c", "accepted", T0 + MINUTE))
    await sla.apply(status("ld_c", "recycled", T0 + 2 * MINUTE, reason="no_budget"))
    clocks = await sla.clocks("ld_c")
    assert {key: (row.status, row.reason) for key, row in clocks.items()} == {
        ("accept", 1): ("met", None),
        ("first_touch", 1): ("cancelled", "recycled"),
        ("qualify", 1): ("met", "no_budget"),
    }


async def test_the_target_follows_the_mqls_details_even_when_read_after_the_assignment(
    sla: Sla,
) -> None:
    await sla.apply(assigned("ld_h"), mql("ld_h", grade="A1", country="US"))
    hot = (await sla.clocks("ld_h"))["accept", 1]
    assert (hot.policy, hot.deadline, hot.on_breach, hot.notify) == (
        "hot-leads-accept-within-1-business-hour",
        T0 + timedelta(hours=1),
        "reassign",
        "sales-managers@example.com",
    )
    assert hot.warn_at == T0 + timedelta(minutes=45)


# --- the scheduler ----------------------------------------------------------------------------


async def test_warnings_and_breaches_fire_once_across_workers_and_a_restart(
    sla_on_both: Sla,
) -> None:
    sla = sla_on_both
    leads = [f"ld_{number:02d}" for number in range(12)]
    await sla.apply(*[item for lead_id in leads for item in (mql(lead_id), assigned(lead_id))])
    first, second = sla.scheduler(), sla.scheduler()
    assert await first.fire_due() == 0  # nothing due at the start

    sla.clock.set(ACCEPT_WARNING + MINUTE)
    for _ in range(3):  # two workers at once, and again: every warning goes out once
        await asyncio.gather(first.fire_due(), second.fire_due())

    for engine in sla.engines[1:]:  # both stop; two others start where they left off
        await engine.dispose()
    sla.clock.set(ACCEPT_DEADLINE + MINUTE)
    third, fourth = sla.scheduler(), sla.scheduler()
    for _ in range(3):
        await asyncio.gather(third.fire_due(), fourth.fire_due())

    events = await sla.events()
    for lead_id in leads:
        fired = [
            each["data"]["kind"]
            for each in events
            if each["data"]["lead_id"] == lead_id and each["data"]["clock"] == "accept"
        ]
        assert fired == ["clock_started", "warning", "breached"], lead_id
    ids = [each["id"] for each in events]
    assert len(ids) == len(set(ids))
    warning = next(each for each in events if each["data"]["kind"] == "warning")
    assert warning["data"]["at"] == "2026-11-23T18:00:00Z"
    assert warning["data"]["business_seconds"] == 3 * 3600
    breach = next(each for each in events if each["data"]["kind"] == "breached")
    assert (breach["data"]["at"], breach["data"]["detected_at"]) == (
        "2026-11-23T19:00:00Z",
        "2026-11-23T19:01:00Z",
    )
    assert (breach["data"]["rep_id"], breach["data"]["started_at"]) == (
        "rep-ada",
        "2026-11-23T15:00:00Z",
    )
    async with sla.sessions() as session:
        due = await session.scalars(select(SlaClock.lead_id).where(SlaClock.due_at.is_not(None)))
        assert set(due) == set(leads)  # only the first_touch clocks are still due (tomorrow)


async def test_after_an_outage_what_came_due_fires_late_and_a_stale_warning_not_at_all(
    sla: Sla,
) -> None:
    await sla.apply(mql("ld_o"), assigned("ld_o"))
    back = datetime(2026, 11, 24, 14, tzinfo=UTC)  # Tuesday 09:00 in New York
    sla.clock.set(back)  # the scheduler was down since Monday morning
    await sla.scheduler().fire_due()
    assert await sla.kinds("ld_o") == [
        ("accept", 1, "clock_started"),
        ("first_touch", 1, "clock_started"),
        ("accept", 1, "breached"),  # its warning (Monday 13:00) is stale: not sent
        ("first_touch", 1, "warning"),  # due Monday 16:00, deadline Tuesday 10:00: sent late
    ]
    breach, warning = (await sla.events())[2:]
    assert (breach["data"]["at"], breach["data"]["detected_at"]) == (
        "2026-11-23T19:00:00Z",
        "2026-11-24T14:00:00Z",
    )
    assert (warning["data"]["at"], warning["data"]["deadline"]) == (
        "2026-11-23T21:00:00Z",
        "2026-11-24T15:00:00Z",
    )


# --- the ops API ------------------------------------------------------------------------------


@pytest.fixture
async def api(sla_on_both: Sla, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings("127.0.0.1:9", sla_on_both.url, tmp_path)  # no broker needed
    publisher = Publisher(settings)
    context = AppContext(settings, sla_on_both.sessions, publisher, sla_on_both.clock)
    app = create_app(context, [build_router(POLICY)], parts=["sla"])
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://leadflow.test", headers={"X-API-Key": ADMIN_KEY}
        ) as client:
            yield client
    finally:
        await publisher.stop()


def listed(response: httpx.Response) -> list[tuple[str, str, str]]:
    assert response.status_code == 200, response.text
    return [(item["lead_id"], item["clock"], item["status"]) for item in response.json()["items"]]


async def test_ops_see_every_clock_of_a_lead_and_the_open_ones_across_leads(
    sla_on_both: Sla, api: httpx.AsyncClient
) -> None:
    sla = sla_on_both
    await sla.apply(mql("ld_1"), assigned("ld_1", "rep-ada"), mql("ld_2"))
    await sla.apply(assigned("ld_2", "rep-grace", at=T0 + timedelta(hours=1)))
    await sla.apply(status("ld_1", "accepted", T0 + MINUTE))
    sla.clock.set(ACCEPT_DEADLINE + timedelta(hours=1, minutes=1))
    await sla.scheduler().fire_due()

    lead = (await api.get("/sla/leads/ld_1")).json()
    assert [(each["clock"], each["status"]) for each in lead["clocks"]] == [
        ("qualify", "running"),
        ("accept", "met"),
        ("first_touch", "running"),
    ]
    accept = lead["clocks"][1]
    assert accept["policy"] == {
        "name": "accept-within-4-business-hours",
        "target": "4h",
        "calendar": "new-york",
        "timezone": "America/New_York",
        "on_breach": "reassign",
        "notify": None,
    }
    assert (accept["overdue"], accept["business_seconds"], accept["action"]) == (
        False,
        60.0,
        "accepted",
    )
    assert accept["deadline"] == "2026-11-23T19:00:00+00:00"

    assert listed(await api.get("/sla/clocks")) == [
        ("ld_2", "accept", "breached"),
        ("ld_1", "first_touch", "running"),
        ("ld_2", "first_touch", "running"),
        ("ld_1", "qualify", "running"),
    ]
    overdue = (await api.get("/sla/clocks", params={"clock": "accept"})).json()["items"]
    assert [(each["lead_id"], each["overdue"]) for each in overdue] == [("ld_2", True)]
    assert listed(
        await api.get("/sla/clocks", params={"state": "running", "rep": "rep-grace"})
    ) == [("ld_2", "first_touch", "running")]
    due = {"due_before": "2026-11-24T16:00:00Z"}
    assert listed(await api.get("/sla/clocks", params=due)) == [
        ("ld_2", "accept", "breached"),
        ("ld_1", "first_touch", "running"),
    ]
    assert listed(await api.get("/sla/clocks", params={"state": "met"})) == [
        ("ld_1", "accept", "met")
    ]
    assert listed(await api.get("/sla/clocks", params={"team": "EMEA"})) == []
    page = (await api.get("/sla/clocks", params={"limit": 3})).json()
    assert (len(page["items"]), page["next_offset"]) == (3, 3)
    rest = (await api.get("/sla/clocks", params={"limit": 3, "offset": 3})).json()
    assert (len(rest["items"]), rest["next_offset"]) == (1, None)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"state": "late"}, "state"),
        ({"clock": "lunch"}, "clock"),
        ({"due_before": "tomorrow"}, "due_before"),
        ({"due_before": "2026-11-24T16:00:00"}, "due_before"),  # no offset
        ({"rep": "a\x00b"}, "rep"),
        ({"team": "t" * 101}, "team"),
        ({"limit": "501"}, "limit"),
        ({"offset": "-1"}, "offset"),
    ],
)
async def test_bad_listing_parameters_are_422_naming_them(
    api: httpx.AsyncClient, query: dict[str, str], field: str
) -> None:
    response = await api.get("/sla/clocks", params=query)
    assert response.status_code == 422, response.text
    assert [each["field"] for each in response.json()["error"]["fields"]] == [field]
