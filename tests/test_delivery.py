"""Nothing lost, nothing doubled: dedupe by event id, one transaction per batch, the DLQ."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import ActivityType, Identity, LeadScoredData
from schemas.registry import SCORED
from schemas.topics import LEAD_ACTIVITY, LEAD_ACTIVITY_DLQ, LEAD_SCORED
from scoring_service.consumer import ActivityApplier, IncomingActivity
from scoring_service.identity import lead_id_for
from scoring_service.models import Activity, Lead, LedgerEntry
from scoring_service.rulebooks import RulebookCache, install_configured
from services.bus import Publisher, make_consumer
from services.clock import ManualClock, SystemClock
from services.db import create_engine, session_factory
from services.gateway.clean import activity_event
from services.launch.runtime import Runtime
from services.models import ProcessedEvent
from services.outbox import Emitter, OutboxRelay, write_pending
from services.runner import DLQ_REASON_HEADER, ConsumerRunner
from services.settings import Settings
from tests.support import eventually, produce, read_topic, values


def activity(event_id: str, user: str, url: str = "https://example.com/pricing") -> bytes:
    event = activity_event(
        event_id=event_id,
        source="test",
        time=datetime(2026, 11, 23, 15, tzinfo=UTC),
        identity=Identity(user_id=user),
        activity_type=ActivityType.PAGE_VIEW,
        event_name="page_view",
        properties={"url": url},
        attributes={},
        context={},
        channel="test",
        received_at=datetime(2026, 11, 23, 15, tzinfo=UTC),
    )
    return event.model_dump_json().encode()


async def lead_state(settings: Settings, user: str) -> tuple[float, int] | None:
    engine = create_engine(settings.effective_database_url)
    try:
        async with session_factory(engine)() as session:
            lead = await session.get(Lead, lead_id_for(f"user:{user}"))
            if lead is None:
                return None
            entries = await session.scalar(
                select(func.count()).select_from(LedgerEntry).where(LedgerEntry.lead_id == lead.id)
            )
            return lead.score, entries or 0
    finally:
        await engine.dispose()


async def test_duplicate_deliveries_of_one_event_id_count_once(pipeline: Runtime) -> None:
    settings = pipeline.settings
    key = b"user:u-dup"
    first = activity("evt-1", "u-dup")
    await produce(settings, LEAD_ACTIVITY, [(key, first), (key, first), (key, first)])
    await produce(
        settings, LEAD_ACTIVITY, [(key, activity("evt-2", "u-dup", "https://example.com/blog"))]
    )

    async def both_applied() -> tuple[float, int] | None:
        state = await lead_state(settings, "u-dup")
        return state if state and state[0] >= 19 else None

    score, entries = await eventually(both_applied)
    assert score == 19  # pricing 15 + page view 2, then page view 2: each event once
    assert entries == 3

    late_redelivery, marker = first, activity("evt-3", "u-dup", "https://example.com/blog")
    await produce(settings, LEAD_ACTIVITY, [(key, late_redelivery), (key, marker)])

    async def marker_applied() -> tuple[float, int] | None:
        state = await lead_state(settings, "u-dup")
        return state if state and state[1] == 4 else None

    assert await eventually(marker_applied) == (21, 4)
    scored = values(await read_topic(settings, LEAD_SCORED, expect=2))
    causes = [event["data"]["cause_event_id"] for event in scored]
    # one lead.scored per lead and batch; the duplicates and the redelivery add none
    assert len(causes) == len(set(causes))
    assert causes[-1] == "evt-3"
    assert [event["data"]["score"] for event in scored][-1] == 21


async def test_poison_records_go_to_the_dlq_with_a_reason_and_the_consumer_moves_on(
    pipeline: Runtime,
) -> None:
    settings = pipeline.settings
    broken_envelope = json.loads(activity("evt-bad", "u-poison"))
    del broken_envelope["data"]["identity"]
    await produce(
        settings,
        LEAD_ACTIVITY,
        [
            (b"k", b"\x00not json"),
            (b"k", json.dumps(broken_envelope).encode()),
            (b"user:u-poison", activity("evt-ok", "u-poison")),
        ],
    )
    parked = await read_topic(settings, LEAD_ACTIVITY_DLQ, expect=2)
    assert len(parked) == 2
    reasons = [dict(record.headers)[DLQ_REASON_HEADER].decode() for record in parked]
    assert "json" in reasons[0].lower()
    assert "data.identity" in reasons[1]
    assert parked[0].value == b"\x00not json"
    assert await eventually(lambda: lead_state(settings, "u-poison")) == (17, 2)


class _Harness:
    """A scoring runner driven by hand, to redeliver a batch as a crash would."""

    def __init__(self, settings: Settings, handle: Any = None) -> None:
        self.settings = settings
        clock = ManualClock(datetime(2026, 11, 23, 15, tzinfo=UTC))
        applier = ActivityApplier(RulebookCache(), clock)
        spec = applier.spec()
        if handle is not None:
            spec = dataclasses.replace(spec, handle=handle)
        self.engine = create_engine(settings.effective_database_url)
        self.publisher = Publisher(settings)
        self.consumer = make_consumer(settings, spec.group_id, *spec.topics)
        self.runner = ConsumerRunner(
            spec,
            self.consumer,
            session_factory(self.engine),
            self.publisher,
            clock,
            topic_prefix=settings.topic_prefix,
        )

    async def __aenter__(self) -> _Harness:
        async with session_factory(self.engine)() as session, session.begin():
            await install_configured(session, self.settings.rulebook, clock=SystemClock())
        await self.publisher.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.publisher.stop()
        await self.engine.dispose()

    async def fetch(self, count: int) -> list[Any]:
        async def batch() -> list[Any] | None:
            got = await self.consumer.getmany(timeout_ms=200)
            records = [record for part in got.values() for record in part]
            return records or None

        return await eventually(batch)

    async def count(self, model: type[Any]) -> int:
        async with session_factory(self.engine)() as session:
            return (await session.scalar(select(func.count()).select_from(model))) or 0


async def test_a_batch_redelivered_after_a_crash_changes_nothing(settings: Settings) -> None:
    await produce(
        settings, LEAD_ACTIVITY, [(b"user:u-re", activity(f"re-{n}", "u-re")) for n in range(3)]
    )
    async with _Harness(settings) as harness:
        records = await harness.fetch(3)
        await harness.runner.process(records)
        await harness.runner.process(records)  # as if offsets were never committed
        assert await lead_state(settings, "u-re") == (21, 4)  # pricing: once a day
        assert await harness.count(Activity) == 3  # scoring's record of applied events
        assert await harness.count(ProcessedEvent) == 0  # so none is kept twice
        partition = TopicPartition(records[0].topic, records[0].partition)
        assert await harness.consumer.committed(partition) == records[-1].offset + 1


async def test_a_failing_batch_applies_nothing_and_commits_no_offset(settings: Settings) -> None:
    await produce(
        settings, LEAD_ACTIVITY, [(b"user:u-fail", activity(f"f-{n}", "u-fail")) for n in range(2)]
    )
    applier = ActivityApplier(RulebookCache(), ManualClock(datetime(2026, 11, 23, tzinfo=UTC)))

    async def apply_then_fail(session: AsyncSession, events: Sequence[IncomingActivity]) -> None:
        await applier.apply_batch(session, events[:1])
        raise RuntimeError("database went away")

    async with _Harness(settings, handle=apply_then_fail) as harness:
        records = await harness.fetch(2)
        with pytest.raises(RuntimeError, match="went away"):
            await harness.runner.process(records)
        assert await lead_state(settings, "u-fail") is None
        assert await harness.count(Activity) == 0
        partition = TopicPartition(records[0].topic, records[0].partition)
        assert await harness.consumer.committed(partition) is None


async def test_the_relay_publishes_while_a_batch_holds_sqlites_write_lock(
    settings: Settings,
) -> None:
    """SQLite has one writer: the relay's read must not queue behind a consumer's batch, or
    every MQL would wait a whole batch before it goes out."""
    if not settings.effective_database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL has row locks, no single write lock")
    engine = create_engine(settings.effective_database_url)
    sessions = session_factory(engine)
    publisher = Publisher(settings)
    await publisher.start()
    try:
        async with sessions() as session, session.begin():
            Emitter(service="scoring", source="test", clock=SystemClock()).emit(
                session,
                SCORED,
                event_id="scored:ld_lock:1",
                time=datetime(2026, 11, 23, 15, tzinfo=UTC),
                key="ld_lock",
                data=LeadScoredData(
                    lead_id="ld_lock",
                    score=12,
                    previous_score=0,
                    fit=0,
                    engagement=12,
                    grade="D1",
                    stage="lead",
                    mql_cycle=0,
                    rulebook_version="test",
                    cause_event_id="e-1",
                    merged_ids=[],
                ),
            )
            await write_pending(session)
        relay = OutboxRelay("scoring", sessions, publisher, batch_size=10, poll_interval=0.05)
        async with sessions() as batch:
            await batch.begin()
            await batch.execute(text("DELETE FROM processed_events WHERE 1 = 0"))  # holds the lock
            publishing = asyncio.create_task(relay.publish_pending())
            published = values(await read_topic(settings, LEAD_SCORED, expect=1, timeout=5))
            assert [event["id"] for event in published] == ["scored:ld_lock:1"]
            await batch.rollback()
        assert await asyncio.wait_for(publishing, timeout=10) == 1
    finally:
        await publisher.stop()
        await engine.dispose()
