"""The Snowplow collector: Snowplow's own Python tracker (`snowplow-tracker` from PyPI) posting
to `/com.snowplowanalytics.snowplow/tp2` and getting `/i`, and the protocol over HTTP: app ids
allowed only when configured (others refused and counted), answers like Snowplow's collector
(200, the GIF always on `/i`), CORS with credentials, the `sp` network-id cookie, the event map,
and input hygiene (ids with control characters refused naming the field, other strings cleaned).
The browser tracker is in tests/test_trackers_browser.py."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from snowplow_tracker.emitters import Emitter
from snowplow_tracker.events.page_view import PageView
from snowplow_tracker.events.self_describing import SelfDescribing
from snowplow_tracker.events.structured_event import StructuredEvent
from snowplow_tracker.self_describing_json import SelfDescribingJson
from snowplow_tracker.subject import Subject
from snowplow_tracker.tracker import Tracker

from schemas.topics import LEAD_ACTIVITY
from services.broker import EmbeddedBroker
from services.clock import ManualClock
from services.gateway.snowplow_map import SnowplowMapError, load_snowplow_map
from services.launch.runtime import Runtime
from tests.conftest import EXAMPLES, OPS_KEY, http_client
from tests.support import read_topic, serving, values
from tests.test_gateway_http import CHROME, SITE, gateway_settings, running_gateway

APP = "marketing-site"
TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
SUBMIT_FORM = "iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
GIF_MAGIC = b"GIF89a"


@pytest.fixture
async def collector(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Runtime]:
    settings = gateway_settings(broker.bootstrap, sqlite_url, tmp_path).model_copy(
        update={
            "snowplow_apps": {APP: "website", "docs-site": "docs"},
            "snowplow_mapping": EXAMPLES / "snowplow.yaml",
        }
    )
    async with running_gateway(settings, clock) as runtime:
        yield runtime


def event(**fields: Any) -> dict[str, str]:
    """One tracker-protocol event as the JavaScript tracker posts it (strings throughout)."""
    now = str(int(time.time() * 1000))
    base = {
        "e": "pv",
        "eid": str(uuid.uuid4()),
        "aid": APP,
        "tna": "sp1",
        "p": "web",
        "tv": "js-4.6.8",
        "dtm": now,
        "stm": now,
        "duid": "d-" + uuid.uuid4().hex[:12],
        "url": "https://www.example.com/pricing?utm_source=newsletter&utm_campaign=q4",
        "page": "Pricing",
        "refr": "https://www.google.com/",
    }
    return {**base, **{key: str(value) for key, value in fields.items()}}


def payload(*events: dict[str, Any]) -> dict[str, Any]:
    return {"schema": PAYLOAD, "data": list(events)}


def unstruct(schema: str, data: dict[str, Any]) -> str:
    return json.dumps({"schema": UNSTRUCT, "data": {"schema": schema, "data": data}})


# --- Snowplow's Python tracker ----------------------------------------------------------------


def drive_python_tracker(url: str, method: str) -> tuple[list[str], list[Any]]:
    """A backend tracking with snowplow-tracker; returns the event ids it sent and failures."""
    host, port = url.removeprefix("http://").split(":")
    failures: list[Any] = []
    emitter = Emitter(
        host,
        protocol="http",
        port=int(port),
        method=method,  # type: ignore[arg-type]
        batch_size=1,
        on_failure=lambda count, failed: failures.append((count, failed)),
    )
    subject = Subject().set_user_id("u-77").set_domain_user_id("dom-77")
    tracker = Tracker("backend", emitter, subject=subject, app_id=APP, encode_base64=True)
    ids = [tracker.track(PageView(page_url="https://www.example.com/pricing?utm_medium=email"))]
    ids.append(
        tracker.track(StructuredEvent(category="webinar", action="register", label="Scoring 101"))
    )
    form = SelfDescribingJson(
        SUBMIT_FORM,
        {
            "formId": "demo-request",
            "formClasses": [],
            "elements": [
                {
                    "name": "email",
                    "value": "Dana@Example.org",
                    "nodeName": "INPUT",
                    "type": "email",
                },
                {"name": "first_name", "value": "Dana", "nodeName": "INPUT", "type": "text"},
                {"name": "password", "value": "hunter2", "nodeName": "INPUT", "type": "password"},
            ],
        },
    )
    ids.append(tracker.track(SelfDescribing(form)))
    emitter.flush()
    return [event_id for event_id in ids if event_id], failures


@pytest.mark.parametrize("method", ["post", "get"])
async def test_snowplow_python_tracker_delivers(collector: Runtime, method: str) -> None:
    async with serving(collector.app) as url:
        ids, failures = await asyncio.to_thread(drive_python_tracker, url, method)
    assert failures == []
    events = {
        e["id"]: e for e in values(await read_topic(collector.settings, LEAD_ACTIVITY, expect=3))
    }
    assert sorted(events) == sorted(ids)
    page, register, form = (events[event_id] for event_id in ids)
    channel = f"snowplow:{TP2}" if method == "post" else "snowplow:/i"
    assert {e["data"]["channel"] for e in events.values()} == {channel}
    assert page["type"] == "lead.activity.page_view"
    assert page["source"] == "leadflow/gateway/snowplow/website"
    assert page["subject"] == "user:u-77"
    assert page["data"]["identity"] == {"email": None, "user_id": "u-77", "anonymous_id": "dom-77"}
    assert page["data"]["properties"]["url"] == "https://www.example.com/pricing?utm_medium=email"
    assert page["data"]["properties"]["utm_medium"] == "email"
    assert page["data"]["context"]["campaign"] == {"medium": "email"}
    assert page["data"]["context"]["snowplow"]["namespace"] == "backend"
    assert page["data"]["context"]["library"]["version"].startswith("py-")
    assert register["type"] == "lead.activity.webinar_register"
    assert register["data"]["properties"]["webinar"] == "Scoring 101"
    assert form["type"] == "lead.activity.form_submit"
    assert form["subject"] == "email:dana@example.org"
    assert form["data"]["properties"]["form"] == "demo-request"
    assert form["data"]["attributes"] == {"first_name": "Dana"}  # never the password
    assert "hunter2" not in json.dumps(form)


# --- the protocol over HTTP -------------------------------------------------------------------


async def test_page_views_pings_and_events_map_as_documented(collector: Runtime) -> None:
    sent = int(time.time() * 1000)
    page_view = event(
        dtm=sent - 60_000,
        stm=sent,
        co=json.dumps(
            {
                "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
                "data": [
                    {
                        "schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
                        "data": {"id": "pv-1"},
                    }
                ],
            }
        ),
    )
    ping = event(e="pp", duid=page_view["duid"], pp_mix=0, pp_max=0, pp_miy=10, pp_may=400)
    ping["co"] = page_view["co"]
    link = event(
        e="ue",
        duid=page_view["duid"],
        ue_px=base64.urlsafe_b64encode(
            unstruct(
                "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1",
                {"targetUrl": "https://www.example.com/guide.pdf", "elementContent": "Guide"},
            ).encode()
        )
        .decode()
        .rstrip("="),
    )
    unknown = event(
        e="ue", ue_pr=unstruct("iglu:com.acme/trial_started/jsonschema/1-0-0", {"plan": "pro"})
    )
    structured = event(e="se", se_ca="video", se_ac="Play", se_la="Demo", se_va="12.5")
    async with http_client(collector, write_key=None) as client:
        response = await client.post(
            TP2,
            json=payload(page_view, ping, link, unknown, structured),
            headers={"user-agent": CHROME, "origin": SITE},
        )
    assert response.status_code == 200
    assert response.text == "ok"
    assert response.headers["access-control-allow-origin"] == SITE
    assert response.headers["access-control-allow-credentials"] == "true"
    network_cookie = response.cookies.get("sp")
    assert network_cookie
    events = {
        e["id"]: e for e in values(await read_topic(collector.settings, LEAD_ACTIVITY, expect=5))
    }
    pv = events[page_view["eid"]]["data"]
    assert events[page_view["eid"]]["time"] == "2026-11-23T14:59:00Z"  # dtm, corrected by stm
    assert pv["properties"]["page_view_id"] == "pv-1"
    assert pv["properties"]["title"] == "Pricing"
    assert pv["properties"]["referrer"] == "https://www.google.com/"
    assert pv["properties"]["path"] == "/pricing"
    assert pv["context"]["campaign"] == {"source": "newsletter", "name": "q4"}
    assert pv["context"]["userAgent"] == CHROME
    assert pv["is_bot"] is False
    pp = events[ping["eid"]]
    assert (pp["type"], pp["data"]["event_name"]) == ("lead.activity.custom", "page_ping")
    assert pp["data"]["properties"]["page_view_id"] == "pv-1"
    assert pp["data"]["properties"]["pp_may"] == 400
    click = events[link["eid"]]["data"]
    assert click["event_name"] == "Link Click"
    assert click["properties"]["target_url"] == "https://www.example.com/guide.pdf"
    trial = events[unknown["eid"]]
    assert (trial["type"], trial["data"]["event_name"]) == ("lead.activity.custom", "trial_started")
    assert trial["data"]["properties"]["plan"] == "pro"
    se = events[structured["eid"]]
    assert (se["type"], se["data"]["event_name"]) == ("lead.activity.custom", "Play")
    assert se["data"]["properties"]["value"] == 12.5


async def test_an_app_id_not_configured_is_refused_and_counted(collector: Runtime) -> None:
    async with http_client(collector, write_key=None) as client:
        refused = await client.post(TP2, json=payload(event(), event(aid="someone-else")))
        missing = await client.post(TP2, json=payload({**event(), "aid": ""}))
        pixel = await client.get("/i", params=event(aid="someone-else"))
        stats = (await client.get("/gateway/stats", headers={"X-API-Key": OPS_KEY})).json()
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "app_not_allowed"
    assert "'someone-else'" in refused.json()["error"]["message"]
    assert missing.status_code == 403
    assert pixel.status_code == 200 and pixel.content.startswith(GIF_MAGIC)
    assert stats["snowplow_refused_app"] == 4
    assert await read_topic(collector.settings, LEAD_ACTIVITY, expect=1, timeout=1.0) == []


ID_FIELDS = ["uid", "duid", "tnuid", "nuid", "tna", "aid", "eid", "sid"]


async def test_ids_with_control_characters_are_refused_naming_the_field(
    collector: Runtime,
) -> None:
    async with http_client(collector, write_key=None) as client:
        for field in ID_FIELDS:
            response = await client.post(TP2, json=payload(event(), event(**{field: "u\x00-1"})))
            assert response.status_code == 422, field
            (problem,) = response.json()["error"]["fields"]
            assert problem["field"] == f"data.1.{field}"
            assert "U+0000" in problem["message"]
            pixel = await client.get("/i", params=event(**{field: "u\x01-1"}))
            assert pixel.content.startswith(GIF_MAGIC)
        stats = (await client.get("/gateway/stats", headers={"X-API-Key": OPS_KEY})).json()
    assert stats["snowplow_rejected"] == 3 * len(ID_FIELDS)
    assert await read_topic(collector.settings, LEAD_ACTIVITY, expect=1, timeout=1.0) == []


async def test_other_strings_are_cleaned_not_refused(collector: Runtime) -> None:
    dirty = event(
        page="Pri\x00cing\ud800",
        e="se",
        se_ca="web\x07inar",
        se_ac="register",
        se_la="Scoring\x1b 101",
    )
    async with http_client(collector, write_key=None) as client:
        body = json.dumps(payload(dirty))  # ASCII, with the lone surrogate as "\ud800"
        response = await client.post(
            TP2, content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 200
    (record,) = values(await read_topic(collector.settings, LEAD_ACTIVITY, expect=1))
    assert record["data"]["properties"]["title"] == "Pricing\ufffd"
    assert record["data"]["properties"]["category"] == "webinar"
    assert record["data"]["properties"]["webinar"] == "Scoring 101"


async def test_unreadable_payloads_name_what_is_wrong(collector: Runtime) -> None:
    async with http_client(collector, write_key=None) as client:
        no_data = await client.post(TP2, json={"schema": PAYLOAD})
        bad_schema = await client.post(
            TP2, json={"schema": "iglu:x/y/jsonschema/1-0-0", "data": [event()]}
        )
        bad_ue = await client.post(TP2, json=payload(event(e="ue", ue_pr="{not json")))
        bad_time = await client.post(TP2, json=payload(event(dtm="yesterday")))
        not_text = await client.post(TP2, json=payload({**event(), "url": {"a": 1}}))
        invalid_email = await client.post(
            TP2,
            json=payload(
                event(
                    e="ue",
                    ue_pr=unstruct(
                        SUBMIT_FORM,
                        {
                            "formId": "f",
                            "elements": [
                                {"name": "email", "value": "not-an-email", "type": "email"}
                            ],
                        },
                    ),
                )
            ),
        )
    assert no_data.status_code == 422 and no_data.json()["error"]["fields"][0]["field"] == "data"
    assert bad_schema.status_code == 422
    assert bad_ue.json()["error"]["fields"][0]["field"] == "data.0.ue_pr"
    assert bad_time.json()["error"]["fields"][0]["field"] == "data.0.dtm"
    assert not_text.json()["error"]["fields"][0]["field"] == "data.0.url"
    assert invalid_email.json()["error"]["fields"][0]["field"] == (
        "data.0.ue_pr.data.data.elements.0.value"
    )


async def test_cors_preflight_allows_credentials_for_allowed_origins(collector: Runtime) -> None:
    async with http_client(collector, write_key=None) as client:
        allowed = await client.options(
            TP2,
            headers={
                "origin": SITE,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,sp-anonymous",
            },
        )
        other = await client.options(
            TP2, headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
        )
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == SITE
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert allowed.headers["access-control-allow-headers"] == "content-type, sp-anonymous"
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers


async def test_the_network_cookie_is_the_anonymous_id_unless_the_tracker_says_anonymous(
    collector: Runtime,
) -> None:
    without_duid = {key: value for key, value in event().items() if key != "duid"}
    anonymous_event = {**without_duid, "eid": str(uuid.uuid4())}
    async with http_client(collector, write_key=None) as client:
        kept = await client.post(
            TP2, json=payload(without_duid), headers={"cookie": "sp=network-1"}
        )
        anonymous = await client.post(
            TP2,
            json=payload(anonymous_event),
            headers={"sp-anonymous": "*", "cookie": "sp=network-1"},
        )
    assert "set-cookie" not in kept.headers and "set-cookie" not in anonymous.headers
    records = values(await read_topic(collector.settings, LEAD_ACTIVITY, expect=2))
    by_id = {record["id"]: record["data"]["identity"]["anonymous_id"] for record in records}
    assert by_id[without_duid["eid"]] == "network-1"
    assert by_id[anonymous_event["eid"]] != "network-1"


async def test_a_retry_is_one_event(collector: Runtime) -> None:
    same = event()
    async with http_client(collector, write_key=None) as client:
        for _ in range(2):
            assert (await client.post(TP2, json=payload(same))).status_code == 200
    records = values(await read_topic(collector.settings, LEAD_ACTIVITY, expect=2))
    assert {record["id"] for record in records} == {same["eid"]}  # deduplicated downstream


def test_a_snowplow_map_that_does_not_validate_names_the_file_line_and_field(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snowplow.yaml"
    path.write_text(
        "self_describing:\n"
        "  com.acme/signup:\n"
        "    activity: signed_up\n"
        "structured:\n"
        "  - action: download\n"
        "    activity: content_download\n"
        "    properties: {content: labelz}\n"
    )
    with pytest.raises(SnowplowMapError) as refused:
        load_snowplow_map(path)
    message = str(refused.value)
    assert f"{path} line 3: self_describing.com.acme/signup.activity" in message
    assert f"{path} line 7: structured[0].properties" in message
    assert load_snowplow_map(tmp_path / "absent.yaml").self_describing == {}
    assert load_snowplow_map(EXAMPLES / "snowplow.yaml").structured
