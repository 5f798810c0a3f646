"""What the browser SDKs need from the gateway besides the Segment API, over HTTP: a CORS
preflight that allows the headers they send (an allow-list naming them, never `*`), the write
key in `?writeKey=` and `/beacon/v1/batch` for beacons, and the settings the SDKs fetch first
(Segment's `/v1/projects/KEY/settings`, RudderStack's `/sourceConfig`). The real SDKs in a real
browser are in tests/test_trackers_browser.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.topics import LEAD_ACTIVITY
from services.broker import EmbeddedBroker
from services.clock import ManualClock
from services.gateway.cors import ALLOWED_HEADERS
from services.launch.runtime import Runtime
from tests.conftest import WRITE_KEY, http_client
from tests.support import read_topic, values
from tests.test_gateway_http import SITE, gateway_settings, running_gateway

RUDDERSTACK_HEADERS = (
    "authorization,content-type,anonymousid,sentat,rsa-recovered,rsa-retry-attempt,"
    "rsa-retry-reason,rsa-since-first-attempt,rsa-since-last-attempt"
)


@pytest.fixture
async def sqlite_gateway(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Runtime]:
    settings = gateway_settings(broker.bootstrap, sqlite_url, tmp_path)
    async with running_gateway(settings, clock) as runtime:
        yield runtime


async def test_the_preflight_allows_the_headers_the_sdks_send_and_nothing_else(
    sqlite_gateway: Runtime,
) -> None:
    async with http_client(sqlite_gateway, write_key=None) as client:
        rudderstack = await client.options(
            "/v1/track",
            headers={
                "origin": SITE,
                "access-control-request-method": "POST",
                "access-control-request-headers": RUDDERSTACK_HEADERS,
            },
        )
        beacon = await client.options(
            "/beacon/v1/batch",
            headers={"origin": SITE, "access-control-request-method": "POST"},
        )
        config = await client.options(
            "/sourceConfig/",
            headers={
                "origin": SITE,
                "access-control-request-method": "GET",
                "access-control-request-headers": "authorization",
            },
        )
        unknown = await client.options(
            "/v1/track",
            headers={
                "origin": SITE,
                "access-control-request-method": "POST",
                "access-control-request-headers": "AnonymousId, X-Anything",
            },
        )
    assert rudderstack.status_code == 204
    assert rudderstack.headers["access-control-allow-origin"] == SITE
    allowed = rudderstack.headers["access-control-allow-headers"].split(", ")
    assert allowed == RUDDERSTACK_HEADERS.split(",")
    assert "*" not in ALLOWED_HEADERS and "*" not in allowed
    assert "access-control-allow-credentials" not in rudderstack.headers
    assert beacon.status_code == 204 and config.status_code == 204
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == "headers not allowed: x-anything"


async def test_beacons_carry_the_write_key_in_the_query_string(sqlite_gateway: Runtime) -> None:
    """RudderStack's beacon delivery: text/plain, `?writeKey=`, `/beacon/v1/batch`."""
    body = json.dumps(
        {
            "batch": [
                {
                    "type": "track",
                    "event": "Webinar Attended",
                    "anonymousId": "beacon-visitor",
                    "messageId": "beacon-1",
                    "sentAt": "2026-11-23T15:00:00.000Z",
                    "originalTimestamp": "2026-11-23T15:00:00.000Z",
                }
            ],
            "sentAt": "2026-11-23T15:00:00.000Z",
        }
    )
    plain = {"content-type": "text/plain;charset=UTF-8", "origin": SITE}
    async with http_client(sqlite_gateway, write_key=None) as client:
        accepted = await client.post(
            f"/beacon/v1/batch?writeKey={WRITE_KEY}", content=body, headers=plain
        )
        single = await client.post(
            f"/v1/track?writeKey={WRITE_KEY}",
            json={"event": "x", "anonymousId": "query-visitor", "messageId": "query-1"},
        )
        wrong = await client.post("/beacon/v1/batch?writeKey=nope", content=body, headers=plain)
        missing = await client.post("/beacon/v1/batch", content=body, headers=plain)
        dirty = await client.post(
            f"/beacon/v1/batch?writeKey={WRITE_KEY}",
            content=body.replace("beacon-visitor", "beacon\\u0000visitor"),
            headers=plain,
        )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"success": True}
    assert accepted.headers["access-control-allow-origin"] == SITE
    assert single.status_code == 200
    assert wrong.status_code == 401 and missing.status_code == 401
    assert "?writeKey=" in missing.json()["error"]["message"]
    assert dirty.status_code == 422
    assert dirty.json()["error"]["fields"][0]["field"] == "batch.0.anonymousId"
    events = {
        e["id"]: e
        for e in values(await read_topic(sqlite_gateway.settings, LEAD_ACTIVITY, expect=2))
    }
    assert sorted(events) == ["beacon-1", "query-1"]
    assert events["beacon-1"]["data"]["channel"] == "http:/beacon/v1/batch"
    assert events["beacon-1"]["type"] == "lead.activity.webinar_attend"


async def test_segment_settings_send_analytics_js_back_to_leadflow(
    sqlite_gateway: Runtime,
) -> None:
    async with http_client(sqlite_gateway, write_key=None) as client:
        settings = await client.get(f"/v1/projects/{WRITE_KEY}/settings", headers={"origin": SITE})
        unknown = await client.get("/v1/projects/nope/settings")
    assert settings.status_code == 200
    assert settings.headers["access-control-allow-origin"] == SITE
    segment = settings.json()["integrations"]["Segment.io"]
    assert segment == {"apiKey": WRITE_KEY, "apiHost": "leadflow.test/v1", "protocol": "http"}
    assert list(settings.json()["integrations"]) == ["Segment.io"]  # no other destination
    assert settings.json()["metrics"]["sampleRate"] == 0
    assert unknown.status_code == 401


async def test_rudderstack_source_config_names_no_destination(sqlite_gateway: Runtime) -> None:
    async with http_client(sqlite_gateway, write_key=WRITE_KEY) as client:
        by_auth = await client.get("/sourceConfig/", params={"p": "npm", "v": "3.34.1"})
    async with http_client(sqlite_gateway, write_key=None) as client:
        by_query = await client.get("/sourceConfig", params={"writeKey": WRITE_KEY})
        unknown = await client.get("/sourceConfig/", params={"writeKey": "nope"})
    assert by_auth.status_code == 200 and by_query.json() == by_auth.json()
    source = by_auth.json()["source"]
    assert source["enabled"] is True and source["destinations"] == []
    assert source["config"]["statsCollection"]["errors"]["enabled"] is False
    assert unknown.status_code == 401
