"""Announces held qualifications once their allowed lateness has passed.

A batch that finds a lead qualified holds the announcement (scoring_service.announcing);
nothing else may arrive for that lead afterwards, so something must look at the clock:
this worker, which every poll interval announces what has come due, in its own short
transactions, beside the consumers of the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from scoring_service import store
from scoring_service.consumer import ActivityApplier
from services.clock import Clock
from services.db import READ_ONLY
from services.faults import describe
from services.outbox import write_pending

log = logging.getLogger(__name__)

ROUND_SIZE = 500


class MqlPromoter:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        applier: ActivityApplier,
        clock: Clock,
        *,
        poll_interval: float,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._applier = applier
        self._clock = clock
        self._poll_interval = poll_interval
        self._after_commit = after_commit

    async def promote_due(self) -> int:
        """One round: announce up to ROUND_SIZE held MQLs that have come due."""
        now = self._clock.now()
        async with self._sessions() as session:
            await session.connection(execution_options={READ_ONLY: True})
            if not await store.any_due(session, now):
                return 0
        async with self._sessions() as session, session.begin():
            announced = await self._applier.promote_due(session, now, ROUND_SIZE)
            await write_pending(session)
        if announced and self._after_commit is not None:
            self._after_commit()
        return announced

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self.promote_due() == ROUND_SIZE:
                    continue
            except Exception as exc:  # the next round tries again; the holds are stored
                log.warning("MQL promoter: %s; retrying", describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._poll_interval)
