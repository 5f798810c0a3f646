"""The ingest gateway over HTTP against the real broker: auth, validation, acks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.topics import LEAD_ACTIVITY
from services.broker import EmbeddedBroker
from services.bus import ensure_topics
from services.clock import ManualClock
from services.launch.runtime import Runtime
from services.settings import Settings
from tests.conftest import WRITE_KEY, http_client, make_settings
from tests.support import read_topic

GOOD = {
    "event": "page_view",
    "anonymousId": "visitor-1",
    "messageId": "msg-good",
    "properties": {"url": "https://example.com/product"},
}


@pytest.fixture
async def gateway(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Runtime]:
    settings = make_settings(broker.bootstrap, sqlite_url, tmp_path)
    await ensure_topics(settings)
    runtime = Runtime(settings, clock, ["gateway"])
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def post(
    runtime: Runtime, body: Any, *, key: str | None = WRITE_KEY, raw: bytes | None = None
) -> httpx.Response:
    async with http_client(runtime, write_key=key) as client:
        if raw is not None:
            return await client.post(
                "/v1/track", content=raw, headers={"content-type": "application/json"}
            )
        return await client.post("/v1/track", json=body)


async def test_accepted_event_is_on_the_topic_as_a_cloudevent(gateway: Runtime) -> None:
    response = await post(
        gateway,
        {**GOOD, "traits": {"email": "Lee@Example.com"}, "timestamp": "2026-11-20T08:00:00Z"},
    )
    assert response.status_code == 200
    assert response.json() == {"success": True}
    records = await read_topic(gateway.settings, LEAD_ACTIVITY, expect=1)
    assert len(records) == 1
    record = records[0]
    assert record.key == b"email:lee@example.com"
    assert dict(record.headers)["ce_type"] == b"lead.activity.page_view"
    event = json.loads(record.value)
    assert event["specversion"] == "1.0"
    assert event["id"] == "msg-good"
    assert event["type"] == "lead.activity.page_view"
    assert event["time"] == "2026-11-20T08:00:00Z"
    assert event["subject"] == "email:lee@example.com"
    assert event["dataschema"] == "urn:leadflow:schema:lead.activity:v1"
    assert event["data"]["identity"] == {
        "email": "lee@example.com",
        "user_id": None,
        "anonymous_id": "visitor-1",
    }
    assert event["data"]["properties"]["url"] == "https://example.com/product"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"anonymousId": "a"}, "event"),
        ({"event": "page_view"}, "(body)"),
        ({"event": "", "anonymousId": "a"}, "event"),
        ({"event": "page_view", "anonymousId": "a", "properties": "nope"}, "properties"),
        ({"event": "page_view", "anonymousId": "a", "timestamp": "yesterday"}, "timestamp"),
        (
            {"event": "page_view", "anonymousId": "a", "traits": {"email": "not-an-email"}},
            "traits.email",
        ),
    ],
)
async def test_invalid_body_is_422_naming_the_field_and_nothing_is_produced(
    gateway: Runtime, body: dict[str, Any], field: str
) -> None:
    response = await post(gateway, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in [item["field"] for item in error["fields"]]
    assert await read_topic(gateway.settings, LEAD_ACTIVITY, expect=1, timeout=1.0) == []


async def test_missing_identity_says_which_fields_are_needed(gateway: Runtime) -> None:
    response = await post(gateway, {"event": "page_view"})
    assert "userId or anonymousId" in response.json()["error"]["fields"][0]["message"]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (
            json.dumps({**GOOD, "properties": {"blob": "x" * 40_000}}).encode(),
            413,
            "payload_too_large",
        ),
    ],
)
async def test_unreadable_or_oversized_body_is_refused(
    gateway: Runtime, raw: bytes, status: int, code: str
) -> None:
    response = await post(gateway, None, raw=raw)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert await read_topic(gateway.settings, LEAD_ACTIVITY, expect=1, timeout=1.0) == []


@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_missing_or_wrong_write_key_is_401(gateway: Runtime, key: str | None) -> None:
    response = await post(gateway, GOOD, key=key)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert await read_topic(gateway.settings, LEAD_ACTIVITY, expect=1, timeout=1.0) == []


async def test_broker_down_gives_503_with_retry_after(
    sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    async with EmbeddedBroker() as lonely:
        settings: Settings = make_settings(lonely.bootstrap, sqlite_url, tmp_path)
        await ensure_topics(settings)
        runtime = Runtime(settings, clock, ["gateway"])
        await runtime.start()
        try:
            assert (await post(runtime, GOOD)).status_code == 200
            await lonely.stop()
            response = await post(runtime, {**GOOD, "messageId": "msg-lost"})
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert response.json()["error"]["code"] == "broker_unavailable"
        finally:
            await runtime.stop()
