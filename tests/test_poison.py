"""No event can stop a consumer: one that cannot be applied is found inside its batch, parked
in the DLQ with the reason, and the rest applied; an outage is waited out, never parked.

Every consumer (scoring, scoring's lifecycle, handoff, SLA) on SQLite and PostgreSQL, with
its real batch handler, over the real broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.consumer import MqlRouter
from handoff_service.dispatch import Dispatcher
from handoff_service.models import Assignment, QueueEntry
from handoff_service.routing_file import load_routing
from schemas.events import LeadAssignedData, LeadMqlData, LeadStatusData
from schemas.registry import ASSIGNED, MQL, STATUS, Contract
from schemas.topics import LEAD_ACTIVITY, LEAD_ASSIGNED, LEAD_MQL, LEAD_STATUS, dlq_for
from scoring_service.consumer import ActivityApplier
from scoring_service.lifecycle import LifecycleApplier
from scoring_service.models import Activity
from scoring_service.rulebooks import RulebookCache, install_configured
from services.bus import Publisher, make_consumer
from services.clock import ManualClock, SystemClock
from services.codec import envelope
from services.db import create_engine, session_factory
from services.faults import Fault, classify
from services.models import ProcessedEvent
from services.runner import DLQ_REASON_HEADER, ConsumerRunner, ConsumerSpec
from services.settings import Settings
from sla_monitor.consumer import SlaConsumer
from sla_monitor.models import SlaCycle
from sla_monitor.policy import load_policy
from tests.streams import stream
from tests.support import eventually, produce, read_topic

AT = datetime(2026, 11, 23, 15, tzinfo=UTC)
CLOCK = ManualClock(AT)
POISON = "poison-1"


def _event(contract: Contract, event_id: str, lead_id: str, data: Any) -> tuple[bytes, bytes]:
    event = envelope(
        contract,
        event_id=event_id,
        source="test",
        type_=contract.name,
        time=AT,
        subject=lead_id,
        data=data,
    )
    return lead_id.encode(), event.model_dump_json().encode()


def mql(event_id: str, lead_id: str) -> tuple[bytes, bytes]:
    data = LeadMqlData(
        lead_id=lead_id,
        cycle=1,
        score=120,
        reason="threshold",
        rulebook_version="t",
        qualified_at=AT,
    )
    return _event(MQL, event_id, lead_id, data)


def assigned(event_id: str, lead_id: str) -> tuple[bytes, bytes]:
    data = LeadAssignedData(
        lead_id=lead_id,
        cycle=1,
        rep_id="rep-ada",
        rep_name="Ada",
        rep_email="ada@x.example",
        routing_rule="pool:inbound",
        strategy="round_robin",
        assigned_at=AT,
        mql_event_id=f"mql:{lead_id}:1",
    )
    return _event(ASSIGNED, event_id, lead_id, data)


def status(event_id: str, lead_id: str) -> tuple[bytes, bytes]:
    data = LeadStatusData(lead_id=lead_id, cycle=1, status="accepted", at=AT)
    return _event(STATUS, event_id, lead_id, data)


@dataclasses.dataclass
class Case:
    """A consumer, what to feed it, and how to count what it applied."""

    build: Callable[[Settings], ConsumerSpec[Any]]
    topic: str
    records: Callable[[], list[tuple[bytes, bytes]]]
    applied: Callable[[AsyncSession], Awaitable[int]]


async def _count(session: AsyncSession, model: type[Any]) -> int:
    return (await session.scalar(select(func.count()).select_from(model))) or 0


async def _handed_off(session: AsyncSession) -> int:
    """MQLs assigned or queued (no reps are stored here: the part's setup is not run)."""
    return await _count(session, Assignment) + await _count(session, QueueEntry)


async def _processed(session: AsyncSession) -> int:
    return await _count(session, ProcessedEvent)


def _activities() -> list[tuple[bytes, bytes]]:
    events = [event for event in stream(3) if event.event_id != POISON][:6]
    return [
        dataclasses.replace(e, event_id=POISON if n == 2 else e.event_id).encoded()
        for n, e in enumerate(events)
    ]


CASES = {
    "scoring": Case(
        lambda s: ActivityApplier(RulebookCache(), CLOCK).spec(),
        LEAD_ACTIVITY,
        _activities,
        lambda session: _count(session, Activity),
    ),
    "scoring-lifecycle": Case(
        lambda s: LifecycleApplier(ActivityApplier(RulebookCache(), CLOCK), CLOCK).spec(),
        LEAD_STATUS,
        lambda: [status(f"st-{n}" if n != 2 else POISON, f"ld_{n}") for n in range(6)],
        _processed,
    ),
    "handoff": Case(
        lambda s: MqlRouter(Dispatcher(load_routing(s.routing), CLOCK)).spec(),
        LEAD_MQL,
        lambda: [mql(f"mql-{n}" if n != 2 else POISON, f"ld_{n}") for n in range(6)],
        _handed_off,
    ),
    "sla": Case(
        lambda s: SlaConsumer(load_policy(s.sla_policy), CLOCK).spec(),
        LEAD_ASSIGNED,
        lambda: [assigned(f"as-{n}" if n != 2 else POISON, f"ld_{n}") for n in range(6)],
        lambda session: _count(session, SlaCycle),  # one per assigned lead
    ),
}


def _refusing(
    spec: ConsumerSpec[Any], refuse: Callable[[str], BaseException | None]
) -> ConsumerSpec[Any]:
    """The consumer's own handler, failing whenever its batch holds an event `refuse` names."""

    async def handle(session: AsyncSession, events: Sequence[Any]) -> None:
        for event in events:
            failure = refuse(spec.event_id(event))
            if failure is not None:
                raise failure
        await spec.handle(session, events)

    return dataclasses.replace(spec, handle=handle)


async def _settle(
    settings: Settings, spec: ConsumerSpec[Any], topic: str, records: list[tuple[bytes, bytes]]
) -> tuple[ConsumerRunner[Any], list[Any]]:
    """Produce the records, read them back as one batch and let the runner settle it."""
    engine = create_engine(settings.effective_database_url)
    publisher = Publisher(settings)
    consumer = make_consumer(settings, spec.group_id, *spec.topics)
    runner = ConsumerRunner(
        spec,
        consumer,
        session_factory(engine),
        publisher,
        CLOCK,
        topic_prefix=settings.topic_prefix,
    )
    async with session_factory(engine)() as session, session.begin():
        await install_configured(session, settings.rulebook, clock=SystemClock())
    await produce(settings, topic, records)
    await publisher.start()
    await consumer.start()
    try:
        batch: list[Any] = []

        async def fetched() -> bool:
            got = await consumer.getmany(timeout_ms=200)
            batch.extend(record for part in got.values() for record in part)
            return len(batch) >= len(records)

        await eventually(fetched)
        await runner.settle(batch, asyncio.Event())
        partitions = {TopicPartition(r.topic, r.partition) for r in batch}
        for partition in partitions:
            last = max(r.offset for r in batch if r.partition == partition.partition)
            assert await consumer.committed(partition) == last + 1
        return runner, batch
    finally:
        await consumer.stop()
        await publisher.stop()
        await engine.dispose()


async def _applied(settings: Settings, case: Case) -> int:
    engine = create_engine(settings.effective_database_url)
    try:
        async with session_factory(engine)() as session:
            return await case.applied(session)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("name", list(CASES))
async def test_an_event_that_cannot_be_applied_is_parked_and_the_rest_applied(
    settings: Settings, name: str
) -> None:
    case = CASES[name]
    spec = _refusing(
        case.build(settings),
        lambda event_id: ValueError(f"cannot store {event_id}") if event_id == POISON else None,
    )
    runner, _ = await _settle(settings, spec, case.topic, case.records())
    assert await _applied(settings, case) == 5
    assert runner.parked == 1
    parked = await read_topic(settings, dlq_for(case.topic), expect=1)
    assert len(parked) == 1
    headers = dict(parked[0].headers)
    reason = headers[DLQ_REASON_HEADER].decode()
    assert reason == f"cannot be applied: ValueError: cannot store {POISON}"
    assert headers["dlq_consumer"].decode() == spec.group_id
    assert POISON.encode() in parked[0].value


async def test_an_outage_is_waited_out_and_nothing_is_parked(settings: Settings) -> None:
    """Failures that say the database is away are retried for as long as they last, past
    the attempts that would isolate a bad event."""
    case = CASES["handoff"]
    outages = iter([ConnectionRefusedError("database away")] * 6)
    spec = _refusing(case.build(settings), lambda _: next(outages, None))
    runner, _ = await _settle(settings, spec, case.topic, case.records())
    assert await _applied(settings, case) == 6
    assert runner.parked == 0


@pytest.mark.postgres
@pytest.mark.parametrize("name", ["handoff", "sla"])
async def test_a_value_postgresql_refuses_is_parked_not_retried_for_ever(
    settings: Settings, name: str
) -> None:
    """Straight from another producer, not through the gateway: a lead id longer than the
    column holds. PostgreSQL refuses it (SQLite would store it)."""
    if not settings.effective_database_url.startswith("postgresql"):
        pytest.skip("SQLite stores over-long strings")
    case = CASES[name]
    build = mql if name == "handoff" else assigned
    records = [build(f"ok-{n}", f"ld_{n}") for n in range(4)]
    records.insert(1, build(POISON, "ld_" + "x" * 100))
    runner, _ = await _settle(settings, case.build(settings), case.topic, records)
    assert await _applied(settings, case) == 4
    assert runner.parked == 1
    parked = await read_topic(settings, dlq_for(case.topic), expect=1)
    reason = dict(parked[0].headers)[DLQ_REASON_HEADER].decode()
    assert "too long" in reason


async def test_failures_are_told_apart_by_what_would_cure_them() -> None:
    closed = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(Exception) as unreachable:
            async with closed.connect():
                pass
    finally:
        await closed.dispose()
    assert classify(unreachable.value) is Fault.ENVIRONMENT

    class Deadlock(Exception):
        sqlstate = "40P01"

    class TooLong(Exception):
        sqlstate = "22001"

    assert classify(DBAPIError("UPDATE", None, Deadlock())) is Fault.CONTENTION
    assert classify(DBAPIError("INSERT", None, TooLong())) is Fault.CONTENT
    assert classify(ValueError("bad")) is Fault.CONTENT
    assert classify(TimeoutError()) is Fault.ENVIRONMENT
