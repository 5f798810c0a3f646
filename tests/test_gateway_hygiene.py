"""Input is clean before it is acknowledged: on every way in, an identity or id with a
control character or a lone surrogate is refused naming its field (the pixel counts it and still
answers its GIF), and every other string is cleaned, so whatever the gateway acknowledged parses
at the consumer, is UTF-8 and can be stored by PostgreSQL. Property tests drive the real app
against the embedded broker with arbitrary Unicode and bytes; one test on PostgreSQL shows the
inputs that once wedged scoring no longer do."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_from_bytes

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.envelope import CloudEvent
from schemas.events import ActivityData, ActivityType, Identity
from schemas.topics import LEAD_ACTIVITY, LEAD_ACTIVITY_DLQ
from services.broker import EmbeddedBroker
from services.bus import Publisher, PublishError, record_for
from services.clock import ManualClock
from services.gateway.clean import activity_event, clean_text, clean_value, depth, id_problem
from services.gateway.publish import refused
from services.gateway.signature import sign
from services.launch.runtime import Runtime
from services.runner import DLQ_REASON_HEADER
from tests.conftest import POSTGRES_URL, REQUIRE_POSTGRES, WRITE_KEY, http_client
from tests.support import eventually, produce, read_topic
from tests.test_gateway_http import SECRET, gateway_settings, running_gateway

ActivityEvent = CloudEvent[ActivityData]
UNCLEAN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
NOT_AN_ID = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- strategies ----------------------------------------------------------------------------

NASTY = ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f", "\ud800", "\udfff"]
NICE = ["\ufffd", "\u2028", "\ufeff", "é", "😀", "\\", '"', " ", "%", "+", "&", "=", ";"]
any_char = st.one_of(st.sampled_from(NASTY + NICE), st.characters(exclude_categories=()))
any_text = st.lists(any_char, max_size=12).map("".join)
plain_text = st.text("abcxyz0189-_.", min_size=1, max_size=12)
identity_text = st.one_of(plain_text, any_text)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=8,
)
free_dicts = st.dictionaries(any_text.filter(lambda key: key != "email"), json_values, max_size=4)
emails = st.one_of(
    st.builds("{}@example.org".format, plain_text),
    st.builds("{}@example.org".format, any_text),
)
counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(counter)}"


def body_bytes(value: Any) -> bytes:
    """JSON as a client sends it: lone surrogates can only travel as `\\ud800` escapes."""
    return json.dumps(value).encode()


# --- reading what the gateway produced -----------------------------------------------------


class Produced:
    """The activity topic, read example by example: exactly what each request produced."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer

    async def take(self, count: int) -> list[Any]:
        records: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(records) < count and loop.time() < deadline:
            records.extend(await self._poll(100))
        records.extend(await self._poll(0))
        assert len(records) == count, [record.value[:200] for record in records]
        return records

    async def nothing(self, wait_ms: int = 0) -> None:
        """Nothing new (what a refused request produced would be here, or at the next take)."""
        assert [record.value[:200] for record in await self._poll(wait_ms)] == []

    async def _poll(self, timeout_ms: int) -> list[Any]:
        batches = await self.consumer.getmany(timeout_ms=timeout_ms)
        return [record for part in batches.values() for record in part]


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


async def check_record(record: Any, postgres: asyncpg.Connection | None) -> ActivityEvent:
    """A produced record is UTF-8, parses as the consumer parses it, and holds no control
    character but tab, newline and carriage return in any string; PostgreSQL takes it."""
    text = record.value.decode("utf-8")
    key = record.key.decode("utf-8")
    parsed = ActivityEvent.model_validate_json(record.value)
    assert key == parsed.subject
    _statistic("accepted")
    for item in strings(json.loads(text)):
        assert UNCLEAN.search(item) is None, item
    for value in (key, parsed.id, *parsed.data.identity.model_dump(exclude_none=True).values()):
        assert id_problem(value) is None, value
    if postgres is not None:
        assert await postgres.fetchval("SELECT $1::jsonb IS NOT NULL", text)
        assert await postgres.fetchval("SELECT length($1::text)", key) == len(key)
    return parsed


def _statistic(label: str) -> None:
    """Counted by `--hypothesis-show-statistics`, to see that both outcomes are explored."""
    if currently_in_test_context():
        event(label)


def named(response: httpx.Response) -> set[str]:
    """The fields a 4xx JSON error names (checking the error shape on the way)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    _statistic(f"refused {response.status_code}")
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    fields = error.get("fields", [])
    assert all(isinstance(item["field"], str) for item in fields)
    return {item["field"] for item in fields}


def refusal(response: httpx.Response, required: set[str], allowed: set[str]) -> None:
    """A 4xx naming a field that had to be refused (a message that fails validation on one
    field is not checked further), and no field that could have passed."""
    fields = named(response)
    assert fields & required if required else fields, (fields, required)
    assert fields <= required | allowed, (fields, required)


def must_refuse(value: str | None) -> bool:
    return value is not None and (not 0 < len(value) <= 200 or NOT_AN_ID.search(value) is not None)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def gateway(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Runtime]:
    settings_ = gateway_settings(broker.bootstrap, sqlite_url, tmp_path).model_copy(
        update={"webhook_secrets": {"generic": SECRET, "mailchimp": SECRET}}
    )
    async with running_gateway(settings_, clock) as runtime:
        yield runtime


@pytest.fixture
async def produced(gateway: Runtime) -> AsyncIterator[Produced]:
    consumer = AIOKafkaConsumer(
        gateway.settings.topic(LEAD_ACTIVITY),
        bootstrap_servers=gateway.settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    try:
        yield Produced(consumer)
        await Produced(consumer).nothing(wait_ms=500)
    finally:
        await consumer.stop()


@pytest.fixture
async def postgres() -> AsyncIterator[asyncpg.Connection | None]:
    """A PostgreSQL connection to try produced strings on, when there is one (no tables)."""
    try:
        connection = await asyncpg.connect(
            POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://"), timeout=3
        )
    except (OSError, asyncpg.PostgresError) as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL unreachable: {exc}")
        yield None
        return
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def tracker(gateway: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway (the write key as basic auth, the admin key for stats)."""
    async with http_client(gateway) as http:
        yield http


# --- pure: the cleaning and the contract ---------------------------------------------------


@given(value=json_values)
@PROPERTY
def test_cleaning_leaves_only_storable_strings_and_is_idempotent(value: Any) -> None:
    cleaned = clean_value(value)
    for item in strings(cleaned):
        assert UNCLEAN.search(item) is None
        item.encode("utf-8")
    assert json.dumps(clean_value(cleaned)) == json.dumps(cleaned)


def test_cleaning_removes_controls_keeps_whitespace_and_replaces_surrogates() -> None:
    assert clean_text("a\x00b\x1b\x85c\t\n\r\ud800") == "abc\t\n\r\ufffd"
    assert clean_value({"k\x00": ["v\x00", {"\udfff": 1.5}], "n": None}) == {
        "k": ["v", {"\ufffd": 1.5}],
        "n": None,
    }
    assert id_problem("visitor-42 é😀") is None
    assert id_problem("v\x00x") == "contains U+0000: no control characters or lone surrogates"
    assert id_problem("tab\there") is not None
    assert depth({"a": [{"b": 1}]}) == 3
    assert depth("x") == 0


@pytest.mark.parametrize("field", ["user_id", "anonymous_id", "email"])
@pytest.mark.parametrize("bad", ["u\\u0000v", "u\\u0085v", "u\\ud800v", "u\\tv"])
def test_the_contract_refuses_an_identity_with_a_control_character(field: str, bad: str) -> None:
    """What another producer writes straight to Kafka fails the consumer's parse (-> DLQ)."""
    value = f"{bad}@example.org" if field == "email" else bad
    raw = json.dumps(_event_document("evt-1", {field: "placeholder"})).replace(
        '"placeholder"', f'"{value}"'
    )
    with pytest.raises(ValidationError) as caught:
        ActivityEvent.model_validate_json(raw)
    (error,) = caught.value.errors()
    # a lone surrogate is not even JSON to pydantic's parser; the rest fail the identity
    assert error["type"] == "json_invalid" or error["loc"][:3] == ("data", "identity", field)


def _event(event_id: str) -> CloudEvent[Any]:
    return activity_event(
        event_id=event_id,
        source="test",
        time=datetime(2026, 11, 23, 15, tzinfo=UTC),
        identity=Identity(anonymous_id="a"),
        activity_type=ActivityType.FORM_SUBMIT,
        event_name="form_submit",
        properties={"form": "demo-request"},
        attributes={},
        context={},
        channel="test",
        received_at=datetime(2026, 11, 23, 15, tzinfo=UTC),
    )


def _event_document(event_id: str, identity: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_event(event_id).model_dump_json())
    document["data"]["identity"] = identity
    return document


# --- the reproductions, against the gateway ------------------------------------------------


async def test_the_reproductions_are_refused_and_free_strings_cleaned(
    gateway: Runtime, tracker: httpx.AsyncClient, produced: Produced
) -> None:
    pixel = await tracker.get(f"/t.gif?wk={WRITE_KEY}&aid=v%00x&mid=px-nul")
    assert pixel.status_code == 200 and pixel.content.startswith(b"GIF89a")
    assert (await tracker.get("/gateway/stats")).json()["pixel_rejected"] == 1

    track = await tracker.post(
        "/v1/track",
        content=b'{"userId":"u\\u0000v","event":"x"}',
        headers={"content-type": "application/json"},
    )
    assert track.status_code == 422
    assert named(track) == {"userId"}
    batch = [{"type": "track", "userId": f"u{index}", "event": "x"} for index in range(5)]
    batch[3] = {"type": "alias", "userId": "u\ud800", "previousId": "p\x85"}
    response = await tracker.post("/v1/batch", content=body_bytes({"batch": batch}))
    assert named(response) == {"batch.3.userId", "batch.3.previousId"}

    clean = {
        "anonymousId": "visitor-42",
        "messageId": "m-clean",
        "event": "Form\x00 Submitted\ud800",
        "properties": {"form\x00": "demo\x1b-request", "list": ["\ud83d", {"k\x85": "\x00"}]},
        "traits": {"company": "Ini\x00tech\n"},
        "context": {"userAgent": "Mozilla\x00/5.0"},
    }
    assert (await tracker.post("/v1/track", content=body_bytes(clean))).status_code == 200
    (record,) = await produced.take(1)
    event = await check_record(record, None)
    assert event.data.event_name == "Form Submitted\ufffd"
    assert event.data.properties == {"form": "demo-request", "list": ["\ufffd", {"k": ""}]}
    assert event.data.attributes == {"company": "Initech\n"}
    assert event.data.context["userAgent"] == "Mozilla/5.0"


async def test_a_webhook_identity_or_id_with_a_control_character_is_refused(
    gateway: Runtime, tracker: httpx.AsyncClient, produced: Produced
) -> None:
    body = body_bytes({"type": "form_submit", "user_id": "u\x00v", "email": "a@example.org"})
    response = await _webhook(gateway, tracker, body, "wh-nul")
    assert named(response) == {"user_id"}
    body = body_bytes({"type": "form_submit", "email": "a@example.org"})
    response = await _webhook(gateway, tracker, body, b"wh-\x85-1")
    assert named(response) == {"webhook-id"}, response.text


@pytest.mark.parametrize(
    ("body", "status", "fields"),
    [
        (b'{"batch": [{"type": ["track"]}]}', 422, {"batch.0.type"}),
        (b"1" * 5000, 400, set()),  # an integer too long for Python to convert
        (b"[" * 5000 + b"]" * 5000, 400, set()),  # past the JSON parser's recursion limit
        (b'{"batch": ' + b"[" * 40 + b"]" * 40 + b"}", 400, set()),  # past MAX_DEPTH
        (b'{"writeKey": "\\ud800", "anonymousId": "a", "event": "x"}', 401, set()),
        (
            b'{"batch": [{"type": "track", "anonymousId": "a", "event": "x",'
            b' "timestamp": "0001-01-01T00:00:00", "sentAt": "9999-12-31T23:59:59"}]}',
            422,
            {"batch.0.timestamp"},
        ),
    ],
)
async def test_bodies_that_used_to_answer_500(
    gateway: Runtime, produced: Produced, body: bytes, status: int, fields: set[str]
) -> None:
    async with http_client(gateway, write_key=None if status == 401 else WRITE_KEY) as client:
        response = await client.post("/v1/batch", content=body)
    assert response.status_code == status, response.text
    assert named(response) == fields
    await produced.nothing()


async def test_webhook_edge_values_are_4xx_or_a_stable_id(
    gateway: Runtime, tracker: httpx.AsyncClient, produced: Produced
) -> None:
    form = body_bytes({"type": "form_submit", "email": "a@example.org", "occurred_at": 1e300})
    assert named(await _webhook(gateway, tracker, form, unique("wh"))) == {"occurred_at"}
    headers = {"webhook-id": "x", "webhook-timestamp": "9" * 400, "webhook-signature": "v1,x"}
    response = await tracker.post("/webhooks/generic", content=form, headers=headers)
    assert response.status_code == 401
    long_id = "i" * 200
    body = body_bytes({"type": "form_submit", "email": "a@example.org"})
    assert (await _webhook(gateway, tracker, body, long_id)).status_code == 200
    (record,) = await produced.take(1)
    event = await check_record(record, None)
    assert event.id == f"wh:generic:{hashlib.sha256(long_id.encode()).hexdigest()}:0"


async def _webhook(
    gateway: Runtime,
    client: httpx.AsyncClient,
    body: bytes,
    webhook_id: str | bytes,
    source: str = "generic",
) -> httpx.Response:
    """A signed delivery (`mailchimp`'s form-encoded); a bytes id travels as the raw header."""
    now = int(gateway.clock.now().timestamp())
    raw_id = webhook_id if isinstance(webhook_id, bytes) else webhook_id.encode()
    form = source == "mailchimp"
    headers = {
        b"content-type": b"application/x-www-form-urlencoded" if form else b"application/json",
        b"webhook-id": raw_id,
        b"webhook-timestamp": str(now).encode(),
        b"webhook-signature": sign(SECRET, raw_id.decode("latin-1"), now, body).encode(),
    }
    return await client.post(f"/webhooks/{source}", content=body, headers=headers)


async def test_a_send_refused_for_good_is_told_from_an_unconfirmed_one(gateway: Runtime) -> None:
    """`pixel_publish_failed` counts only writes refused for good, such as a record over the
    producer's size limit; a timeout (see test_gateway_http) is `pixel_publish_unconfirmed`."""
    publisher = Publisher(gateway.settings)
    await publisher.start()
    try:
        event = _event("big")
        event.data.properties["blob"] = "x" * 2_000_000
        with pytest.raises(PublishError) as caught:
            await publisher.publish_many([record_for(LEAD_ACTIVITY, "anon:a", event)])
    finally:
        await publisher.stop()
    assert refused(caught.value)
    assert not refused(PublishError("timed out"))


# --- property tests over HTTP ----------------------------------------------------------------


@given(
    user_id=identity_text,
    event_name=any_text,
    email=st.none() | emails,
    properties=free_dicts,
    traits=free_dicts,
    context=free_dicts.map(lambda context: {k: v for k, v in context.items() if k != "traits"}),
    text_plain=st.booleans(),
)
@PROPERTY
async def test_track_with_arbitrary_text(
    tracker: httpx.AsyncClient,
    produced: Produced,
    postgres: asyncpg.Connection | None,
    user_id: str,
    event_name: str,
    email: str | None,
    properties: dict[str, Any],
    traits: dict[str, Any],
    context: dict[str, Any],
    text_plain: bool,
) -> None:
    message_id = unique("track")
    body: dict[str, Any] = {
        "userId": user_id,
        "messageId": message_id,
        "event": event_name,
        "properties": properties,
        "traits": traits if email is None else {**traits, "email": email},
        "context": context,
    }
    headers = {"content-type": "text/plain" if text_plain else "application/json"}
    response = await tracker.post("/v1/track", content=body_bytes(body), headers=headers)
    required = {"userId"} if must_refuse(user_id) else set()
    if not clean_text(event_name):
        required.add("event")
    if email is not None and NOT_AN_ID.search(email):
        required.add("traits.email")
    if required or response.status_code != 200:
        refusal(response, required, {"traits.email"})
        await produced.nothing()
        return
    (record,) = await produced.take(1)
    event = await check_record(record, postgres)
    assert (event.id, event.data.identity.user_id) == (message_id, user_id)
    assert event.data.event_name == clean_text(event_name)


batch_messages = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "page", "identify", "alias", "group"]),
        "userId": identity_text,
        "previousId": identity_text,
        "groupId": identity_text,
        "name": any_text,
        "properties": free_dicts,
        "traits": free_dicts,
    },
    optional={"anonymousId": identity_text},
)


@given(messages=st.lists(batch_messages, min_size=1, max_size=4))
@PROPERTY
async def test_batch_with_arbitrary_text(
    tracker: httpx.AsyncClient,
    produced: Produced,
    postgres: asyncpg.Connection | None,
    messages: list[dict[str, Any]],
) -> None:
    ids = [unique("batch") for _ in messages]
    batch = [
        {**message, "messageId": message_id, "event": message["name"] or "x"}
        for message, message_id in zip(messages, ids, strict=True)
    ]
    response = await tracker.post("/v1/batch", content=body_bytes({"batch": batch}))
    required: set[str] = set()
    for index, message in enumerate(batch):
        fields = ["userId", "anonymousId"]
        fields += {"alias": ["previousId"], "group": ["groupId"]}.get(message["type"], [])
        if message["type"] == "track" and not clean_text(message["event"]):
            required.add(f"batch.{index}.event")
        required |= {
            f"batch.{index}.{field}" for field in fields if must_refuse(message.get(field))
        }
    if required:
        refusal(response, required, set())
        await produced.nothing()
        return
    assert response.status_code == 200, response.text
    records = await produced.take(len(batch))
    events = {event.id: event for event in [await check_record(r, postgres) for r in records]}
    assert set(events) == set(ids)
    for message_id, message in zip(ids, batch, strict=True):
        assert events[message_id].data.identity.user_id == message["userId"]


@given(
    aid=st.one_of(identity_text, st.binary(max_size=12)),
    uid=st.none() | identity_text,
    email=st.none() | emails,
    event_name=st.none() | any_text,
    url=st.one_of(any_text, st.binary(max_size=20)),
    title=any_text,
    cookie=st.none() | st.binary(max_size=12),
    user_agent=st.binary(max_size=20),
)
@PROPERTY
async def test_pixel_with_arbitrary_text_and_bytes(
    gateway: Runtime,
    produced: Produced,
    postgres: asyncpg.Connection | None,
    aid: str | bytes,
    uid: str | None,
    email: str | None,
    event_name: str | None,
    url: str | bytes,
    title: str,
    cookie: bytes | None,
    user_agent: bytes,
) -> None:
    """Headers go as raw bytes too: an `lf_aid` cookie that is no clean id is ignored."""
    params: dict[str, str | bytes | None] = {
        "wk": WRITE_KEY,
        "mid": unique("px"),
        "aid": aid,
        "uid": uid,
        "email": email,
        "event": event_name,
        "url": url,
        "title": title,
    }
    query = "&".join(
        f"{name}={_percent(value)}" for name, value in params.items() if value is not None
    )
    sent = dict(parse_qsl(query, keep_blank_values=True))  # as the app decodes it
    async with http_client(gateway, write_key=None) as client:
        before = (await client.get("/gateway/stats")).json()
        headers = {b"user-agent": user_agent}
        if cookie is not None:
            headers[b"cookie"] = b"lf_aid=" + cookie
        response = await client.get(f"/t.gif?{query}", headers=headers)
        after = (await client.get("/gateway/stats")).json()
    assert response.status_code == 200
    assert response.content.startswith(b"GIF89a")
    assert response.headers["content-type"] == "image/gif"
    rejected = after.get("pixel_rejected", 0) - before.get("pixel_rejected", 0)
    recorded = after.get("pixel_recorded", 0) - before.get("pixel_recorded", 0)
    assert (rejected, recorded) in ((1, 0), (0, 1))
    refuse = any(must_refuse(sent.get(name) or None) for name in ("aid", "uid"))
    if refuse or sent.get("event") == "" or NOT_AN_ID.search(sent.get("email", "")):
        assert rejected == 1
    if rejected:
        await produced.nothing()
        return
    (record,) = await produced.take(1)
    event = await check_record(record, postgres)
    assert event.id == sent["mid"]
    if sent["aid"]:
        assert event.data.identity.anonymous_id == sent["aid"]


def _percent(value: str | bytes) -> str:
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return quote_from_bytes(raw, safe="")


@given(
    user_id=st.none() | identity_text,
    anonymous_id=identity_text.filter(bool),
    email=st.none() | emails,
    type_=st.one_of(st.sampled_from(["form_submit", "page_view", "email_click"]), any_text),
    name=st.none() | any_text,
    form=json_values,
    fields=free_dicts,
)
@PROPERTY
async def test_webhook_with_arbitrary_text(
    gateway: Runtime,
    tracker: httpx.AsyncClient,
    produced: Produced,
    postgres: asyncpg.Connection | None,
    user_id: str | None,
    anonymous_id: str,
    email: str | None,
    type_: str,
    name: str | None,
    form: Any,
    fields: dict[str, Any],
) -> None:
    payload = {
        "type": type_,
        "name": name,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "email": email,
        "properties": {"form": form},
        "fields": fields,
    }
    webhook_id = unique("wh")
    response = await _webhook(gateway, tracker, body_bytes(payload), webhook_id)
    required = {
        field
        for field, value in (("user_id", user_id), ("anonymous_id", anonymous_id))
        if value and must_refuse(value)
    }
    if email and NOT_AN_ID.search(email):
        required.add("email")
    if required or response.status_code != 200:
        maybe = {"email"} | ({"type"} if type_ == "" else set())  # "" is no type at all
        refusal(response, required, maybe)
        await produced.nothing()
        return
    (record,) = await produced.take(1)
    event = await check_record(record, postgres)
    assert event.id == f"wh:generic:{webhook_id}:0"
    assert event.data.identity.anonymous_id == (anonymous_id or None)


RAW_KEYS = [
    "type",
    "event",
    "userId",
    "anonymousId",
    "messageId",
    "properties",
    "traits",
    "context",
    "timestamp",
    "sentAt",
    "writeKey",
    "batch",
    "previousId",
    "groupId",
    "name",
    "email",
]
raw_keys = st.sampled_from(RAW_KEYS)
raw_values = st.recursive(
    json_values
    | st.datetimes().map(datetime.isoformat)
    | st.sampled_from(["track", "page", WRITE_KEY]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(raw_keys | any_text, children, max_size=4)
    ),
    max_leaves=12,
)
raw_messages = st.dictionaries(raw_keys, raw_values, max_size=6)
near_valid = st.builds(
    lambda base, noise: {**base, **noise},
    st.fixed_dictionaries(
        {"type": st.just("track"), "anonymousId": plain_text, "event": plain_text},
        optional={"writeKey": st.just(WRITE_KEY)},
    ),
    st.dictionaries(raw_keys, raw_values, max_size=3),
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    (raw_messages | near_valid).map(body_bytes),
    st.lists(raw_messages | near_valid, max_size=3).map(lambda batch: body_bytes({"batch": batch})),
)


FORM_KEYS = ["type", "fired_at", "data[email]", "data[id]", "data[merges][FNAME]", "data[x]"]
form_bodies = st.lists(
    st.tuples(st.sampled_from(FORM_KEYS).map(str.encode) | st.binary(max_size=8), st.binary()),
    max_size=6,
).map(
    lambda pairs: b"&".join(
        quote_from_bytes(k).encode() + b"=" + quote_from_bytes(v).encode() for k, v in pairs
    )
)
JSON_PATHS = ["/v1/track", "/v1/t", "/v1/batch", "/v1/b", "/v1/identify", "generic"]
requests = st.one_of(
    st.tuples(st.sampled_from(JSON_PATHS), raw_bodies), st.tuples(st.just("mailchimp"), form_bodies)
)


@given(
    request=requests,
    content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
    basic_auth=st.booleans(),
)
@PROPERTY
async def test_raw_bodies_never_get_a_5xx(
    gateway: Runtime,
    produced: Produced,
    postgres: asyncpg.Connection | None,
    request: tuple[str, bytes],
    content_type: str,
    basic_auth: bool,
) -> None:
    """Without basic auth the write key is the body's `writeKey` (as browsers send it)."""
    path, body = request
    async with http_client(gateway, write_key=WRITE_KEY if basic_auth else None) as client:
        if not path.startswith("/"):
            response = await _webhook(gateway, client, body, unique("raw"), source=path)
        else:
            headers = {"content-type": content_type}
            response = await client.post(path, content=body, headers=headers)
    if response.status_code != 200:
        named(response)  # a 4xx in the one error shape
        await produced.nothing()
        return
    for record in await produced.take(_events_in(path, body)):
        await check_record(record, postgres)


def _events_in(path: str, body: bytes) -> int:
    """How many events an accepted request stands for."""
    if path == "mailchimp":
        return 1
    document = json.loads(body)
    if path == "generic":
        listed = document.get("events") if isinstance(document, dict) else document
        return len(listed) if isinstance(listed, list) else 1
    return len(document["batch"]) if path in ("/v1/batch", "/v1/b") else 1


# --- end to end on PostgreSQL ----------------------------------------------------------------


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_nul_identities_do_not_wedge_scoring_on_postgres(
    pipeline: Runtime, client: httpx.AsyncClient
) -> None:
    """Inputs that once wedged scoring, then a record with a NUL identity produced straight to Kafka
    by some other producer (parked in the DLQ), then a good event: the good event is scored."""
    pixel = await client.get(f"/t.gif?wk={WRITE_KEY}&aid=v%00x")
    assert pixel.status_code == 200 and pixel.content.startswith(b"GIF89a")
    track = await client.post(
        "/v1/track",
        content=b'{"userId":"u\\u0000v","event":"form_submit","properties":{"form":"demo-request"}}',
        headers={"content-type": "application/json"},
    )
    assert named(track) == {"userId"}
    stats = (await client.get("/gateway/stats")).json()
    assert stats["pixel_rejected"] == 1
    foreign = json.dumps(_event_document("evt-foreign-nul", {"user_id": "placeholder"}))
    foreign = foreign.replace('"placeholder"', '"u\\u0000v"')
    await produce(pipeline.settings, LEAD_ACTIVITY, [(b"user:u", foreign.encode())])
    good = {
        "userId": "u-good",
        "messageId": "m-good",
        "event": "form_submit",
        "traits": {"email": "dana@example.org"},
        "properties": {"form": "demo-request", "note": "nul\x00 removed"},
    }
    assert (await client.post("/v1/track", content=body_bytes(good))).status_code == 200

    async def scored() -> dict[str, Any] | None:
        response = await client.get("/leads", params={"email": "dana@example.org"})
        items: list[dict[str, Any]] = response.json()["items"]
        return items[0] if items else None

    lead = await eventually(scored, timeout=30)
    assert "user:u-good" in lead["identities"]
    (parked,) = await read_topic(pipeline.settings, LEAD_ACTIVITY_DLQ, expect=1)
    assert "identity" in dict(parked.headers)[DLQ_REASON_HEADER].decode()
