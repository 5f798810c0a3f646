"""Assigns queued leads as soon as someone can take them.

A queued lead waits for something to change: a rep's capacity freed (an answer, a revoked
MQL), a rep changed or back from away (through the API), or the clock (working hours start,
an away period ends). Every poll interval this worker looks whether leads wait; when they
do, it drains the queue if the reps' state changed since it last tried (their open and
total assignments, their versions) or `DRAIN_EVERY` has passed on the clock, or when told
to (`notify`). The handoff consumer also serves the queue before each batch of new MQLs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoff_service.dispatch import Dispatcher, queue_size
from handoff_service.models import ASSIGNED, Assignment, RepRecord
from services.clock import Clock
from services.db import READ_ONLY
from services.faults import describe
from services.outbox import write_pending

log = logging.getLogger(__name__)

DRAIN_EVERY = timedelta(seconds=30)
"""How often waiting leads are routed again when nothing else changed: the longest a lead
waits after a rep's working hours start or their away period ends."""

Fingerprint = tuple[int, int, int]


async def fingerprint(session: AsyncSession) -> Fingerprint:
    """What changes when someone may have become able to take a lead."""
    open_leads = (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.status == ASSIGNED)
        .scalar_subquery()
    )
    assignments = select(func.count()).select_from(Assignment).scalar_subquery()
    versions = select(func.coalesce(func.sum(RepRecord.version), 0)).scalar_subquery()
    row = (await session.execute(select(open_leads, assignments, versions))).one()
    return int(row[0]), int(row[1]), int(row[2])


class QueueDrainer:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        clock: Clock,
        *,
        poll_interval: float,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._dispatcher = dispatcher
        self._clock = clock
        self._poll_interval = poll_interval
        self._after_commit = after_commit
        self._wake = asyncio.Event()
        self._seen: Fingerprint | None = None
        self._due: datetime | None = None

    def notify(self) -> None:
        """Drain at the next chance, whatever changed (e.g. after a rep answered a lead)."""
        self._wake.set()

    async def drain_once(self, *, force: bool = False) -> int:
        """One look: drain when leads wait and something may have changed; returns how many
        leads were assigned."""
        now = self._clock.now()
        async with self._sessions() as session:
            await session.connection(execution_options={READ_ONLY: True})
            if not await queue_size(session):
                self._seen = None
                return 0
            seen = await fingerprint(session)
        if not force and seen == self._seen and self._due is not None and now < self._due:
            return 0
        async with self._sessions() as session, session.begin():
            snapshot = await self._dispatcher.snapshot(session)
            assigned = await self._dispatcher.drain(session, snapshot)
            await self._dispatcher.finish(session, snapshot)
            await write_pending(session)
        self._seen, self._due = seen, now + DRAIN_EVERY
        if assigned and self._after_commit is not None:
            self._after_commit()
        return assigned

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            forced = self._wake.is_set()
            self._wake.clear()
            try:
                await self.drain_once(force=forced)
            except Exception as exc:  # the next round tries again; the queue is stored
                log.warning("queue drainer: %s; retrying", describe(exc))
            await _either(stop, self._wake, seconds=self._poll_interval)


async def _either(first: asyncio.Event, second: asyncio.Event, *, seconds: float) -> None:
    """Wait until one of the events is set, or `seconds` have passed."""
    waiters = [asyncio.create_task(first.wait()), asyncio.create_task(second.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
