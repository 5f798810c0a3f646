"""The management API refuses path and query values the database cannot take (NUL and other
control characters, ids longer than their column, numbers past BIGINT, times with no UTC
equivalent) with a 4xx naming the parameter, never a 500: on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handoff_service.api import router as handoff_router
from handoff_service.models import Assignment
from schemas.lifecycle import LeadStage
from scoring_service.api import build_router as build_scoring_router
from scoring_service.consumer import ActivityApplier
from scoring_service.jobs import Reapplier
from scoring_service.rulebooks import RulebookCache, install_configured
from services.app import create_app
from services.bus import Publisher
from services.clock import ManualClock
from services.context import AppContext
from services.db import create_engine, session_factory
from services.params import MAX_OFFSET
from sla_monitor.api import build_router as build_sla_router
from sla_monitor.models import SlaClock
from sla_monitor.policy import load_policy
from tests.conftest import ADMIN_KEY, EXAMPLES, MONDAY_10AM_NEW_YORK, make_settings

CANDIDATE = (EXAMPLES / "rulebook.yaml").read_bytes()
WINDOW = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"


def management_app(context: AppContext) -> FastAPI:
    """The app with the scoring, handoff and SLA routers, as `leadflow dev` builds them, but
    without their consumers: these tests need the database, not the broker."""
    clock = context.clock
    cache = RulebookCache()
    reapplier = Reapplier(context.sessions, ActivityApplier(cache, clock), clock)
    routers = [
        build_scoring_router(cache, reapplier),
        handoff_router,
        build_sla_router(load_policy(context.settings.sla_policy)),
    ]
    return create_app(context, routers, parts=["scoring", "handoff", "sla"])


LONGEST_ID = "ld_" + "x" * 61  # as long as a lead id can be


def closed_mql(lead_id: str) -> list[Assignment | SlaClock]:
    """An assignment and its follow-up clock, both closed because the MQL was revoked."""
    at = MONDAY_10AM_NEW_YORK
    reason = "disqualified: personal-email"
    assignment = Assignment(
        lead_id=lead_id,
        cycle=1,
        rep_id="rep-ada",
        rep_name="Ada Lovelace",
        rep_email="ada@example.com",
        routing_rule="default",
        strategy="round_robin",
        status="revoked",
        status_reason=reason,
        mql_event_id=f"mql:{lead_id}:1",
        assigned_at=at,
    )
    clock = SlaClock(
        lead_id=lead_id,
        cycle=1,
        policy="accept-within-4-business-hours",
        rep_id="rep-ada",
        started_at=at,
        deadline=at,
        status="cancelled",
        reason=reason,
    )
    return [assignment, clock]


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings_ = make_settings("127.0.0.1:9", database_url, tmp_path)  # the broker is never used
    clock = ManualClock(MONDAY_10AM_NEW_YORK)
    engine = create_engine(database_url)
    publisher = Publisher(settings_)
    context = AppContext(settings_, session_factory(engine), publisher, clock)
    async with context.sessions() as session, session.begin():
        await install_configured(session, settings_.rulebook, clock=clock)
        session.add_all(closed_mql(LONGEST_ID))
    # a 500 is a response here, not an exception raised into the test
    transport = httpx.ASGITransport(app=management_app(context), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://leadflow.test", headers={"X-API-Key": ADMIN_KEY}
        ) as client:
            yield client
    finally:
        await publisher.stop()
        await engine.dispose()


def refused_fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, f"{response.request.url}: {response.text}"
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    return [item["field"] for item in error["fields"]]


REPORTED = [  # each once answered 500 on PostgreSQL
    ("/leads/%00", "lead_id"),
    ("/leads/x%00y/ledger", "lead_id"),
    ("/handoff/leads/%00", "lead_id"),
    ("/sla/leads/%00", "lead_id"),
    ("/jobs/%00", "job_id"),
    ("/rulebooks/%00", "version"),
    ("/leads?stage=%00", "stage"),
    ("/leads?offset=100000000000000000000", "offset"),
]
MORE = [
    ("/leads/" + "a" * 65, "lead_id"),  # longer than any lead id (String(64))
    ("/leads/" + "a" * 65 + "/ledger", "lead_id"),
    ("/handoff/leads/" + "a" * 65, "lead_id"),
    ("/sla/leads/" + "a" * 65, "lead_id"),
    ("/jobs/" + "j" * 65, "job_id"),
    ("/rulebooks/" + "v" * 101, "version"),
    ("/leads/a%1Fb", "lead_id"),  # other C0 controls, DEL and C1 controls too
    ("/sla/leads/a%7Fb", "lead_id"),
    ("/handoff/leads/a%C2%85b", "lead_id"),
    ("/leads?stage=" + "s" * 33, "stage"),
    ("/leads?offset=-1", "offset"),
    (f"/leads?offset={MAX_OFFSET + 1}", "offset"),
    ("/leads?limit=100000000000000000000", "limit"),
    ("/leads?min_score=nan", "min_score"),
    ("/leads?max_score=1e999", "max_score"),
    ("/leads?updated_since=0001-01-01T00:00:00%2B05:00", "updated_since"),
    ("/leads?updated_since=9999-12-31T23:00:00-05:00", "updated_since"),
    ("/leads?email=a%00b@example.com", "email"),
]


async def test_reported_urls_are_422_naming_the_parameter(api: httpx.AsyncClient) -> None:
    for url, field in REPORTED + MORE:
        assert field in refused_fields(await api.get(url)), url


async def test_posts_check_their_path_and_query_values_too(api: httpx.AsyncClient) -> None:
    assert refused_fields(await api.post("/rulebooks/%00/activate")) == ["version"]
    assert refused_fields(await api.post("/rulebooks/" + "v" * 101 + "/activate")) == ["version"]
    out_of_range = "from=0001-01-01T00:00:00%2B05:00&to=2026-12-01T00:00:00Z"
    response = await api.post(f"/rulebooks/simulate?{out_of_range}", content=CANDIDATE)
    assert refused_fields(response) == ["from"]


async def test_values_at_the_bounds_are_answered(api: httpx.AsyncClient) -> None:
    assert (await api.get(f"/leads?offset={MAX_OFFSET}&limit=500&stage=mql")).json() == {
        "items": [],
        "next_offset": None,
    }
    for url in [
        "/leads/" + "a" * 64,
        "/leads/" + "a" * 64 + "/ledger",
        "/handoff/leads/" + "a" * 64,
        "/sla/leads/" + "a" * 64,
        "/jobs/" + "j" * 64,
        "/rulebooks/" + "v" * 100,
        "/leads/%C3%A9t%C3%A9",  # not ASCII, but printable: simply not found
        "/leads/%FF%FE",  # not UTF-8: decoded with replacement characters, not found
    ]:
        response = await api.get(url)
        assert response.status_code == 404, f"{url}: {response.text}"
        assert response.json()["error"]["code"] == "not_found"
    response = await api.post(f"/rulebooks/simulate?{WINDOW}", content=CANDIDATE)
    assert response.status_code == 200, response.text


async def test_a_stage_filter_is_one_of_the_stages(api: httpx.AsyncClient) -> None:
    response = await api.get("/leads?stage=banana")
    assert refused_fields(response) == ["stage"]
    (problem,) = response.json()["error"]["fields"]
    assert all(f"'{stage.value}'" in problem["message"] for stage in LeadStage)
    for stage in LeadStage:
        answered = await api.get("/leads", params={"stage": stage.value})
        assert answered.json() == {"items": [], "next_offset": None}


async def test_a_valid_id_is_answered_with_why_its_mql_was_closed(
    api: httpx.AsyncClient,
) -> None:
    handoff = await api.get(f"/handoff/leads/{LONGEST_ID}")
    assert handoff.status_code == 200, handoff.text
    assert handoff.json()["assignments"][0]["status"] == "revoked"
    assert handoff.json()["assignments"][0]["status_reason"] == "disqualified: personal-email"
    sla = await api.get(f"/sla/leads/{LONGEST_ID}")
    assert sla.status_code == 200, sla.text
    assert sla.json()["clocks"][0]["status"] == "cancelled"
    assert sla.json()["clocks"][0]["reason"] == "disqualified: personal-email"


async def test_a_missing_key_is_still_401_before_any_value_is_checked(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/leads/%00", headers={"X-API-Key": ""})
    assert response.status_code == 401


# --- property: no path or query value gives a 5xx ---------------------------------------------

PATHS = [
    ("GET", "/leads/{}"),
    ("GET", "/leads/{}/ledger"),
    ("GET", "/handoff/leads/{}"),
    ("GET", "/sla/leads/{}"),
    ("GET", "/jobs/{}"),
    ("GET", "/rulebooks/{}"),
    ("POST", "/rulebooks/{}/activate"),  # no version is stored under a generated name: 404/422
]
LEAD_FILTERS = [
    "email",
    "stage",
    "grade",
    "min_score",
    "max_score",
    "updated_since",
    "limit",
    "offset",
    "unknown",
]

texts = st.text(st.characters(codec="utf-8"), max_size=60)  # every code point but surrogates
controls = st.sampled_from("\x00\x01\x1f\x7f\x85\x9f")
with_control = st.builds("".join, st.tuples(texts, controls, texts))  # the values that broke
encoded = st.one_of(
    st.one_of(texts, with_control).map(lambda text: quote(text, safe="")),
    st.binary(max_size=40).map(lambda raw: quote(raw, safe="")),  # any bytes, UTF-8 or not
)
offsets = st.builds(timezone, st.timedeltas(-timedelta(hours=23, minutes=59), timedelta(hours=23)))
numbers = st.one_of(
    st.integers().map(str),  # past BIGINT too
    st.floats().map(lambda number: quote(repr(number))),  # nan, inf, 1e+308
    st.datetimes(timezones=offsets).map(lambda at: quote(at.isoformat(), safe="")),
)
values = st.one_of(encoded, numbers)
PROPERTY = settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def no_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.request.url}: {response.text}"
    if response.status_code >= 400 and response.headers["content-type"] == "application/json":
        assert "error" in response.json()


@PROPERTY
@given(segment=encoded.filter(bool))
async def test_no_path_value_gives_a_server_error(api: httpx.AsyncClient, segment: str) -> None:
    for method, template in PATHS:
        no_server_error(await api.request(method, template.format(segment)))


@settings(PROPERTY, max_examples=50)  # eleven requests an example
@given(value=values, more=st.dictionaries(st.sampled_from(LEAD_FILTERS), values, max_size=4))
async def test_no_query_value_gives_a_server_error(
    api: httpx.AsyncClient, value: str, more: dict[str, str]
) -> None:
    for name in LEAD_FILTERS:
        no_server_error(await api.get(f"/leads?{name}={value}"))
    no_server_error(await api.get("/leads?" + joined(more)))
    for window in (
        f"from={value}&to=2026-12-01T00:00:00Z",
        f"from=2026-11-01T00:00:00Z&to={value}",
    ):
        no_server_error(await api.post(f"/rulebooks/simulate?{window}", content=CANDIDATE))


def joined(query: dict[str, str]) -> str:
    return "&".join(f"{name}={value}" for name, value in query.items())


# --- every management route takes its values through services.params -------------------------


async def test_every_id_and_number_parameter_is_bounded(api: httpx.AsyncClient) -> None:
    """A new endpoint with a bare `str` id or `int` page fails here, not in production."""
    schema = (await api.get("/openapi.json")).json()
    parameters = [
        (f"{method.upper()} {path} {parameter['name']}", parameter)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        for parameter in operation.get("parameters", [])
        if parameter["in"] in ("path", "query")
    ]
    assert len(parameters) >= 15
    for where, parameter in parameters:
        for option in parameter["schema"].get("anyOf", [parameter["schema"]]):
            if parameter["in"] == "path":
                assert option.get("maxLength"), where
            if option.get("type") == "integer":
                assert "maximum" in option, where
