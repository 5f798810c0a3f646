"""The consumer runner: read a batch, apply it in one transaction with its event ids, commit.

Offsets are committed only after the database transaction, so a crash replays the batch and
the recorded event ids make the replay a no-op. Records that cannot be parsed go to the
topic's DLQ with the reason in a header, and the runner moves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.topics import dlq_for
from services.bus import Publisher
from services.clock import Clock
from services.codec import PoisonRecord
from services.config_files import describe
from services.db import among, bulk_insert
from services.models import ProcessedEvent
from services.outbox import write_pending

log = logging.getLogger(__name__)

EventT = TypeVar("EventT")
T = TypeVar("T")

DLQ_REASON_HEADER = "dlq_reason"


class ConcurrentChange(RuntimeError):
    """Another worker changed what this batch read; the batch is retried from the start."""


Parser = Callable[[str, bytes | None], EventT]
"""Turns (contract topic, record value) into an event; raises PoisonRecord or ValidationError."""

BatchHandler = Callable[[AsyncSession, Sequence[EventT]], Awaitable[None]]
"""Applies new (not yet processed) events inside the runner's transaction."""

EventId = Callable[[EventT], str]

AppliedLookup = Callable[[AsyncSession, Sequence[str]], Awaitable[set[str]]]
"""Which of these event ids a consumer has applied, read from its own records."""

Received = tuple[list[ConsumerRecord[Any, Any]], list[EventT]]


@dataclass
class ConsumerSpec(Generic[EventT]):
    name: str
    group_id: str
    topics: tuple[str, ...]
    parse: Parser[EventT]
    event_id: EventId[EventT]
    handle: BatchHandler[EventT]
    applied: AppliedLookup | None = None
    """For a consumer whose handler stores every event it applies under the event's id, in
    the same transaction (scoring's activity log): the runner asks it what was applied and
    keeps no second record. None: the runner records ids in `processed_events`."""


class ConsumerRunner(Generic[EventT]):
    def __init__(
        self,
        spec: ConsumerSpec[EventT],
        consumer: AIOKafkaConsumer,
        sessions: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        clock: Clock,
        *,
        topic_prefix: str,
        poll_timeout_ms: int = 200,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self._consumer = consumer
        self._sessions = sessions
        self._publisher = publisher
        self._clock = clock
        self._prefix = topic_prefix
        self._poll_timeout_ms = poll_timeout_ms
        self._after_commit = after_commit
        self.applied = 0

    def assignment(self) -> set[TopicPartition]:
        """The partitions this runner's consumer owns now (empty before it joined its group)."""
        owned: set[TopicPartition] = self._consumer.assignment()
        return owned

    async def run(self, stop: asyncio.Event) -> None:
        """Apply batch after batch; the next batch is fetched and parsed while the current
        one waits on the database, so the two overlap instead of taking turns."""
        await self._consumer.start()
        upcoming = asyncio.create_task(self._receive(stop))
        try:
            while True:
                records, events = await upcoming
                if not stop.is_set():
                    upcoming = asyncio.create_task(self._receive(stop))
                if records:
                    await self._apply_and_commit(records, events, stop)
                if stop.is_set():
                    return
        finally:
            # a batch being parsed may be parking records: let it finish, apply nothing more
            await asyncio.gather(upcoming, return_exceptions=True)
            await self._consumer.stop()

    async def _apply_and_commit(
        self, records: list[ConsumerRecord[Any, Any]], events: list[EventT], stop: asyncio.Event
    ) -> None:
        applied = await self._until_done(lambda: self._apply(events), stop)
        await self._commit(records, applied)

    async def _receive(self, stop: asyncio.Event) -> Received[EventT]:
        """The next batch of records and the events parsed from them (unreadable ones parked)."""
        batches = await self._consumer.getmany(timeout_ms=self._poll_timeout_ms)
        records = [record for part in batches.values() for record in part]
        if not records:
            return records, []
        return records, await self._until_done(lambda: self._parse_all(records), stop)

    async def process(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """One attempt at a batch: park the unreadable, apply the rest, commit the offsets."""
        events = await self._parse_all(records)
        await self._commit(records, await self._apply(events))

    async def _until_done(self, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
        """Retry a step of the batch in place: the batch is never skipped."""
        delay = 0.05
        while True:
            try:
                return await attempt()
            except (ConcurrentChange, IntegrityError, OperationalError) as exc:
                log.warning(
                    "%s: a concurrent change (%s); retrying the batch",
                    self.spec.name,
                    type(exc).__name__,
                )
            except Exception:
                log.exception("%s: batch failed; retrying", self.spec.name)
                delay = max(delay, 0.5)
            if stop.is_set():
                raise RuntimeError(f"{self.spec.name}: stopped with a batch not applied")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _parse_all(self, records: Sequence[ConsumerRecord[Any, Any]]) -> list[EventT]:
        events: list[EventT] = []
        for record in records:
            event = await self._parse_or_park(record)
            if event is not None:
                events.append(event)
        return events

    async def _apply(self, events: list[EventT]) -> int:
        """Apply the events not applied before, with their ids, in one transaction."""
        async with self._sessions() as session, session.begin():
            fresh = await self._unseen(session, events)
            if fresh:
                await self.spec.handle(session, fresh)
                await write_pending(session)
        self.applied += len(fresh)
        return len(fresh)

    async def _commit(self, records: Sequence[ConsumerRecord[Any, Any]], applied: int) -> None:
        """Commit the offsets of the partitions this consumer still owns. After a rebalance the
        new owner re-reads the rest, and skips what was applied by its recorded ids."""
        owned = self.assignment()
        offsets = {part: offset for part, offset in _next_offsets(records).items() if part in owned}
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning("%s: offsets not committed after a rebalance (%s)", self.spec.name, exc)
        if applied and self._after_commit is not None:
            self._after_commit()

    async def _parse_or_park(self, record: ConsumerRecord[Any, Any]) -> EventT | None:
        topic = record.topic.removeprefix(self._prefix)
        try:
            return self.spec.parse(topic, record.value)
        except (PoisonRecord, ValidationError, ValueError) as exc:
            reason = _reason(exc)
            log.warning(
                "%s: %s[%d]@%d to DLQ: %s",
                self.spec.name,
                record.topic,
                record.partition,
                record.offset,
                reason,
            )
            headers = [
                *list(record.headers or ()),
                (DLQ_REASON_HEADER, reason.encode()),
                ("dlq_source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
                ("dlq_consumer", self.spec.group_id.encode()),
            ]
            await self._publisher.publish_raw(dlq_for(topic), record.key, record.value, headers)
            return None

    async def _unseen(self, session: AsyncSession, events: list[EventT]) -> list[EventT]:
        """Drop events this consumer already applied, also repeats within the batch."""
        ids = [self.spec.event_id(event) for event in events]
        if not ids:
            return []
        seen = await self._applied(session, ids)
        fresh: list[EventT] = []
        fresh_ids: list[str] = []
        for event_id, event in zip(ids, events, strict=True):
            if event_id in seen:
                continue
            seen.add(event_id)
            fresh.append(event)
            fresh_ids.append(event_id)
        await self._record(session, fresh_ids)
        return fresh

    async def _applied(self, session: AsyncSession, ids: list[str]) -> set[str]:
        if self.spec.applied is not None:
            return await self.spec.applied(session, ids)
        query = select(ProcessedEvent.event_id).where(
            ProcessedEvent.consumer == self.spec.group_id,
            among(session, ProcessedEvent.event_id, set(ids)),
        )
        return set((await session.scalars(query)).all())

    async def _record(self, session: AsyncSession, event_ids: list[str]) -> None:
        """Record applied ids in `processed_events`, unless the consumer's own table does."""
        if self.spec.applied is not None:
            return
        now = self._clock.now()
        rows = [
            {"consumer": self.spec.group_id, "event_id": event_id, "processed_at": now}
            for event_id in event_ids
        ]
        await bulk_insert(session, ProcessedEvent, rows)


def _next_offsets(records: Sequence[ConsumerRecord[Any, Any]]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        offsets[partition] = max(offsets.get(partition, 0), record.offset + 1)
    return offsets


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return f"invalid event: {describe(exc)}"[:1000]
    return str(exc)[:1000]
