"""Fires warnings and breaches when they come due, from the due times stored on the clocks.

Nothing is timed in memory: each round reads the clocks whose `due_at` has passed, moves
them (`sla_monitor.lifecycle`) and writes their `sla.events` records in one transaction. So
a warning or breach fires once however many sla workers run (on PostgreSQL each round
claims its clocks with `FOR UPDATE SKIP LOCKED`, so two workers never take the same clock;
SQLite has one writer at a time), once across restarts (a fired clock's `due_at` moves on),
and late after an outage rather than never. A warning that comes due only after its
deadline has also passed is not sent: the breach is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.clock import Clock
from services.db import READ_ONLY
from services.faults import describe
from services.outbox import write_pending
from sla_monitor.clocks import ClockBook, next_due
from sla_monitor.lifecycle import Happening
from sla_monitor.models import SlaClock
from sla_monitor.policy import SlaPolicy

log = logging.getLogger(__name__)

ROUND_SIZE = 200


class SlaScheduler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        policy: SlaPolicy,
        clock: Clock,
        *,
        poll_interval: float,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._book = ClockBook(policy, clock)
        self._clock = clock
        self._poll_interval = poll_interval
        self._after_commit = after_commit

    async def fire_due(self) -> int:
        """One round: fire what has come due on up to ROUND_SIZE clocks; returns how many
        clocks it looked at (ROUND_SIZE: there may be more)."""
        now = self._clock.now()
        async with self._sessions() as session:
            await session.connection(execution_options={READ_ONLY: True})
            if not await session.scalar(select(exists().where(SlaClock.due_at <= now))):
                return 0
        async with self._sessions() as session, session.begin():
            due = (
                await session.scalars(
                    select(SlaClock)
                    .where(SlaClock.due_at <= now)
                    .order_by(SlaClock.due_at)
                    .limit(ROUND_SIZE)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            fired = sum(self.fire(session, row, now) for row in due)
            await write_pending(session)
        if fired and self._after_commit is not None:
            self._after_commit()
        return len(due)

    def fire(self, session: AsyncSession, row: SlaClock, now: datetime) -> bool:
        """The breach once the deadline has passed, else the warning once its time came."""
        fired = False
        if now >= row.deadline:
            fired = self._book.move(session, row, Happening.DEADLINE_PASSED, at=row.deadline)
        elif row.warn_at is not None and row.warned_at is None and now >= row.warn_at:
            fired = self._book.move(session, row, Happening.WARNING_DUE, at=row.warn_at)
        if not fired:
            row.due_at = next_due(row)  # nothing was due after all
        return fired

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self.fire_due() == ROUND_SIZE:
                    continue
            except Exception as exc:  # the next round tries again; the due times are stored
                log.warning("SLA scheduler: %s; retrying", describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._poll_interval)
