"""`/openapi.json` describes every response: each management route's body with its fields, the
errors it may answer in the one error shape, and the security schemes an API browser (`/docs`)
authorises with: API keys (bearer or `X-API-Key`) and write keys (HTTP basic)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from services.clock import ManualClock
from services.gateway.stats import GatewayStats, StatName
from services.launch.runtime import PART_NAMES, Runtime
from tests.conftest import MONDAY_10AM_NEW_YORK, make_settings

API_KEY_SECURITY: list[dict[str, list[str]]] = [{"apiKeyBearer": []}, {"apiKeyHeader": []}]
SUCCESS = ("200", "201", "202")

MANAGEMENT = {  # every route the README's HTTP API table lists for an API key
    ("get", "/gateway/stats"),
    ("get", "/leads"),
    ("get", "/leads/{lead_id}"),
    ("get", "/leads/{lead_id}/ledger"),
    ("get", "/rulebooks"),
    ("post", "/rulebooks"),
    ("get", "/rulebooks/{version}"),
    ("post", "/rulebooks/{version}/activate"),
    ("post", "/rulebooks/simulate"),
    ("get", "/jobs/{job_id}"),
    ("get", "/handoff/leads/{lead_id}"),
    ("post", "/handoff/leads/{lead_id}/accept"),
    ("post", "/handoff/leads/{lead_id}/reject"),
    ("post", "/handoff/leads/{lead_id}/contacted"),
    ("post", "/handoff/leads/{lead_id}/convert"),
    ("post", "/handoff/leads/{lead_id}/recycle"),
    ("post", "/handoff/leads/{lead_id}/reassign"),
    ("get", "/handoff/queue"),
    ("get", "/handoff/reps/stats"),
    ("get", "/reps"),
    ("post", "/reps"),
    ("get", "/reps/{rep_id}"),
    ("patch", "/reps/{rep_id}"),
    ("post", "/reps/{rep_id}/away"),
    ("delete", "/reps/{rep_id}/away/{away_id}"),
    ("get", "/reps/{rep_id}/history"),
    ("get", "/sla/leads/{lead_id}"),
    ("get", "/sla/clocks"),
}
TRACKING = {("post", f"/v1/{call}") for call in ("track", "page", "screen", "identify")} | {
    ("post", "/v1/alias"),
    ("post", "/v1/group"),
    ("post", "/v1/batch"),
}


@pytest.fixture(scope="module")
async def document(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    """The document of a process running every part, as `leadflow dev` builds it (nothing is
    started: it is read from the app)."""
    data: Path = tmp_path_factory.mktemp("openapi")
    settings = make_settings("127.0.0.1:9", f"sqlite+aiosqlite:///{data}/openapi.db", data)
    runtime = Runtime(settings, ManualClock(MONDAY_10AM_NEW_YORK), PART_NAMES)
    try:
        transport = httpx.ASGITransport(app=runtime.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://leadflow.test") as api:
            response = await api.get("/openapi.json")  # no key needed to read it
        assert response.status_code == 200
        yield response.json()
    finally:
        await runtime.stop()


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


def body_schema(document: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    return resolve(document, response["content"]["application/json"]["schema"])


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def bare_objects(document: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
    """Where an object in `schema` says nothing of its fields: neither properties nor the type
    of its values."""
    schema = resolve(document, schema)
    found = []
    if schema.get("type") == "object" and "properties" not in schema:
        values = schema.get("additionalProperties")
        if not isinstance(values, dict):
            found.append(where)
        elif values:  # dict[str, Any] reads {"additionalProperties": true}; typed ones a schema
            found += bare_objects(document, values, f"{where}.*")
    for name, field in schema.get("properties", {}).items():
        if name != "attributes":  # a lead's free-form attributes, as the contract has them
            found += bare_objects(document, field, f"{where}.{name}")
    for option in schema.get("anyOf", []):
        found += bare_objects(document, option, where)
    if "items" in schema:
        found += bare_objects(document, schema["items"], f"{where}[]")
    return found


def test_the_security_schemes_are_declared(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    declared = {
        name: {key: value for key, value in scheme.items() if key != "description"}
        for name, scheme in schemes.items()
    }
    assert declared == {
        "apiKeyBearer": {"type": "http", "scheme": "bearer"},
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "writeKey": {"type": "http", "scheme": "basic"},
    }
    assert all(scheme["description"] for scheme in schemes.values())


def test_every_management_route_takes_an_api_key_either_way(document: dict[str, Any]) -> None:
    found = operations(document)
    assert set(found) >= MANAGEMENT
    keyed = {name for name, operation in found.items() if operation.get("security")}
    assert keyed - TRACKING == MANAGEMENT
    for name in MANAGEMENT:
        assert found[name]["security"] == API_KEY_SECURITY, name
    for name in TRACKING:
        assert found[name]["security"] == [{"writeKey": []}], name
    assert "security" not in found[("get", "/healthz")]


def test_every_management_body_is_described_with_its_fields(document: dict[str, Any]) -> None:
    found = operations(document)
    for name in [*sorted(MANAGEMENT), ("get", "/healthz")]:
        responses = found[name]["responses"]
        (success,) = [status for status in SUCCESS if status in responses]
        schema = body_schema(document, responses[success])
        assert schema.get("properties"), f"{name}: {success} has no fields"
        assert bare_objects(document, schema, f"{name[1]} {success}") == []


def test_errors_are_declared_in_the_one_error_shape(document: dict[str, Any]) -> None:
    found = operations(document)
    error_shape = document["components"]["schemas"]["ErrorBody"]
    assert error_shape["required"] == ["error"]
    detail = resolve(document, error_shape["properties"]["error"])
    assert set(detail["properties"]) == {"code", "message", "fields"}
    for name, operation in found.items():
        responses = operation["responses"]
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert body_schema(document, response) == error_shape, (name, status)
        if name in MANAGEMENT:
            assert {"401", "403"} <= set(responses), name
        if "{" in name[1] and name in MANAGEMENT:  # a path parameter: checked, and looked up
            assert {"404", "422"} <= set(responses), name
    assert {"409", "413", "422"} <= set(found[("post", "/rulebooks")]["responses"])
    assert "422" in found[("get", "/leads")]["responses"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_stage_filter_names_the_stages(document: dict[str, Any]) -> None:
    (stage,) = [
        parameter
        for parameter in operations(document)[("get", "/leads")]["parameters"]
        if parameter["name"] == "stage"
    ]
    (named,) = [option for option in stage["schema"]["anyOf"] if "$ref" in option]
    assert resolve(document, named)["enum"] == [
        "lead",
        "mql",
        "sal",
        "sql",
        "rejected",
        "nurture",
        "merged",
    ]


def test_every_gateway_counter_is_a_field_of_its_stats() -> None:
    assert list(GatewayStats.model_fields) == sorted(get_args(StatName))
