"""The consumer runner: read a batch, apply it in one transaction with its event ids, commit.

Offsets are committed only after the database transaction, so a crash replays the batch and
the recorded event ids make the replay a no-op. No record can stop a consumer: one that
cannot be parsed goes to the topic's DLQ with the reason in a header; a batch that fails is
retried, and when the failure comes back it is split until the events that cannot be applied
are found, parked in the DLQ the same way, and the rest applied. An outage of the database
or the broker is waited out instead (services.faults says which is which).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.topics import dlq_for
from services.bus import Publisher
from services.clock import Clock
from services.codec import PoisonRecord
from services.config_files import describe
from services.db import among, bulk_insert
from services.faults import ConcurrentChange, Fault, classify
from services.faults import describe as describe_failure
from services.models import ProcessedEvent
from services.outbox import write_pending

log = logging.getLogger(__name__)

EventT = TypeVar("EventT")
T = TypeVar("T")

DLQ_REASON_HEADER = "dlq_reason"

BATCH_ATTEMPTS = 3
"""Tries at a batch of several events before it is split in two."""
EVENT_ATTEMPTS = 5
"""Tries at a single event before it is parked: enough to outlast a race with another
worker, which never repeats that often for one event."""
MAX_BACKOFF_SECONDS = 10.0

__all__ = ["DLQ_REASON_HEADER", "ConcurrentChange", "ConsumerRunner", "ConsumerSpec"]


Parser = Callable[[str, bytes | None], EventT]
"""Turns (contract topic, record value) into an event; raises PoisonRecord or ValidationError."""

BatchHandler = Callable[[AsyncSession, Sequence[EventT]], Awaitable[None]]
"""Applies new (not yet processed) events inside the runner's transaction."""

EventId = Callable[[EventT], str]

AppliedLookup = Callable[[AsyncSession, Sequence[str]], Awaitable[set[str]]]
"""Which of these event ids a consumer has applied, read from its own records."""

Record: TypeAlias = ConsumerRecord[Any, Any]
Received = tuple[list[Record], list[tuple[Record, EventT]]]
"""A batch as read: every record (for the offsets) and the parsed ones with their events."""


class _Unapplicable(Exception):
    """A batch failed for a reason in its events, however often it was tried."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe_failure(cause))
        self.cause = cause


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
        self.parked = 0
        """Records this runner sent to the DLQ (unreadable or unapplicable)."""

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
                records, parsed = await upcoming
                if not stop.is_set():
                    upcoming = asyncio.create_task(self._receive(stop))
                if records:
                    await self._settle(records, parsed, stop)
                if stop.is_set():
                    return
        finally:
            # a batch being parsed may be parking records: let it finish, apply nothing more
            await asyncio.gather(upcoming, return_exceptions=True)
            await self._consumer.stop()

    async def settle(self, records: Sequence[Record], stop: asyncio.Event) -> None:
        """What `run` does with a batch: park the unreadable, apply the rest however many
        tries and splits it takes, then commit the offsets."""
        parsed = await self._until_done(lambda: self._parse_all(records), stop)
        await self._settle(list(records), parsed, stop)

    async def process(self, records: Sequence[Record]) -> None:
        """One attempt at a batch: park the unreadable, apply the rest, commit the offsets."""
        parsed = await self._parse_all(records)
        await self._commit(records, await self._apply([event for _, event in parsed]))

    async def _settle(
        self, records: list[Record], parsed: list[tuple[Record, EventT]], stop: asyncio.Event
    ) -> None:
        applied = await self._apply_resilient(parsed, stop)
        await self._commit(records, applied)

    async def _receive(self, stop: asyncio.Event) -> Received[EventT]:
        """The next batch of records and the events parsed from them (unreadable ones parked)."""
        batches = await self._consumer.getmany(timeout_ms=self._poll_timeout_ms)
        records = [record for part in batches.values() for record in part]
        if not records:
            return records, []
        return records, await self._until_done(lambda: self._parse_all(records), stop)

    async def _apply_resilient(
        self, parsed: list[tuple[Record, EventT]], stop: asyncio.Event
    ) -> int:
        """Apply the batch; when its events keep failing, apply its halves apart, down to the
        single events that cannot be applied, which are parked with the reason."""
        if not parsed:
            return 0
        attempts = EVENT_ATTEMPTS if len(parsed) == 1 else BATCH_ATTEMPTS
        events = [event for _, event in parsed]
        try:
            return await self._until_done(lambda: self._apply(events), stop, attempts=attempts)
        except _Unapplicable as failure:
            if len(parsed) == 1:
                reason = f"cannot be applied: {failure}"
                await self._until_done(lambda: self._to_dlq(parsed[0][0], reason), stop)
                return 0
        middle = len(parsed) // 2
        log.warning(
            "%s: a batch of %d keeps failing; applying its halves apart",
            self.spec.name,
            len(parsed),
        )
        first = await self._apply_resilient(parsed[:middle], stop)
        return first + await self._apply_resilient(parsed[middle:], stop)

    async def _until_done(
        self, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event, *, attempts: int = 0
    ) -> T:
        """Retry a step with backoff. Outages and contention are retried for as long as they
        last; other failures `attempts` times (0: for ever), then raised as _Unapplicable."""
        delay = 0.05
        failures = 0
        while True:
            try:
                return await attempt()
            except Exception as exc:
                fault = classify(exc)
                if fault is Fault.CONTENT:
                    failures += 1
                    if attempts and failures >= attempts:
                        raise _Unapplicable(exc) from exc
                log.warning(
                    "%s: %s (%s); retrying in %.2fs",
                    self.spec.name,
                    _FAULT_WORDS[fault],
                    describe_failure(exc),
                    delay,
                )
            if stop.is_set():
                raise RuntimeError(f"{self.spec.name}: stopped with a batch not applied")
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    async def _parse_all(self, records: Sequence[Record]) -> list[tuple[Record, EventT]]:
        parsed: list[tuple[Record, EventT]] = []
        for record in records:
            event = await self._parse_or_park(record)
            if event is not None:
                parsed.append((record, event))
        return parsed

    async def _apply(self, events: list[EventT]) -> int:
        """Apply the events not applied before, with their ids, in one transaction."""
        async with self._sessions() as session, session.begin():
            fresh = await self._unseen(session, events)
            if fresh:
                await self.spec.handle(session, fresh)
                await write_pending(session)
        self.applied += len(fresh)
        return len(fresh)

    async def _commit(self, records: Sequence[Record], applied: int) -> None:
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

    async def _parse_or_park(self, record: Record) -> EventT | None:
        topic = record.topic.removeprefix(self._prefix)
        try:
            return self.spec.parse(topic, record.value)
        except (PoisonRecord, ValidationError, ValueError) as exc:
            await self._to_dlq(record, _reason(exc))
            return None

    async def _to_dlq(self, record: Record, reason: str) -> None:
        """Park a record in its topic's DLQ (acknowledged by the broker before the offset
        moves past it), with the reason, where it came from and who parked it."""
        log.warning(
            "%s: %s[%d]@%d to DLQ: %s",
            self.spec.name,
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        topic = record.topic.removeprefix(self._prefix)
        headers = [
            *list(record.headers or ()),
            (DLQ_REASON_HEADER, reason.encode()),
            ("dlq_source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ("dlq_consumer", self.spec.group_id.encode()),
        ]
        await self._publisher.publish_raw(dlq_for(topic), record.key, record.value, headers)
        self.parked += 1

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


_FAULT_WORDS = {
    Fault.ENVIRONMENT: "database or broker unavailable",
    Fault.CONTENTION: "a concurrent change",
    Fault.CONTENT: "the batch failed",
}


def _next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        offsets[partition] = max(offsets.get(partition, 0), record.offset + 1)
    return offsets


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return f"invalid event: {describe(exc)}"[:1000]
    return str(exc)[:1000]
