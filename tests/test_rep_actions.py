"""Rep actions over HTTP: accept, reject, contacted, convert, recycle and reassign, on SQLite and
PostgreSQL. Each is checked against the lifecycle and the assignment (409 naming the status and
the cycle), applied once (a repeat or an Idempotency-Key retry gets the first answer and emits
nothing), bound to the rep of a bound sales key, and emitted as `lead.status` through the
outbox. The last tests run the whole pipeline on the embedded broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from sqlalchemy import func, select

from handoff_service import roster
from handoff_service.action_models import HandoffAction
from handoff_service.actions import (
    ActionName,
    ActionRequest,
    Held,
    check_request,
    refusal,
    request_digest,
    stale_cycle,
)
from handoff_service.actions_api import action_routers
from handoff_service.api import router as handoff_router
from handoff_service.dispatch import Dispatcher
from handoff_service.models import AccountOwner, Assignment, QueueEntry
from handoff_service.routing_file import load_routing
from schemas.topics import LEAD_ASSIGNED, LEAD_MQL, LEAD_STATUS
from services.api_keys import register_key
from services.app import create_app
from services.bus import Publisher
from services.clock import ManualClock
from services.context import AppContext
from services.db import create_engine, session_factory
from services.errors import ApiError
from services.launch.runtime import Runtime
from services.models import ApiKey, OutboxRecord
from services.settings import Settings
from tests.conftest import (
    ADMIN_KEY,
    EXAMPLES,
    MONDAY_10AM_NEW_YORK,
    OPS_KEY,
    ROOT,
    http_client,
    make_settings,
)
from tests.support import eventually, read_topic, values

ROUTING = load_routing(EXAMPLES / "routing.yaml")
ADA_KEY = "lf_sales_ada-bound"
GRACE_KEY = "lf_sales_grace-bound"
SALES_KEY = "lf_sales_unbound"
CRM_SECRETS = {
    "crm:hubspot": "whsec_aHVic3BvdC1zZWNyZXQtZm9yLXRlc3Rz",
    "crm:salesforce": "whsec_c2FsZXNmb3JjZS1zZWNyZXQtZm9yLXRlc3Rz",
    "crm:generic": "whsec_Z2VuZXJpYy1zZWNyZXQtZm9yLXRlc3Rz",
}
LEAD = "ld_0000000000000000000000aa"
OTHER = "ld_0000000000000000000000bb"


# --- a handoff API without the broker: what actions emit is read from the outbox ------------


@dataclass
class Desk:
    """The handoff API of one database, with ways to set up assignments and see what went
    out."""

    api: httpx.AsyncClient
    context: AppContext
    clock: ManualClock

    async def assign(
        self,
        lead_id: str = LEAD,
        rep_id: str = "rep-ada",
        *,
        cycle: int = 1,
        attempt: int = 1,
        status: str = "assigned",
        email: str = "dana@initech.com",
        domain: str | None = "initech.com",
    ) -> None:
        """An assignment as routing leaves it (the rep from the routing file)."""
        rep = ROUTING.rep(rep_id)
        assert rep is not None
        async with self.context.sessions() as session, session.begin():
            session.add(
                Assignment(
                    lead_id=lead_id,
                    cycle=cycle,
                    attempt=attempt,
                    rep_id=rep.id,
                    rep_name=rep.name,
                    rep_email=str(rep.email),
                    routing_rule="everyone-else",
                    strategy="load_balanced",
                    pool="inbound",
                    reason="routed",
                    skipped=[],
                    tried=["inbound"],
                    lead={"lead_id": lead_id, "attributes": {}, "email": email},
                    account_domain=domain,
                    status=status,
                    mql_event_id=f"mql:{lead_id}:{cycle}",
                    assigned_at=self.clock.now() - timedelta(minutes=30),
                )
            )

    async def emitted(self, topic: str = LEAD_STATUS) -> list[dict[str, Any]]:
        """The events in the outbox for `topic`, oldest first (nothing relays them here)."""
        async with self.context.sessions() as session:
            rows = await session.scalars(
                select(OutboxRecord).where(OutboxRecord.topic == topic).order_by(OutboxRecord.id)
            )
            return [json.loads(row.payload) for row in rows]

    async def attempts(self, lead_id: str = LEAD) -> list[Assignment]:
        async with self.context.sessions() as session:
            rows = await session.scalars(
                select(Assignment)
                .where(Assignment.lead_id == lead_id)
                .order_by(Assignment.cycle, Assignment.attempt)
            )
            return list(rows)

    async def actions(self) -> int:
        async with self.context.sessions() as session:
            return await session.scalar(select(func.count()).select_from(HandoffAction)) or 0

    async def act(
        self,
        action: str,
        body: dict[str, Any] | None = None,
        *,
        key: str = ADA_KEY,
        lead_id: str = LEAD,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers = {"X-API-Key": key}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return await self.api.post(
            f"/handoff/leads/{lead_id}/{action}",
            json=body,
            headers=headers,
        )


def crm_settings(settings: Settings) -> Settings:
    """Settings with the shipped CRM mappings and a secret for each."""
    return settings.model_copy(
        update={
            "routing": EXAMPLES / "routing.yaml",
            "crm_mappings": EXAMPLES / "crm",
            "webhook_secrets": dict(CRM_SECRETS),
        }
    )


async def register_rep_keys(context: AppContext, clock: ManualClock) -> None:
    async with context.sessions() as session, session.begin():
        await register_key(
            session, ADA_KEY, name="ada", role="sales", clock=clock, rep_id="rep-ada"
        )
        await register_key(
            session, GRACE_KEY, name="grace", role="sales", clock=clock, rep_id="rep-grace"
        )
        await register_key(session, SALES_KEY, name="sales-ops", role="sales", clock=clock)


@asynccontextmanager
async def open_desk(database_url: str, tmp_path: Path) -> AsyncIterator[Desk]:
    """The handoff API (its read routes, the rep actions and the CRM webhooks) of a migrated
    database with the example reps seeded and the rep keys registered."""
    settings = crm_settings(make_settings("127.0.0.1:9", database_url, tmp_path))
    clock = ManualClock(MONDAY_10AM_NEW_YORK)
    engine = create_engine(database_url)
    publisher = Publisher(settings)  # never started: nothing here reaches a broker
    context = AppContext(settings, session_factory(engine), publisher, clock)
    async with context.sessions() as session, session.begin():
        await roster.seed(session, ROUTING, "file:routing.yaml", clock.now())
    await register_rep_keys(context, clock)
    dispatcher = Dispatcher(ROUTING, clock)
    app = create_app(
        context, [handoff_router, *action_routers(context, dispatcher)], parts=["handoff"]
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://leadflow.test") as api:
            yield Desk(api, context, clock)
    finally:
        await publisher.stop()
        await engine.dispose()


@pytest.fixture
async def desk(database_url: str, tmp_path: Path) -> AsyncIterator[Desk]:
    async with open_desk(database_url, tmp_path) as opened:
        yield opened


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


# --- the pure checks ------------------------------------------------------------------------


def test_reason_codes_are_the_routing_files() -> None:
    codes = ROUTING.reason_codes
    check_request(ActionRequest("reject", reason="not_icp"), codes)
    check_request(ActionRequest("recycle", reason="bad_timing"), codes)
    with pytest.raises(ApiError) as refused:
        check_request(ActionRequest("reject", reason="too_small"), codes)
    assert refused.value.status == 422
    assert refused.value.fields[0]["field"] == "reason"
    assert "not_icp, bad_contact_data, no_budget" in refused.value.fields[0]["message"]
    with pytest.raises(ApiError):
        check_request(ActionRequest("accept", reason="not_icp"), codes)  # takes none
    with pytest.raises(ApiError):
        check_request(ActionRequest("contacted"), codes)  # needs a channel


def held(status: str, **changes: Any) -> Held:
    return Held(LEAD, cycle=2, attempt=1, rep_id="rep-ada", status=status, **changes)


def test_what_each_status_allows() -> None:
    allowed = {
        "assigned": {"accept", "reject", "contacted", "recycle", "reassign"},
        "accepted": {"contacted", "convert", "recycle", "reassign"},
        "rejected": {"recycle", "reassign"},
        "converted": {"recycle"},
        "recycled": set(),
        "revoked": set(),
        "reassigned": set(),
    }
    actions: tuple[ActionName, ...] = get_args(ActionName)
    for status, expected in allowed.items():
        found = {action for action in actions if refusal(action, held(status)) is None}
        assert found == expected, status
    message = refusal("accept", held("rejected"))
    assert message is not None
    assert "cycle 2 is rejected" in message
    converting = refusal("convert", held("assigned"))
    assert converting is not None and "accept it first" in converting
    touched = held("accepted", contacted_at=MONDAY_10AM_NEW_YORK)
    assert refusal("contacted", touched) is not None


def test_an_older_cycle_is_refused_naming_the_current_one() -> None:
    assert stale_cycle(ActionRequest("accept", cycle=2), held("assigned")) is None
    assert stale_cycle(ActionRequest("accept"), held("assigned")) is None
    message = stale_cycle(ActionRequest("accept", cycle=1), held("assigned"))
    assert message is not None
    assert "cycle 2 is assigned" in message and "cycle 1 is not the current one" in message


def test_the_request_digest_covers_the_path_and_the_body() -> None:
    first = request_digest("POST", "/handoff/leads/a/reject", {"reason": "not_icp"})
    assert first == request_digest("post", "/handoff/leads/a/reject", {"reason": "not_icp"})
    assert first != request_digest("POST", "/handoff/leads/b/reject", {"reason": "not_icp"})
    assert first != request_digest("POST", "/handoff/leads/a/reject", {"reason": "student"})


# --- each action over HTTP ------------------------------------------------------------------


async def test_accept_by_the_bound_rep(desk: Desk) -> None:
    await desk.assign()
    response = await desk.act("accept", {"note": "Calling tomorrow"})
    assert response.status_code == 200, response.text
    assert "Idempotent-Replayed" not in response.headers
    result = response.json()
    assert result == {
        "lead_id": LEAD,
        "cycle": 1,
        "attempt": 1,
        "action": "accept",
        "status": "accepted",
        "rep_id": "rep-ada",
        "reason": None,
        "note": "Calling tomorrow",
        "channel": None,
        "opportunity_id": None,
        "amount": None,
        "reassigned_to": None,
        "actor": "ada",
        "origin": "api",
        "at": "2026-11-23T15:00:00+00:00",
        "event_id": f"status:{LEAD}:1:1:accept",
    }
    (event,) = await desk.emitted()
    assert event["id"] == f"status:{LEAD}:1:1:accept"
    assert event["type"] == "lead.status"
    assert event["subject"] == LEAD
    assert event["data"] == {
        "lead_id": LEAD,
        "cycle": 1,
        "status": "accepted",
        "rep_id": "rep-ada",
        "reason": None,
        "at": "2026-11-23T15:00:00Z",
        "note": "Calling tomorrow",
        "actor": "ada",
        "origin": "api",
        "channel": None,
        "opportunity_id": None,
        "amount": None,
    }
    (assignment,) = await desk.attempts()
    assert assignment.status == "accepted"
    assert assignment.answered_at == MONDAY_10AM_NEW_YORK
    async with desk.context.sessions() as session:
        owner = await session.get(AccountOwner, "initech.com")
    assert owner is not None and owner.rep_id == "rep-ada"  # the company is Ada's now


async def test_reject_carries_the_reason_code_unchanged(desk: Desk) -> None:
    await desk.assign()
    response = await desk.act("reject", {"reason": "student", "note": "A thesis project"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "rejected"
    (event,) = await desk.emitted()
    assert event["data"]["status"] == "rejected"
    assert event["data"]["reason"] == "student"
    assert event["data"]["note"] == "A thesis project"
    (assignment,) = await desk.attempts()
    assert (assignment.status, assignment.answered_at) == ("rejected", MONDAY_10AM_NEW_YORK)


async def test_contacted_convert_and_recycle(desk: Desk) -> None:
    await desk.assign()
    touched = await desk.act("contacted", {"channel": "meeting"})
    assert touched.status_code == 200, touched.text
    assert touched.json()["status"] == "assigned"  # a first touch answers nothing
    assert (await desk.act("accept")).status_code == 200
    desk.clock.advance(timedelta(days=3))
    converted = await desk.act("convert", {"opportunity_id": "006Qy000001", "amount": 42000})
    assert converted.status_code == 200, converted.text
    assert converted.json()["status"] == "converted"
    recycled = await desk.act("recycle", {"reason": "bad_timing", "note": "Lost to budget"})
    assert recycled.status_code == 200, recycled.text
    assert recycled.json()["status"] == "recycled"
    events = await desk.emitted()
    assert [event["data"]["status"] for event in events] == [
        "contacted",
        "accepted",
        "converted",
        "recycled",
    ]
    assert events[0]["data"]["channel"] == "meeting"
    assert (events[2]["data"]["opportunity_id"], events[2]["data"]["amount"]) == (
        "006Qy000001",
        42000.0,
    )
    assert events[3]["data"]["reason"] == "bad_timing"
    (assignment,) = await desk.attempts()
    assert assignment.contacted_at == MONDAY_10AM_NEW_YORK
    assert assignment.answered_at == MONDAY_10AM_NEW_YORK  # the accept, not the conversion
    again = await desk.act("accept")  # done once in this attempt: its first answer
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(await desk.emitted()) == 4


async def test_what_the_lifecycle_refuses_is_a_409_naming_status_and_cycle(desk: Desk) -> None:
    await desk.assign()
    early = error_of(await desk.act("convert"), 409)
    assert "cycle 1 is assigned" in early["message"] and "accept it first" in early["message"]
    assert (await desk.act("reject", {"reason": "not_icp"})).status_code == 200
    accepted = error_of(await desk.act("accept"), 409)
    assert accepted["code"] == "conflict"
    assert (
        f"cannot accept lead {LEAD}: cycle 1 is rejected (attempt 1, rep-ada)"
        in (accepted["message"])
    )
    another = error_of(await desk.act("reject", {"reason": "student"}), 409)
    assert another["code"] == "already_done"
    assert "reason not_icp" in another["message"] and "by ada" in another["message"]
    assert (await desk.act("recycle", {"reason": "bad_timing"})).status_code == 200
    closed = error_of(await desk.act("contacted", {"channel": "call"}), 409)
    assert "cycle 1 is recycled" in closed["message"]
    assert len(await desk.emitted()) == 2  # the refusals emitted nothing


async def test_an_accepted_lead_is_not_rejected_and_one_first_touch(desk: Desk) -> None:
    await desk.assign()
    assert (await desk.act("accept")).status_code == 200
    refused = error_of(await desk.act("reject", {"reason": "not_icp"}), 409)
    assert "recycle it instead" in refused["message"]
    assert (await desk.act("contacted", {"channel": "call"})).status_code == 200
    again = await desk.act("contacted", {"channel": "call"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    other = error_of(await desk.act("contacted", {"channel": "email"}), 409)
    assert "channel call" in other["message"]


async def test_acting_on_an_older_cycle_is_a_409(desk: Desk) -> None:
    await desk.assign(cycle=1, status="recycled")
    await desk.assign(cycle=2)
    stale = error_of(await desk.act("accept", {"cycle": 1}), 409)
    assert stale["code"] == "stale_cycle"
    assert "cycle 2 is assigned" in stale["message"]
    assert "cycle 1 is not the current one" in stale["message"]
    accepted = await desk.act("accept", {"cycle": 2})
    assert accepted.status_code == 200 and accepted.json()["cycle"] == 2


async def test_unknown_lead_reason_and_fields(desk: Desk) -> None:
    missing = error_of(await desk.act("accept", lead_id="ld_nobody"), 404)
    assert "ld_nobody" in missing["message"]
    await desk.assign()
    unknown = error_of(await desk.act("reject", {"reason": "too_small"}), 422)
    (field,) = unknown["fields"]
    assert field["field"] == "reason"
    assert "'too_small'" in field["message"]
    assert "not_icp, bad_contact_data, no_budget, student, competitor" in field["message"]
    assert error_of(await desk.act("reject", {}), 422)["fields"][0]["field"] == "reason"
    assert error_of(await desk.act("accept", {"reson": "x"}), 422)["fields"][0]["field"] == "reson"
    channel = error_of(await desk.act("contacted", {"channel": "fax"}), 422)
    assert channel["fields"][0]["field"] == "channel"
    amount = error_of(await desk.act("convert", {"amount": -1}), 422)
    assert amount["fields"][0]["field"] == "amount"
    nul = error_of(await desk.act("accept", {"note": "a\x00b"}), 422)
    assert nul["fields"][0]["field"] == "note"
    assert await desk.actions() == 0 and await desk.emitted() == []


async def test_a_revoked_or_queued_lead_is_a_409(desk: Desk) -> None:
    await desk.assign(status="revoked")
    revoked = error_of(await desk.act("accept"), 409)
    assert "cycle 1 is revoked" in revoked["message"] and "revoked" in revoked["message"]
    async with desk.context.sessions() as session, session.begin():
        session.add(
            QueueEntry(
                lead_id=OTHER,
                cycle=1,
                attempt=1,
                mql_event_id=f"mql:{OTHER}:1",
                lead={"lead_id": OTHER},
                account_domain=None,
                why="nobody_available",
                rule="everyone-else",
                tried=["inbound"],
                skipped=[],
                exclude=[],
                queued_at=desk.clock.now(),
            )
        )
    queued = error_of(await desk.act("accept", lead_id=OTHER, key=SALES_KEY), 409)
    assert queued["code"] == "queued" and "waits in the unassigned queue" in queued["message"]


# --- who may act ----------------------------------------------------------------------------


async def test_a_bound_key_acts_only_on_its_reps_leads(desk: Desk) -> None:
    await desk.assign(LEAD, "rep-ada")
    await desk.assign(OTHER, "rep-grace")
    refused = error_of(await desk.act("accept", key=GRACE_KEY), 403)
    assert refused["code"] == "not_your_lead"
    assert "acts for rep-grace" in refused["message"] and "held by rep-ada" in refused["message"]
    assert (await desk.act("accept", key=GRACE_KEY, lead_id=OTHER)).status_code == 200
    unbound = await desk.act("accept", key=SALES_KEY)
    assert unbound.status_code == 200 and unbound.json()["actor"] == "sales-ops"
    events = await desk.emitted()
    assert [(event["data"]["lead_id"], event["data"]["actor"]) for event in events] == [
        (OTHER, "grace"),
        (LEAD, "sales-ops"),
    ]
    assert events[1]["data"]["rep_id"] == "rep-ada"  # the rep whose lead it is


async def test_roles(desk: Desk) -> None:
    await desk.assign()
    assert error_of(await desk.act("accept", key=OPS_KEY), 403)["code"] == "forbidden"
    no_key = await desk.api.post(f"/handoff/leads/{LEAD}/accept")
    assert error_of(no_key, 401)["code"] == "unauthorized"
    assert (await desk.act("reassign", {"rep_id": "rep-grace"}, key=SALES_KEY)).status_code == 403
    admin = await desk.act("accept", key=ADMIN_KEY)
    assert admin.status_code == 200 and admin.json()["actor"] == "tests"


# --- once -----------------------------------------------------------------------------------


async def test_a_repeat_is_answered_with_the_first_result(desk: Desk) -> None:
    await desk.assign()
    first = await desk.act("accept", {"note": "mine"})
    desk.clock.advance(timedelta(minutes=5))
    again = await desk.act("accept", {"note": "still mine"}, key=SALES_KEY)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # who and when, the first time
    assert len(await desk.emitted()) == 1
    assert await desk.actions() == 1


async def test_an_idempotency_key_replays_its_request_whatever_happened_since(desk: Desk) -> None:
    await desk.assign()
    body = {"reason": "not_icp", "note": "Retail, 3 people"}
    first = await desk.act("reject", body, idempotency_key="reject-1")
    assert first.status_code == 200
    assert (await desk.act("recycle", {"reason": "bad_timing"})).status_code == 200
    retried = await desk.act("reject", body, idempotency_key="reject-1")
    assert retried.status_code == 200
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json() == first.json()
    reused = error_of(
        await desk.act("reject", {"reason": "student"}, idempotency_key="reject-1"), 422
    )
    assert reused["code"] == "idempotency_key_reused"
    assert "'reject-1'" in reused["message"]
    # keys are the caller's own: another key may use the same text for its own request
    other = await desk.act("accept", key=SALES_KEY, lead_id=LEAD, idempotency_key="reject-1")
    assert error_of(other, 409)["code"] == "conflict"  # its own request, checked afresh
    assert [event["data"]["status"] for event in await desk.emitted()] == [
        "rejected",
        "recycled",
    ]


async def test_two_identical_actions_at_once_apply_once(desk: Desk) -> None:
    await desk.assign()
    responses = await asyncio.gather(
        *(desk.act("accept", {"note": f"try {n}"}, idempotency_key=None) for n in range(4))
    )
    assert [response.status_code for response in responses] == [200] * 4
    replayed = [response.headers.get("Idempotent-Replayed") for response in responses]
    assert replayed.count("true") == 3
    assert len({json.dumps(response.json()) for response in responses}) == 1
    assert len(await desk.emitted()) == 1


# --- reassign (admin) -----------------------------------------------------------------------


async def test_reassign_to_a_rep_and_back_through_routing(desk: Desk) -> None:
    await desk.assign()
    moved = await desk.act("reassign", {"rep_id": "rep-grace", "note": "Ada is out"}, key=ADMIN_KEY)
    assert moved.status_code == 200, moved.text
    result = moved.json()
    assert (result["status"], result["rep_id"], result["reassigned_to"]) == (
        "reassigned",
        "rep-ada",
        "rep-grace",
    )
    assert result["event_id"] == f"assigned:{LEAD}:1:2"
    first, second = await desk.attempts()
    assert (first.status, second.status, second.rep_id) == ("reassigned", "assigned", "rep-grace")
    assert (second.attempt, second.reason, second.assigned_by) == (2, "manual", "tests")
    (assigned,) = await desk.emitted(LEAD_ASSIGNED)
    assert (assigned["data"]["rep_id"], assigned["data"]["attempt"]) == ("rep-grace", 2)
    again = await desk.act("reassign", {"rep_id": "rep-grace"}, key=ADMIN_KEY)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == result
    # Ada's key no longer reaches the lead; Grace's does
    assert error_of(await desk.act("accept"), 403)["code"] == "not_your_lead"
    assert (await desk.act("accept", key=GRACE_KEY)).json()["attempt"] == 2
    unknown = error_of(await desk.act("reassign", {"rep_id": "rep-nobody"}, key=ADMIN_KEY), 422)
    assert unknown["fields"][0]["field"] == "rep_id"
    routed = await desk.act("reassign", key=ADMIN_KEY)  # no body: back through routing
    assert routed.status_code == 200, routed.text
    assert routed.json()["reassigned_to"] not in (None, "rep-grace")  # never the same rep
    assert len(await desk.emitted(LEAD_ASSIGNED)) == 2


async def test_reassigning_to_the_rep_who_holds_it_is_a_409(desk: Desk) -> None:
    await desk.assign()
    same = error_of(await desk.act("reassign", {"rep_id": "rep-ada"}, key=ADMIN_KEY), 409)
    assert "already theirs" in same["message"]


# --- the CLI binds a key to a rep -----------------------------------------------------------


def leadflow(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.launch.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "LEADFLOW_DATABASE_URL": database_url},
        timeout=60,
        check=False,
    )


async def test_apikey_create_binds_a_sales_key_to_a_rep(sqlite_url: str) -> None:
    created = await asyncio.to_thread(
        leadflow,
        "apikey",
        "create",
        "--name",
        "ada",
        "--role",
        "sales",
        "--rep",
        "rep-ada",
        database_url=sqlite_url,
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("lf_sales_")
    unknown = await asyncio.to_thread(
        leadflow,
        "apikey",
        "create",
        "--name",
        "x",
        "--role",
        "sales",
        "--rep",
        "rep-nobody",
        database_url=sqlite_url,
    )
    assert unknown.returncode == 2
    assert "no rep 'rep-nobody'" in unknown.stderr and "rep-ada, rep-grace" in unknown.stderr
    admin = await asyncio.to_thread(
        leadflow,
        "apikey",
        "create",
        "--name",
        "x",
        "--role",
        "admin",
        "--rep",
        "rep-ada",
        database_url=sqlite_url,
    )
    assert admin.returncode == 2 and "binds a sales key" in admin.stderr
    engine = create_engine(sqlite_url)
    try:
        async with session_factory(engine)() as session:
            keys = (await session.execute(select(ApiKey.name, ApiKey.role, ApiKey.rep_id))).all()
    finally:
        await engine.dispose()
    assert ("ada", "sales", "rep-ada") in [tuple(key) for key in keys]
    assert len(keys) == 3  # the fixture's admin and ops keys, and Ada's


# --- the whole pipeline on the embedded broker ----------------------------------------------


DEMO: dict[str, Any] = {
    "event": "form_submit",
    "anonymousId": "visitor-ada",
    "messageId": "demo-1",
    "traits": {"email": "dana@initech.com", "company": "Initech"},
    "properties": {"form": "demo-request"},
}


async def handed_off(pipeline: Runtime, client: httpx.AsyncClient, body: dict[str, Any]) -> Any:
    """Track a demo request; returns (lead id, the rep it was assigned to)."""
    response = await client.post("/v1/track", json=body)
    assert response.status_code == 200, response.text
    email = body["traits"]["email"]

    async def assigned() -> dict[str, Any] | None:
        for event in values(await read_topic(pipeline.settings, LEAD_ASSIGNED, expect=1)):
            if event["data"]["lead_id"] == await lead_id_of(client, email):
                data: dict[str, Any] = event["data"]
                return data
        return None

    data = await eventually(assigned, timeout=30)
    return data["lead_id"], data["rep_id"]


async def lead_id_of(client: httpx.AsyncClient, email: str) -> str | None:
    items = (await client.get("/leads", params={"email": email})).json()["items"]
    return items[0]["lead_id"] if items else None


async def stage_of(client: httpx.AsyncClient, lead_id: str, stage: str) -> dict[str, Any] | None:
    lead: dict[str, Any] = (await client.get(f"/leads/{lead_id}")).json()
    return lead if lead.get("stage") == stage else None


@asynccontextmanager
async def running_with_crms(settings: Settings, clock: ManualClock) -> AsyncIterator[Runtime]:
    """The whole pipeline, with the shipped CRM mappings configured."""
    runtime = Runtime(crm_settings(settings), clock, ("gateway", "scoring", "handoff", "sla"))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
async def crm_pipeline(settings: Settings, clock: ManualClock) -> AsyncIterator[Runtime]:
    async with running_with_crms(settings, clock) as runtime:
        yield runtime


async def bind_key(runtime: Runtime, key: str, name: str, rep_id: str) -> None:
    async with runtime.context.sessions() as session, session.begin():
        await register_key(
            session, key, name=name, role="sales", clock=runtime.clock, rep_id=rep_id
        )


async def test_demo_request_to_mql_to_acceptance_by_the_reps_bound_key(
    crm_pipeline: Runtime,
) -> None:
    berlin = {**DEMO, "traits": {**DEMO["traits"], "country": "DE"}}
    async with http_client(crm_pipeline) as client:
        lead_id, rep_id = await handed_off(crm_pipeline, client, berlin)
        (mql,) = values(await read_topic(crm_pipeline.settings, LEAD_MQL, expect=1))
        assert mql["data"]["trigger"] == "demo-request"
        (assigned,) = values(await read_topic(crm_pipeline.settings, LEAD_ASSIGNED, expect=1))
        assert (assigned["data"]["routing_rule"], assigned["data"]["pool"]) == (
            "emea-by-country",
            "emea",
        )
        assert rep_id in ("rep-alan", "rep-emmy")  # the EMEA pool's reps
        await bind_key(crm_pipeline, "lf_sales_pipeline", "their key", rep_id)
        async with http_client(crm_pipeline, api_key="lf_sales_pipeline") as rep:
            accepted = await rep.post(f"/handoff/leads/{lead_id}/accept", json={"note": "Mine"})
            assert accepted.status_code == 200, accepted.text
        (status,) = values(await read_topic(crm_pipeline.settings, LEAD_STATUS, expect=1))
        assert status["id"] == f"status:{lead_id}:1:1:accept"
        assert status["data"]["status"] == "accepted"
        assert (status["data"]["actor"], status["data"]["origin"]) == ("their key", "api")
        assert (status["data"]["rep_id"], status["data"]["cycle"]) == (rep_id, 1)
        lead = await eventually(lambda: stage_of(client, lead_id, "sal"))
        assert lead["owner"]["rep_id"] == rep_id


async def test_a_rejection_reaches_scoring_with_its_reason_code(crm_pipeline: Runtime) -> None:
    async with http_client(crm_pipeline) as client:
        lead_id, _ = await handed_off(crm_pipeline, client, DEMO)
        rejected = await client.post(
            f"/handoff/leads/{lead_id}/reject", json={"reason": "competitor"}
        )
        assert rejected.status_code == 200, rejected.text
        (status,) = values(await read_topic(crm_pipeline.settings, LEAD_STATUS, expect=1))
        assert (status["data"]["status"], status["data"]["reason"]) == ("rejected", "competitor")
        await eventually(lambda: stage_of(client, lead_id, "rejected"))
        again = await client.post(f"/handoff/leads/{lead_id}/reject", json={"reason": "competitor"})
        assert again.headers["Idempotent-Replayed"] == "true"
        assert len(values(await read_topic(crm_pipeline.settings, LEAD_STATUS, expect=1))) == 1
