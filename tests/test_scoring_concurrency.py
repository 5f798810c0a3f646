"""Two scoring workers in one consumer group, with identity merges that span partitions,
end in the same state as one worker."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy import select

from schemas.events import ActivityType
from schemas.topics import LEAD_ACTIVITY, LEAD_MQL
from scoring_service.models import Lead, LeadIdentity
from services.bus import ensure_topics
from services.clock import ManualClock
from services.db import create_engine, session_factory
from services.launch.runtime import Runtime
from services.launch.tables import metadata
from services.runner import ConsumerRunner
from services.settings import Settings
from tests.conftest import MONDAY_10AM_NEW_YORK
from tests.support import eventually, produce, read_topic
from tests.test_scoring_service import RULEBOOK, activity

PARTITIONS = [0, 1, 2]


def partition_of(key: str) -> int:
    return int(DefaultPartitioner()(key.encode(), PARTITIONS, PARTITIONS))


def split_pair(index: int) -> tuple[str, str]:
    """An anonymous id and an email whose records land on different partitions."""
    for attempt in range(100):
        anon, email = f"visitor-{index}-{attempt}", f"person{index}-{attempt}@corp.example"
        if partition_of(f"anon:{anon}") != partition_of(f"email:{email}"):
            return anon, email
    raise AssertionError("no split pair found")


def stream(seed: int = 11) -> list[tuple[bytes, bytes]]:
    """Browsing as anonymous visitors and as known people; some visitors identify, and some
    known people turn out to be one person (user id shared by two emails)."""
    rng = random.Random(seed)
    events: list[tuple[bytes, bytes]] = []
    counter = iter(range(10_000))

    def add(minutes: int, kind: ActivityType = ActivityType.PAGE_VIEW, **who: Any) -> None:
        events.append(activity(f"c{next(counter)}", minutes, kind, **who))

    for index in range(6):
        anon, email = split_pair(index)
        for _ in range(rng.randint(2, 5)):
            add(rng.randint(0, 600), anon=anon)
        for _ in range(rng.randint(1, 4)):
            add(
                rng.randint(0, 600),
                rng.choice([ActivityType.PAGE_VIEW, ActivityType.WEBINAR_ATTEND]),
                email=email,
            )
        add(
            rng.randint(300, 900),
            ActivityType.IDENTIFY,
            email=email,
            anon=anon,
            attributes={"industry": "software"},
        )
        if index % 2:
            add(rng.randint(0, 900), email=f"alias{index}@corp.example", user=f"u{index}")
            add(rng.randint(0, 900), email=email, user=f"u{index}")
    rng.shuffle(events)
    return events


async def final_state(settings: Settings) -> dict[tuple[str, ...], Any]:
    """Each live lead by its identities (lead ids depend on who saw it first)."""
    engine = create_engine(settings.effective_database_url)
    try:
        async with session_factory(engine)() as session:
            leads = (await session.scalars(select(Lead).where(Lead.merged_into.is_(None)))).all()
            keys = (await session.execute(select(LeadIdentity.key, LeadIdentity.lead_id))).all()
    finally:
        await engine.dispose()
    identities: dict[str, list[str]] = {}
    for key, lead_id in keys:
        identities.setdefault(lead_id, []).append(key)
    return {
        tuple(sorted(identities[lead.id])): (
            lead.score,
            lead.fit,
            lead.engagement,
            lead.grade,
            lead.stage,
            lead.mql_cycle,
            lead.state,
        )
        for lead in leads
    }


def scoring_runners(runtimes: list[Runtime]) -> Iterator[ConsumerRunner[Any]]:
    for runtime in runtimes:
        for part in runtime.parts:
            for worker in part.workers:
                if isinstance(worker, ConsumerRunner) and worker.spec.group_id == "scoring":
                    yield worker


async def run_workers(
    settings: Settings, workers: int, events: list[tuple[bytes, bytes]], rulebook: Path
) -> tuple[dict[tuple[str, ...], Any], int]:
    configured = settings.model_copy(update={"rulebook": rulebook, "consumer_batch_size": 7})
    runtimes = [
        Runtime(configured, ManualClock(MONDAY_10AM_NEW_YORK), ["scoring"]) for _ in range(workers)
    ]
    for runtime in runtimes:
        await runtime.start()
    try:
        for start in range(0, len(events), 10):
            await produce(configured, LEAD_ACTIVITY, events[start : start + 10])

        async def all_applied() -> bool:
            return sum(runner.applied for runner in scoring_runners(runtimes)) >= len(events)

        await eventually(all_applied, timeout=60)
        assert all(runner.applied for runner in scoring_runners(runtimes)), "a worker sat idle"
    finally:
        for runtime in runtimes:
            await runtime.stop()
    records = await read_topic(configured, LEAD_MQL, expect=10_000, timeout=1.5)
    # the outbox is at-least-once: count distinct events, as a consumer deduplicating would;
    # the MQLs that stand are those announced and not revoked
    published: list[dict[str, Any]] = [json.loads(record.value) for record in records]
    announced = {mql["id"] for mql in published if mql["type"] == "lead.mql"}
    revoked = {e["data"]["mql_event_id"] for e in published if e["type"] == "lead.mql_revoked"}
    return await final_state(configured), len(announced - revoked)


async def wipe(settings: Settings) -> None:
    """Empty every table, so the second run starts from the same nothing as the first."""
    engine = create_engine(settings.effective_database_url)
    try:
        async with engine.begin() as connection:
            for table in reversed(metadata.sorted_tables):
                await connection.execute(table.delete())
    finally:
        await engine.dispose()


async def test_two_workers_give_the_same_state_as_one(settings: Settings, tmp_path: Path) -> None:
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(RULEBOOK)
    events = stream()
    one, one_mqls = await run_workers(settings, 1, events, rulebook)

    await wipe(settings)
    again = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "two."})
    await ensure_topics(again)
    two, two_mqls = await run_workers(again, 2, events, rulebook)
    assert two == one
    assert two_mqls == one_mqls
    merged = [identities for identities in one if len(identities) > 2]
    assert len(merged) >= 3, "the stream must exercise merges"
