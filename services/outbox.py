"""Transactional outbox: services write events beside their state; a relay publishes them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import BaseModel
from sqlalchemy import delete, event, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from schemas.envelope import CloudEvent
from schemas.registry import Contract
from services.bus import OutgoingRecord, Publisher, PublishError, encode
from services.clock import Clock
from services.codec import envelope
from services.db import READ_ONLY, among, bulk_insert
from services.models import OutboxRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Emitter:
    """Writes one service's events to the outbox, in the caller's transaction."""

    service: str
    source: str
    clock: Clock

    def emit(
        self,
        session: AsyncSession,
        contract: Contract,
        *,
        event_id: str,
        time: datetime,
        key: str,
        data: BaseModel,
        type_: str | None = None,
    ) -> None:
        """Enqueue `data` on the contract's topic, keyed and subjected by `key` (a lead id)."""
        event = envelope(
            contract,
            event_id=event_id,
            source=self.source,
            type_=type_ or contract.name,
            time=time,
            subject=key,
            data=data,
        )
        enqueue(
            session,
            service=self.service,
            topic=contract.topic,
            key=key,
            event=event,
            clock=self.clock,
        )


_PENDING = "leadflow.outbox.pending"


def enqueue(
    session: AsyncSession,
    *,
    service: str,
    topic: str,
    key: str,
    event: CloudEvent[Any],
    clock: Clock,
) -> None:
    """Add an event to the outbox in the caller's transaction; `write_pending` stores it."""
    session.info.setdefault(_PENDING, []).append(
        {
            "service": service,
            "topic": topic,
            "key": key,
            "ce_type": event.type,
            "payload": encode(event),
            "created_at": clock.now(),
        }
    )


async def write_pending(session: AsyncSession) -> None:
    """Insert the events enqueued in this transaction, in one statement, in their order."""
    await bulk_insert(session, OutboxRecord, session.info.pop(_PENDING, []))


@event.listens_for(Session, "before_commit")
def _refuse_unwritten_events(session: Session) -> None:
    if session.info.get(_PENDING):
        raise RuntimeError("outbox events were enqueued but not written: call write_pending")


@event.listens_for(Session, "after_rollback")
def _forget_pending_events(session: Session) -> None:
    session.info.pop(_PENDING, None)


class PendingEvent(NamedTuple):
    id: int
    topic: str
    key: str
    payload: bytes
    ce_type: str


class OutboxRelay:
    """Publishes one service's outbox in insertion order; deletes rows once the broker acked.

    At least once: a crash between the broker's ack and the delete republishes the same
    event ids, which consumers deduplicate.
    """

    def __init__(
        self,
        service: str,
        sessions: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        *,
        batch_size: int,
        poll_interval: float,
        wakeup: asyncio.Event | None = None,
    ) -> None:
        self.service = service
        self._sessions = sessions
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wakeup = wakeup or asyncio.Event()
        digest = hashlib.sha256(f"leadflow-outbox:{service}".encode()).digest()
        self._lock_key = int.from_bytes(digest[:8], "big", signed=True)

    def notify(self) -> None:
        self._wakeup.set()

    async def publish_pending(self) -> int:
        """Publish one batch in outbox order; returns how many events went out.

        On PostgreSQL one relay per service works at a time (a transaction-scoped advisory
        lock), so events of a lead keep their order however many processes run a relay. On
        SQLite the rows are read and deleted in two short transactions, so the database's
        single write lock is never held while waiting for the broker.
        """
        async with self._sessions() as session:
            if session.get_bind().dialect.name == "postgresql":
                async with session.begin():
                    locked = await session.scalar(
                        select(func.pg_try_advisory_xact_lock(self._lock_key))
                    )
                    if not locked:
                        return 0
                    rows = await self._pending(session)
                    await self._publish_and_delete(session, rows)
                    return len(rows)
            await session.connection(execution_options={READ_ONLY: True})
            rows = await self._pending(session)
        async with self._sessions() as session, session.begin():
            await self._publish_and_delete(session, rows)
        return len(rows)

    async def _pending(self, session: AsyncSession) -> list[PendingEvent]:
        """The next batch as plain rows: no ORM objects, they would only be deleted."""
        query = (
            select(
                OutboxRecord.id,
                OutboxRecord.topic,
                OutboxRecord.key,
                OutboxRecord.payload,
                OutboxRecord.ce_type,
            )
            .where(OutboxRecord.service == self.service)
            .order_by(OutboxRecord.id)
            .limit(self._batch_size)
        )
        return [PendingEvent(*row) for row in await session.execute(query)]

    async def _publish_and_delete(self, session: AsyncSession, rows: list[PendingEvent]) -> None:
        if not rows:
            return
        await self._publisher.publish_many(
            OutgoingRecord(topic=row.topic, key=row.key, value=row.payload, ce_type=row.ce_type)
            for row in rows
        )
        await session.execute(
            delete(OutboxRecord).where(among(session, OutboxRecord.id, [row.id for row in rows]))
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                published = await self.publish_pending()
            except (PublishError, SQLAlchemyError, OSError) as exc:
                log.warning("outbox relay %s: %s; retrying", self.service, exc)
                published = 0
                await _sleep_or_stop(stop, 1.0)
            if published == self._batch_size:
                continue
            self._wakeup.clear()
            await _wait_any(stop, self._wakeup, self._poll_interval)
        await self._drain()

    async def _drain(self) -> None:
        """Publish what is left on shutdown, as far as the broker still answers."""
        try:
            while await self.publish_pending():
                pass
        except PublishError as exc:
            log.warning("outbox relay %s stopped with events pending: %s", self.service, exc)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


async def _wait_any(stop: asyncio.Event, wakeup: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
