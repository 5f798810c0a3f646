"""The reps API on both databases: the roster seeded from the routing file, changes through
the API (validated like the file, versioned with who and when, kept across restarts), away
periods, every 4xx, and the fairness ledger (`/handoff/reps/stats`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from handoff_service.models import Assignment
from services.clock import ManualClock
from services.db import create_engine, session_factory
from services.launch.runtime import Runtime
from services.settings import Settings
from tests.conftest import EXAMPLES, MONDAY_10AM_NEW_YORK, OPS_KEY, http_client

EXAMPLE_REPS = ["rep-ada", "rep-alan", "rep-emmy", "rep-grace"]


@contextlib.asynccontextmanager
async def started(settings: Settings, clock: ManualClock) -> AsyncIterator[Runtime]:
    """The handoff part with its setup run (the reps seeded), no consumer started."""
    runtime = Runtime(settings, clock, ["handoff"])
    try:
        for part in runtime.parts:
            for step in part.setup:
                await step()
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
async def handoff(settings: Settings, clock: ManualClock) -> AsyncIterator[Runtime]:
    async with started(settings, clock) as runtime:
        yield runtime


@pytest.fixture
async def api(handoff: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(handoff) as http:
        yield http


def new_rep(**fields: Any) -> dict[str, Any]:
    return {
        "id": "rep-bea",
        "name": "Bea Koch",
        "email": "bea@example.com",
        "pools": ["emea"],
        "capacity": 10,
        "time_zone": "Europe/Berlin",
        "hours": {"mon-fri": "08:00-20:00"},
        **fields,
    }


def fields_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [field["field"] for field in response.json()["error"]["fields"]]


async def test_the_routing_file_seeds_the_reps(api: httpx.AsyncClient) -> None:
    response = await api.get("/reps")
    assert response.status_code == 200
    reps = {rep["id"]: rep for rep in response.json()["items"]}
    assert sorted(reps) == EXAMPLE_REPS
    ada = reps["rep-ada"]
    assert (ada["name"], ada["pools"], ada["weight"], ada["capacity"]) == (
        "Ada Lovelace",
        ["inbound", "enterprise"],
        2.0,
        30,
    )
    assert ada["hours"]["mon"] == ["08:30-12:00", "13:00-17:30"]
    assert (ada["version"], ada["origin"], ada["open_leads"], ada["unavailable"]) == (
        1,
        "file",
        0,
        None,
    )
    grace = reps["rep-grace"]
    assert [(a["from"], a["until"], a["origin"]) for a in grace["away"]] == [
        ("2026-12-24", "2027-01-01", "file")
    ]
    one = await api.get("/reps/rep-ada")
    assert one.status_code == 200 and one.json() == ada


async def test_adding_and_changing_a_rep_is_versioned_with_who_and_when(
    api: httpx.AsyncClient, clock: ManualClock
) -> None:
    created = await api.post("/reps", json=new_rep())
    assert created.status_code == 201, created.text
    assert (created.json()["version"], created.json()["origin"]) == (1, "api")
    assert created.json()["updated_by"] == "tests"  # the admin key's name

    clock.advance(timedelta(hours=1))
    changed = await api.patch("/reps/rep-bea", json={"capacity": 3, "team": "EMEA"})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["capacity"], changed.json()["team"], changed.json()["version"]) == (
        3,
        "EMEA",
        2,
    )
    unchanged = await api.patch("/reps/rep-bea", json={"capacity": 3})
    assert unchanged.json()["version"] == 2  # nothing changed, no new version

    away = await api.post(
        "/reps/rep-bea/away", json={"from": "2026-11-23T09:00", "until": "2026-11-30"}
    )
    assert away.status_code == 201, away.text
    assert away.json()["unavailable"] == "away"
    (period,) = away.json()["away"]
    assert (period["from"], period["until"], period["origin"]) == (
        "2026-11-23T09:00:00",
        "2026-11-30",
        "api",
    )
    ended = await api.delete(f"/reps/rep-bea/away/{period['id']}")
    assert ended.status_code == 200 and ended.json()["away"] == []
    assert ended.json()["unavailable"] is None

    history = await api.get("/reps/rep-bea/history")
    assert history.status_code == 200
    versions = history.json()["versions"]
    assert [(v["version"], v["change"], v["actor"]) for v in versions] == [
        (1, "created", "tests"),
        (2, "updated", "tests"),
        (3, "away_added", "tests"),
        (4, "away_removed", "tests"),
    ]
    assert versions[1]["changes"] == {
        "capacity": {"from": 10, "to": 3},
        "team": {"from": None, "to": "EMEA"},
    }
    assert versions[1]["at"] == (MONDAY_10AM_NEW_YORK + timedelta(hours=1)).isoformat()
    assert versions[1]["record"]["capacity"] == 3
    assert versions[2]["record"]["away"][0]["from"] == "2026-11-23T09:00:00"
    assert versions[3]["record"]["away"] == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (new_rep(pools=["emea", "apac"]), ["pools.1"]),
        (new_rep(capacity=0), ["capacity"]),
        (new_rep(hours={"mon": "09:00-13:00, 12:00-17:00"}), ["hours.mon"]),
        (new_rep(time_zone="Europe/Londres"), ["time_zone"]),
        (new_rep(email="ada@example.com"), ["email"]),
        (new_rep(email="not an address"), ["email"]),
        (new_rep(weight=0), ["weight"]),
        (new_rep(nickname="B"), ["nickname"]),
        (new_rep(id="rep\x00bea"), ["id"]),
        ({"id": "rep-bea"}, ["name", "email", "pools"]),
    ],
)
async def test_a_bad_new_rep_is_a_422_naming_the_field_and_changes_nothing(
    api: httpx.AsyncClient, body: dict[str, Any], fields: list[str]
) -> None:
    assert sorted(fields_of(await api.post("/reps", json=body))) == sorted(fields)
    assert sorted(rep["id"] for rep in (await api.get("/reps")).json()["items"]) == EXAMPLE_REPS


async def test_a_bad_change_is_a_422_naming_the_field_and_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    before = (await api.get("/reps/rep-alan")).json()
    cases: list[tuple[dict[str, Any], list[str], str]] = [
        ({"pools": ["emea", "apac"]}, ["pools.1"], "unknown pool 'apac'"),
        ({"capacity": 0}, ["capacity"], "greater than or equal to 1"),
        ({"hours": {"mon-fri": "09:00-17:00", "wed": "18:00-19:00"}}, ["hours"], "twice"),
        ({"hours": {"tue": ["09:00-12:00", "11:00-13:00"]}}, ["hours.tue"], "overlaps"),
        ({"time_zone": "Mars/Olympus"}, ["time_zone"], "unknown time zone"),
        ({"email": "grace@example.com"}, ["email"], "already used by rep-grace"),
        ({"id": "rep-other"}, ["id"], "Extra inputs"),
        ({"name": None}, ["name"], "string"),
    ]
    for body, fields, message in cases:
        response = await api.patch("/reps/rep-alan", json=body)
        assert fields_of(response) == fields, body
        assert message in response.text, response.text
    assert (await api.get("/reps/rep-alan")).json() == before
    history = (await api.get("/reps/rep-alan/history")).json()["versions"]
    assert [version["change"] for version in history] == ["file_created"]


async def test_every_other_4xx(api: httpx.AsyncClient, handoff: Runtime) -> None:
    assert (await api.post("/reps", json=new_rep(id="rep-ada"))).status_code == 409
    for method, path in [
        ("GET", "/reps/rep-nobody"),
        ("PATCH", "/reps/rep-nobody"),
        ("GET", "/reps/rep-nobody/history"),
        ("POST", "/reps/rep-nobody/away"),
        ("DELETE", "/reps/rep-nobody/away/1"),
        ("DELETE", "/reps/rep-ada/away/1"),  # rep-grace's period, not rep-ada's
    ]:
        body = {"from": "2026-12-01"} if method == "POST" else {"capacity": 2}
        response = await api.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
    assert fields_of(await api.delete("/reps/rep-ada/away/0")) == ["away_id"]
    assert fields_of(await api.get("/reps/" + "r" * 65)) == ["rep_id"]
    assert fields_of(
        await api.post("/reps/rep-ada/away", json={"from": "2026-12-24", "until": "2026-12-01"})
    ) == ["until"]
    assert fields_of(await api.post("/reps/rep-ada/away", json={"from": "soon"})) == ["from"]
    assert fields_of(
        await api.get(
            "/handoff/reps/stats",
            params={"from": "2026-12-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
        )
    ) == ["from"]
    assert fields_of(await api.get("/handoff/reps/stats", params={"from": "yesterday"})) == ["from"]
    assert fields_of(await api.get("/handoff/queue", params={"limit": 501})) == ["limit"]

    async with http_client(handoff, api_key=None) as anonymous:
        assert (await anonymous.get("/reps")).status_code == 401
        assert (await anonymous.post("/reps", json=new_rep())).status_code == 401
    async with http_client(handoff, api_key=OPS_KEY) as ops:
        assert (await ops.get("/reps")).status_code == 200
        assert (await ops.get("/reps/rep-ada/history")).status_code == 200
        assert (await ops.get("/handoff/queue")).status_code == 200
        assert (await ops.get("/handoff/reps/stats")).status_code == 200
        for method, path in [
            ("POST", "/reps"),
            ("PATCH", "/reps/rep-ada"),
            ("POST", "/reps/rep-ada/away"),
            ("DELETE", "/reps/rep-ada/away/1"),
        ]:
            response = await ops.request(method, path, json={})
            assert response.status_code == 403, (method, path)


async def test_api_changes_survive_a_restart_and_the_file_changes_what_it_changed(
    settings: Settings, clock: ManualClock, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text((EXAMPLES / "routing.yaml").read_text())
    configured = settings.model_copy(update={"routing": routing})
    async with started(configured, clock) as runtime, http_client(runtime) as api:
        assert (await api.patch("/reps/rep-ada", json={"capacity": 5})).status_code == 200
        assert (await api.post("/reps", json=new_rep())).status_code == 201
    # a restart, the same file: nothing changes
    async with started(configured, clock) as runtime, http_client(runtime) as api:
        reps = {rep["id"]: rep for rep in (await api.get("/reps")).json()["items"]}
        assert (reps["rep-ada"]["capacity"], reps["rep-ada"]["version"]) == (5, 2)
        assert reps["rep-bea"]["version"] == 1
        assert reps["rep-grace"]["version"] == 1

    # the file changes Ada's time zone and Grace's capacity, and drops Alan
    text = routing.read_text()
    text = text.replace(
        "    time_zone: America/New_York\n    hours: &new",
        "    time_zone: America/Chicago\n    hours: &new",
    )
    text = text.replace(
        "    capacity: 25\n    time_zone: America/New_York",
        "    capacity: 12\n    time_zone: America/New_York",
    )
    start = text.index("  - id: rep-alan")
    text = text[:start] + text[text.index("  - id: rep-emmy") :]
    routing.write_text(text)
    async with started(configured, clock) as runtime, http_client(runtime) as api:
        reps = {rep["id"]: rep for rep in (await api.get("/reps")).json()["items"]}
        ada = reps["rep-ada"]
        assert (ada["time_zone"], ada["capacity"], ada["version"]) == ("America/Chicago", 5, 3)
        assert (reps["rep-grace"]["capacity"], reps["rep-grace"]["version"]) == (12, 2)
        assert (reps["rep-alan"]["active"], reps["rep-alan"]["unavailable"]) == (False, "inactive")
        history = (await api.get("/reps/rep-ada/history")).json()["versions"]
        assert [(v["change"], v["actor"]) for v in history] == [
            ("file_created", f"file:{routing}"),
            ("updated", "tests"),
            ("file_updated", f"file:{routing}"),
        ]
        assert history[2]["changes"] == {
            "time_zone": {"from": "America/New_York", "to": "America/Chicago"}
        }


async def _assignment(
    session: Any,
    lead: str,
    rep: str,
    *,
    at: datetime,
    status: str = "assigned",
    answered_after: timedelta | None = None,
    pool: str | None = "inbound",
    reason: str = "routed",
) -> None:
    session.add(
        Assignment(
            lead_id=lead,
            cycle=1,
            attempt=1,
            rep_id=rep,
            rep_name=rep.title(),
            rep_email=f"{rep}@example.com",
            routing_rule="everyone-else",
            strategy="load_balanced" if pool else "account_owner",
            pool=pool,
            reason=reason,
            status=status,
            mql_event_id=f"mql:{lead}:1",
            assigned_at=at,
            answered_at=None if answered_after is None else at + answered_after,
        )
    )


async def test_the_stats_are_the_fairness_ledger(api: httpx.AsyncClient, database_url: str) -> None:
    day = MONDAY_10AM_NEW_YORK - timedelta(days=1)
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            hour = timedelta(hours=1)
            await _assignment(
                session, "ld_1", "rep-ada", at=day, status="accepted", answered_after=hour
            )
            await _assignment(
                session, "ld_2", "rep-ada", at=day, status="converted", answered_after=3 * hour
            )
            await _assignment(
                session, "ld_3", "rep-ada", at=day, status="rejected", answered_after=hour
            )
            await _assignment(session, "ld_4", "rep-ada", at=day, pool=None, reason="account_owner")
            await _assignment(session, "ld_5", "rep-grace", at=day, status="reassigned")
            await _assignment(session, "ld_6", "rep-grace", at=day - timedelta(days=40))
    finally:
        await engine.dispose()
    response = await api.get("/handoff/reps/stats")
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["to"] == MONDAY_10AM_NEW_YORK.isoformat()
    assert stats["from"] == (MONDAY_10AM_NEW_YORK - timedelta(days=30)).isoformat()
    reps = {rep["rep_id"]: rep for rep in stats["reps"]}
    assert sorted(reps) == EXAMPLE_REPS
    assert reps["rep-ada"] == {
        "rep_id": "rep-ada",
        "name": "Ada Lovelace",
        "assigned": 4,
        "open": 1,
        "accepted": 2,
        "rejected": 1,
        "converted": 1,
        "reassigned": 0,
        "median_seconds_to_accept": 7200.0,
        "reasons": {"routed": 3, "account_owner": 1},
    }
    grace = reps["rep-grace"]
    assert (grace["assigned"], grace["reassigned"], grace["median_seconds_to_accept"]) == (
        1,
        1,
        None,
    )
    assert reps["rep-alan"]["assigned"] == 0
    (inbound,) = stats["pools"]
    assert (inbound["pool"], inbound["assigned"], inbound["accepted"]) == ("inbound", 4, 2)

    window = {"from": (day - timedelta(days=41)).isoformat(), "to": day.isoformat()}
    older = (await api.get("/handoff/reps/stats", params=window)).json()
    assert {rep["rep_id"]: rep["assigned"] for rep in older["reps"]}["rep-grace"] == 1
