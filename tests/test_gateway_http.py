"""The ingest gateway over HTTP against the real broker and database: the Segment-compatible
API (all calls, batch, gzip, text/plain, write key in the body), CORS, the pixel, the tracker
script, signed webhooks with dedupe, and nothing acknowledged lost while the broker stalls."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from schemas.topics import LEAD_ACTIVITY
from services.broker import EmbeddedBroker
from services.bus import ensure_topics
from services.clock import ManualClock
from services.launch.runtime import Runtime
from services.settings import Settings
from tests.conftest import EXAMPLES, WRITE_KEY, http_client, make_settings
from tests.support import read_topic, values

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SITE = "https://www.example.com"
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"
)


def gateway_settings(bootstrap: str, database_url: str, data_dir: Path) -> Settings:
    return make_settings(bootstrap, database_url, data_dir).model_copy(
        update={
            "cors_origins": [SITE],
            "webhook_secrets": {"zoom": SECRET, "hubspot-email": SECRET, "mailchimp": SECRET},
            "webhook_mappings": EXAMPLES / "webhooks",
        }
    )


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, clock: ManualClock) -> AsyncIterator[Runtime]:
    await ensure_topics(settings)
    runtime = Runtime(settings, clock, ["gateway"])
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
async def gateway(
    broker: EmbeddedBroker, database_url: str, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Runtime]:
    async with running_gateway(
        gateway_settings(broker.bootstrap, database_url, tmp_path), clock
    ) as runtime:
        yield runtime


@pytest.fixture
async def sqlite_gateway(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Runtime]:
    async with running_gateway(
        gateway_settings(broker.bootstrap, sqlite_url, tmp_path), clock
    ) as runtime:
        yield runtime


async def activity(runtime: Runtime, expect: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    return values(await read_topic(runtime.settings, LEAD_ACTIVITY, expect=expect, timeout=timeout))


async def nothing_produced(runtime: Runtime) -> bool:
    return await read_topic(runtime.settings, LEAD_ACTIVITY, expect=1, timeout=1.0) == []


# --- Segment HTTP Tracking API -----------------------------------------------------------------


async def test_every_segment_call_and_short_path_reaches_the_topic(sqlite_gateway: Runtime) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/page", {"anonymousId": "a1", "messageId": "p1", "name": "Home"}),
        ("/v1/p", {"anonymousId": "a1", "messageId": "p2", "properties": {"url": "/pricing"}}),
        ("/v1/t", {"anonymousId": "a1", "messageId": "t1", "event": "Form Submitted"}),
        ("/v1/identify", {"anonymousId": "a1", "messageId": "i1", "traits": {"email": "a@x.io"}}),
        ("/v1/i", {"userId": "u1", "messageId": "i2", "traits": {"firstName": "Ann"}}),
        ("/v1/alias", {"userId": "u1", "previousId": "a1", "messageId": "a1"}),
        ("/v1/a", {"userId": "u1", "previousId": "a2", "messageId": "a2"}),
        ("/v1/group", {"userId": "u1", "groupId": "g1", "messageId": "g1", "traits": {}}),
        ("/v1/g", {"userId": "u1", "groupId": "g1", "messageId": "g2"}),
        ("/v1/screen", {"userId": "u1", "messageId": "s1", "name": "Settings"}),
    ]
    async with http_client(sqlite_gateway) as client:
        for path, body in calls:
            response = await client.post(path, json=body)
            assert response.status_code == 200, (path, response.text)
            assert response.json() == {"success": True}
    events = {event["id"]: event for event in await activity(sqlite_gateway, len(calls))}
    assert set(events) == {body["messageId"] for _, body in calls}
    assert {event_id: events[event_id]["type"].rsplit(".", 1)[1] for event_id in events} == {
        "p1": "page_view",
        "p2": "page_view",
        "t1": "form_submit",
        "i1": "identify",
        "i2": "identify",
        "a1": "identify",
        "a2": "identify",
        "g1": "identify",
        "g2": "identify",
        "s1": "page_view",
    }
    assert events["a1"]["data"]["properties"] == {"previous_id": "a1"}
    assert events["i1"]["subject"] == "email:a@x.io"


async def test_browser_style_batch_text_plain_with_the_write_key_in_the_body(
    sqlite_gateway: Runtime,
) -> None:
    """What analytics.js sends: `/v1/b`, text/plain (no preflight), `writeKey` in the body."""
    body = {
        "writeKey": WRITE_KEY,
        "sentAt": "2030-01-01T00:00:10Z",
        "batch": [
            {
                "type": "page",
                "anonymousId": "b1",
                "messageId": "bm1",
                "timestamp": "2030-01-01T00:00:00Z",
            },
            {
                "type": "track",
                "anonymousId": "b1",
                "messageId": "bm2",
                "event": "Webinar Attended",
                "timestamp": "2030-01-01T00:00:05Z",
            },
        ],
    }
    async with http_client(sqlite_gateway, write_key=None) as client:
        response = await client.post(
            "/v1/b", content=json.dumps(body), headers={"content-type": "text/plain"}
        )
    assert response.status_code == 200, response.text
    events = {event["id"]: event for event in await activity(sqlite_gateway, 2)}
    now = sqlite_gateway.clock.now()
    # the client's clock ran years ahead; times are corrected relative to the receive time
    assert datetime.fromisoformat(events["bm1"]["time"]) == now.replace(microsecond=0) - (
        datetime.fromisoformat("2030-01-01T00:00:10+00:00")
        - datetime.fromisoformat("2030-01-01T00:00:00+00:00")
    )
    assert events["bm2"]["type"] == "lead.activity.webinar_attend"


async def test_gzip_batch_from_a_server_library(sqlite_gateway: Runtime) -> None:
    body = {"batch": [{"type": "track", "userId": "u9", "messageId": "gz1", "event": "x"}]}
    async with http_client(sqlite_gateway) as client:
        response = await client.post(
            "/v1/batch",
            content=gzip.compress(json.dumps(body).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert response.status_code == 200, response.text
    assert [event["id"] for event in await activity(sqlite_gateway, 1)] == ["gz1"]


async def test_one_bad_message_refuses_the_batch_naming_it(sqlite_gateway: Runtime) -> None:
    body = {
        "batch": [
            {"type": "track", "anonymousId": "a", "event": "ok"},
            {"type": "track", "anonymousId": "a"},
            {"type": "shout", "anonymousId": "a"},
            {"type": "identify", "anonymousId": "a", "traits": {"email": "nope"}},
        ]
    }
    async with http_client(sqlite_gateway) as client:
        response = await client.post("/v1/batch", json=body)
    assert response.status_code == 422
    fields = [item["field"] for item in response.json()["error"]["fields"]]
    assert fields == ["batch.1.event", "batch.2.type", "batch.3.traits.email"]
    assert await nothing_produced(sqlite_gateway)


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (
            {"batch": [{"type": "track", "anonymousId": "a", "event": "x", "p": "x" * 40_000}]},
            "batch.0",
        ),
        (
            {
                "batch": [{"type": "track", "anonymousId": "a", "event": "x", "p": "x" * 30_000}]
                * 18
            },
            "limit is 512000",
        ),
    ],
)
async def test_over_the_size_limits_is_413(
    sqlite_gateway: Runtime, body: dict[str, Any], what: str
) -> None:
    async with http_client(sqlite_gateway) as client:
        response = await client.post("/v1/batch", json=body)
    assert response.status_code == 413
    assert what in response.json()["error"]["message"]
    assert await nothing_produced(sqlite_gateway)


async def test_a_wrong_write_key_in_the_body_is_401(sqlite_gateway: Runtime) -> None:
    async with http_client(sqlite_gateway, write_key=None) as client:
        response = await client.post(
            "/v1/t", content=json.dumps({"writeKey": "nope", "anonymousId": "a", "event": "x"})
        )
    assert response.status_code == 401


# --- CORS --------------------------------------------------------------------------------------


async def test_cors_preflight_and_actual_request_for_an_allowed_origin(
    sqlite_gateway: Runtime,
) -> None:
    async with http_client(sqlite_gateway) as client:
        preflight = await client.options(
            "/v1/track",
            headers={
                "origin": SITE,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, authorization",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == SITE
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "content-type, authorization"
        actual = await client.post(
            "/v1/track", json={"anonymousId": "c", "event": "x"}, headers={"origin": SITE}
        )
        assert actual.status_code == 200
        assert actual.headers["access-control-allow-origin"] == SITE
        refused = await client.post("/v1/track", json={"event": "x"}, headers={"origin": SITE})
        assert refused.status_code == 422  # the page's script can read why
        assert refused.headers["access-control-allow-origin"] == SITE
        evil = await client.options(
            "/v1/track",
            headers={"origin": "https://evil.test", "access-control-request-method": "POST"},
        )
        assert evil.status_code == 400
        assert "access-control-allow-origin" not in evil.headers
        other = await client.post(
            "/v1/track",
            json={"anonymousId": "c", "event": "x"},
            headers={"origin": "https://evil.test"},
        )
        assert "access-control-allow-origin" not in other.headers


# --- pixel and tracker -------------------------------------------------------------------------


async def test_pixel_records_a_page_view_and_sets_the_anonymous_id_cookie(
    sqlite_gateway: Runtime,
) -> None:
    params = {
        "wk": WRITE_KEY,
        "url": "https://www.example.com/pricing?utm_source=news",
        "title": "Pricing",
        "referrer": "https://news.example.net/",
        "utm_source": "news",
        "utm_campaign": "fall",
        "mid": "px-1",
    }
    async with http_client(sqlite_gateway, write_key=None) as client:
        first = await client.get("/t.gif", params=params, headers={"user-agent": CHROME})
        assert first.status_code == 200
        assert first.headers["content-type"] == "image/gif"
        assert first.content.startswith(b"GIF89a")
        assert "no-store" in first.headers["cache-control"]
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("lf_aid=") and "samesite=lax" in cookie.lower()
        anonymous_id = cookie.split(";")[0].split("=", 1)[1]
        again = await client.get(
            "/t.gif",
            params={**params, "mid": "px-2", "event": "content_download", "email": "Jo@x.io"},
            headers={"cookie": f"lf_aid={anonymous_id}", "user-agent": CHROME},
        )
        assert "set-cookie" not in again.headers
    events = {event["id"]: event for event in await activity(sqlite_gateway, 2)}
    page = events["px-1"]
    assert page["type"] == "lead.activity.page_view"
    assert page["data"]["identity"]["anonymous_id"] == anonymous_id
    assert page["data"]["properties"]["utm_campaign"] == "fall"
    assert page["data"]["properties"]["url"] == params["url"]
    assert page["data"]["context"]["campaign"] == {"source": "news", "name": "fall"}
    assert page["data"]["is_bot"] is False
    download = events["px-2"]
    assert download["type"] == "lead.activity.content_download"
    assert download["subject"] == "email:jo@x.io"
    assert download["data"]["identity"]["anonymous_id"] == anonymous_id


async def test_pixel_never_breaks_a_page_and_counts_what_it_refused(
    sqlite_gateway: Runtime,
) -> None:
    async with http_client(sqlite_gateway, write_key=None) as client:
        for params in (
            {},  # no write key
            {"wk": "wrong"},
            {"wk": WRITE_KEY, "email": "not-an-email"},
            {"wk": WRITE_KEY, "event": "x" * 500},
        ):
            response = await client.get("/t.gif", params=params)
            assert response.status_code == 200
            assert response.headers["content-type"] == "image/gif"
        stats = (await client.get("/gateway/stats")).json()
    assert stats["pixel_rejected"] == 4
    assert await nothing_produced(sqlite_gateway)


async def test_a_prefetching_head_request_is_recorded_as_a_bot(sqlite_gateway: Runtime) -> None:
    async with http_client(sqlite_gateway, write_key=None) as client:
        response = await client.head("/t.gif", params={"wk": WRITE_KEY, "mid": "head-1"})
        assert response.status_code == 200
        assert (await client.get("/gateway/stats")).json()["bots_flagged"] == 1
    (event,) = await activity(sqlite_gateway, 1)
    assert event["data"]["is_bot"] is True
    assert event["data"]["context"]["bot_reason"] == "head_request"


async def test_pixel_answers_the_gif_when_the_broker_is_gone(
    sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    async with EmbeddedBroker() as lonely:
        settings = gateway_settings(lonely.bootstrap, sqlite_url, tmp_path).model_copy(
            update={"produce_timeout_seconds": 0.5}
        )
        async with running_gateway(settings, clock) as runtime:
            await lonely.stop()
            async with http_client(runtime, write_key=None) as client:
                response = await client.get("/t.gif", params={"wk": WRITE_KEY})
                assert response.status_code == 200
                assert response.content.startswith(b"GIF89a")
                stats = (await client.get("/gateway/stats")).json()
    assert stats["pixel_publish_unconfirmed"] == 1
    assert "pixel_publish_failed" not in stats  # a timeout is no proof it was not recorded


async def test_the_tracker_script_is_served(sqlite_gateway: Runtime) -> None:
    async with http_client(sqlite_gateway, write_key=None) as client:
        response = await client.get("/js/leadflow.js")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/javascript")
        assert "navigator.sendBeacon" in response.text
        cached = await client.get(
            "/js/leadflow.js", headers={"if-none-match": response.headers["etag"]}
        )
        assert cached.status_code == 304


# --- webhooks ----------------------------------------------------------------------------------

ZOOM_JOINED = {
    "event": "webinar.participant_joined",
    "event_ts": 1_795_000_000_000,
    "payload": {
        "account_id": "acc",
        "object": {
            "id": "81234567890",
            "topic": "Scoring leads that sales trusts",
            "participant": {
                "user_id": "16778240",
                "user_name": "Dana",
                "join_time": "2026-11-23T14:59:00Z",
                "email": "dana@example.org",
            },
        },
    },
}


def signed(body: bytes, clock: ManualClock, msg_id: str, *, secret: str = SECRET) -> dict[str, str]:
    """Headers from the Standard Webhooks reference library, as a real sender makes them."""
    now = clock.now()
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


async def test_signed_webhook_becomes_an_activity_once_even_when_redelivered(
    gateway: Runtime, clock: ManualClock
) -> None:
    body = json.dumps(ZOOM_JOINED).encode()
    async with http_client(gateway, write_key=None) as client:
        first = await client.post("/webhooks/zoom", content=body, headers=signed(body, clock, "m1"))
        assert first.status_code == 200, first.text
        assert first.json() == {"success": True}
        # the tool redelivers the same webhook-id (it missed our answer): 200, nothing produced
        again = await client.post("/webhooks/zoom", content=body, headers=signed(body, clock, "m1"))
        assert again.status_code == 200
        assert again.json() == {"success": True, "duplicate": True}
    (event,) = await activity(gateway, 1)
    assert event["id"] == "wh:zoom:m1:0"
    assert event["type"] == "lead.activity.webinar_attend"
    assert event["subject"] == "email:dana@example.org"
    assert event["time"] == "2026-11-23T14:59:00Z"
    assert event["data"]["channel"] == "webhook:zoom"
    assert event["data"]["properties"]["webinar"] == "Scoring leads that sales trusts"


@pytest.mark.parametrize(
    ("tamper", "status", "code"),
    [
        ("secret", 401, "invalid_signature"),
        ("body", 401, "invalid_signature"),
        ("stale", 401, "invalid_signature"),
        ("source", 404, "unknown_source"),
        ("unmappable", 422, "unmappable_payload"),
    ],
)
async def test_webhooks_that_are_not_ours_or_unreadable_are_refused(
    sqlite_gateway: Runtime, clock: ManualClock, tamper: str, status: int, code: str
) -> None:
    body = json.dumps(ZOOM_JOINED).encode()
    headers = signed(body, clock, "m2")
    path = "/webhooks/zoom"
    if tamper == "secret":
        headers = signed(body, clock, "m2", secret="whsec_" + "A" * 32)
    elif tamper == "body":
        body = body.replace(b"dana@", b"mallory@")
    elif tamper == "stale":
        clock_then = ManualClock(clock.now())
        clock_then.advance(-timedelta(minutes=6))
        headers = signed(body, clock_then, "m2")
    elif tamper == "source":
        path = "/webhooks/marketo"
    elif tamper == "unmappable":
        body = json.dumps({"event": "webinar.participant_joined", "payload": {}}).encode()
        headers = signed(body, clock, "m2")
    async with http_client(sqlite_gateway, write_key=None) as client:
        response = await client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if tamper == "unmappable":
        assert "payload.object.participant.email" in error["message"]
    assert await nothing_produced(sqlite_gateway)


async def test_email_scanner_click_and_form_encoded_webhooks(
    sqlite_gateway: Runtime, clock: ManualClock
) -> None:
    created = int(clock.now().timestamp() * 1000)
    hubspot = {
        "events": [
            {
                "id": "e1",
                "type": "CLICK",
                "recipient": "ann@x.io",
                "created": created,
                "url": "https://x.io/pricing",
                "sentBy": {"id": "s", "created": created - 1500},
            },
            {
                "id": "e2",
                "type": "OPEN",
                "recipient": "ann@x.io",
                "created": created,
                "filteredEvent": True,
            },
            {
                "id": "e3",
                "type": "CLICK",
                "recipient": "ann@x.io",
                "created": created,
                "sentBy": {"id": "s", "created": created - 3_600_000},
                "userAgent": CHROME,
            },
        ]
    }
    mailchimp = b"type=unsubscribe&fired_at=2026-11-23+14%3A00%3A00&data%5Bemail%5D=ann%40x.io"
    async with http_client(sqlite_gateway, write_key=None) as client:
        body = json.dumps(hubspot).encode()
        response = await client.post(
            "/webhooks/hubspot-email", content=body, headers=signed(body, clock, "h1")
        )
        assert response.status_code == 200, response.text
        headers = {
            **signed(mailchimp, clock, "mc1"),
            "content-type": "application/x-www-form-urlencoded",
        }
        response = await client.post("/webhooks/mailchimp", content=mailchimp, headers=headers)
        assert response.status_code == 200, response.text
    events = {event["id"]: event["data"] for event in await activity(sqlite_gateway, 4)}
    assert events["wh:hubspot-email:h1:0"]["context"]["bot_reason"] == "click_1s_after_delivery"
    assert events["wh:hubspot-email:h1:1"]["context"]["bot_reason"] == "flagged_by_source"
    assert events["wh:hubspot-email:h1:2"]["is_bot"] is False
    assert events["wh:mailchimp:mc1:0"]["activity_type"] == "unsubscribe"


# --- nothing acknowledged is lost ----------------------------------------------------------------


async def test_every_acknowledged_request_survives_a_stalled_broker(
    sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    """Requests keep arriving while the broker stalls and comes back. Every request answered
    2xx must be on the topic afterwards; every other request must have been answered non-2xx.

    The embedded broker keeps messages in memory only, so killing it would lose the topic (and
    prove nothing about the gateway). Instead the broker process is frozen with SIGSTOP, which
    looks to the gateway exactly like a hung or partitioned broker (the TCP connection stays
    open, no answers come), and thawed with SIGCONT, after which the topic is read."""
    async with EmbeddedBroker() as stalling:
        assert stalling.pid is not None
        settings = gateway_settings(stalling.bootstrap, sqlite_url, tmp_path).model_copy(
            update={"produce_timeout_seconds": 1.0}
        )
        async with running_gateway(settings, clock) as runtime, http_client(runtime) as client:

            async def send(index: int) -> tuple[str, int]:
                await asyncio.sleep(index * 0.04)
                message_id = f"stall-{index}"
                body = {"anonymousId": "s", "event": "page_view", "messageId": message_id}
                response = await client.post("/v1/track", json=body)
                return message_id, response.status_code

            async def stall() -> None:
                await asyncio.sleep(0.6)
                os.kill(stalling.pid or 0, signal.SIGSTOP)
                try:
                    await asyncio.sleep(1.6)
                finally:
                    os.kill(stalling.pid or 0, signal.SIGCONT)

            stall_task = asyncio.create_task(stall())
            results = await asyncio.gather(*(send(index) for index in range(80)))
            await stall_task
            on_topic = {event["id"] for event in await activity(runtime, 80, timeout=8.0)}
    acknowledged = {message_id for message_id, status in results if status == 200}
    refused = {message_id for message_id, status in results if status != 200}
    assert {status for _, status in results} <= {200, 503}
    assert acknowledged and refused, results  # the stall really happened, around live traffic
    assert acknowledged <= on_topic
