"""Segment's and RudderStack's own Python libraries (from PyPI), pointed at a real gateway on a
loopback port, deliver to `lead.activity` with their message ids as event ids."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rudderstack.analytics.client import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics.client import Client as SegmentClient  # type: ignore[import-untyped]
from segment.analytics.request import APIError  # type: ignore[import-untyped]

from schemas.topics import LEAD_ACTIVITY
from services.broker import EmbeddedBroker
from services.clock import ManualClock
from services.launch.runtime import Runtime
from tests.conftest import WRITE_KEY
from tests.support import read_topic, serving, values
from tests.test_gateway_http import gateway_settings, running_gateway


@pytest.fixture
async def gateway_url(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[tuple[Runtime, str]]:
    settings = gateway_settings(broker.bootstrap, sqlite_url, tmp_path)
    async with running_gateway(settings, clock) as runtime, serving(runtime.app) as url:
        yield runtime, url


def drive(client: Any, run: str) -> list[str]:
    """The calls a marketing site's backend makes; returns the message ids it chose."""
    ids = [f"{run}-{name}" for name in ("identify", "track", "page", "group", "alias")]
    client.identify(
        user_id="u-42",
        traits={"email": "Dana@Example.org", "firstName": "Dana", "company": "Initech"},
        message_id=ids[0],
    )
    client.track(
        user_id="u-42",
        event="Webinar Attended",
        properties={"webinar": "Scoring 101"},
        message_id=ids[1],
    )
    client.page(
        user_id="u-42",
        name="Pricing",
        properties={"url": "https://example.com/pricing"},
        message_id=ids[2],
    )
    client.group(
        user_id="u-42",
        group_id="acct-7",
        traits={"name": "Initech", "employees": 250},
        message_id=ids[3],
    )
    client.alias(previous_id="anon-7", user_id="u-42", message_id=ids[4])
    client.flush()  # blocks until the library's worker thread has sent everything
    client.join()
    return ids


async def test_segment_python_library_delivers_gzipped_batches(
    gateway_url: tuple[Runtime, str],
) -> None:
    runtime, url = gateway_url
    errors: list[Exception] = []
    client = SegmentClient(
        write_key=WRITE_KEY,
        host=url,
        gzip=True,
        max_retries=2,
        upload_interval=0.05,
        on_error=lambda error, _batch: errors.append(error),
    )
    ids = await asyncio.to_thread(drive, client, f"seg-{uuid.uuid4().hex[:6]}")
    assert errors == []
    events = {
        event["id"]: event
        for event in values(await read_topic(runtime.settings, LEAD_ACTIVITY, expect=len(ids)))
    }
    assert sorted(events) == sorted(ids)
    types = [events[message_id]["type"].removeprefix("lead.activity.") for message_id in ids]
    assert types == ["identify", "webinar_attend", "page_view", "identify", "identify"]
    identify = events[ids[0]]
    assert identify["subject"] == "email:dana@example.org"
    assert identify["data"]["attributes"] == {"first_name": "Dana", "company": "Initech"}
    assert identify["data"]["context"]["library"]["name"] == "analytics-python"
    assert events[ids[3]]["data"]["attributes"] == {"company": "Initech", "company_size": 250}
    assert events[ids[4]]["data"]["properties"] == {"previous_id": "anon-7"}


async def test_rudderstack_python_library_delivers(gateway_url: tuple[Runtime, str]) -> None:
    runtime, url = gateway_url
    errors: list[Exception] = []
    client = RudderClient(
        write_key=WRITE_KEY,
        host=url,
        gzip=True,
        max_retries=2,
        upload_interval=0.05,
        on_error=lambda error, _batch: errors.append(error),
    )
    ids = await asyncio.to_thread(drive, client, f"rs-{uuid.uuid4().hex[:6]}")
    assert errors == []
    events = {
        event["id"]: event
        for event in values(await read_topic(runtime.settings, LEAD_ACTIVITY, expect=len(ids)))
    }
    assert sorted(events) == sorted(ids)
    assert events[ids[1]]["type"] == "lead.activity.webinar_attend"
    assert events[ids[1]]["data"]["properties"] == {"webinar": "Scoring 101"}


async def test_a_library_sees_a_wrong_write_key_refused(gateway_url: tuple[Runtime, str]) -> None:
    runtime, url = gateway_url
    client = SegmentClient(write_key="not-our-key", host=url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as refused:
        await asyncio.to_thread(client.track, user_id="u", event="x", message_id="refused-1")
    assert refused.value.status == 401
    assert await read_topic(runtime.settings, LEAD_ACTIVITY, expect=1, timeout=1.0) == []
