"""Re-apply: switch to a rulebook version and re-score every lead from its log, in the
background, with progress stored in `scoring_jobs`.

Each lead is re-scored in its own short transaction (locked on PostgreSQL), so live scoring
goes on meanwhile. Corrected `lead.scored` events are emitted; a `lead.mql` only for a lead
that now qualifies and had not qualified in its current cycle.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from scoring_service import rulebooks, store
from scoring_service.consumer import ActivityApplier
from scoring_service.models import Lead, ScoringJob
from scoring_service.rulebooks import ActiveRulebook
from services.clock import Clock
from services.outbox import write_pending

log = logging.getLogger(__name__)

CHUNK = 200


class Reapplier:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], applier: ActivityApplier, clock: Clock
    ) -> None:
        self._sessions = sessions
        self._applier = applier
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, version: str) -> ScoringJob:
        """Activate `version` and start re-scoring every lead under it."""
        async with self._sessions() as session, session.begin():
            await rulebooks.activate(session, version, clock=self._clock)
            total = await session.scalar(
                select(func.count()).select_from(Lead).where(Lead.merged_into.is_(None))
            )
            job = ScoringJob(
                id=f"job_{uuid.uuid4().hex[:16]}",
                kind="reapply",
                rulebook_version=version,
                status="running",
                total=total or 0,
                done=0,
                result={},
                created_at=self._clock.now(),
            )
            session.add(job)
        task = asyncio.create_task(self._run(job.id, version), name=f"reapply-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def stop(self, grace: float = 10.0) -> None:
        """Give running jobs `grace` seconds, then stop them; a stopped job is marked failed
        and can be started again (re-scoring is idempotent)."""
        if not self._tasks:
            return
        _, unfinished = await asyncio.wait(self._tasks, timeout=grace)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, job_id: str, version: str) -> None:
        try:
            rescored, mqls = await self._rescore_all(job_id, version)
        except asyncio.CancelledError:
            await self._finish(job_id, "failed", {}, error="stopped by shutdown; activate again")
            raise
        except Exception as exc:
            log.exception("re-apply %s failed", job_id)
            await self._finish(job_id, "failed", {}, error=repr(exc))
            return
        await self._finish(job_id, "done", {"rescored": rescored, "new_mqls": mqls})

    async def _rescore_all(self, job_id: str, version: str) -> tuple[int, int]:
        rescored = mqls = 0
        async for lead_ids in self._lead_chunks():
            for lead_id in lead_ids:
                mqls += await self._rescore_one(lead_id, version, cause=f"reapply:{job_id}")
                rescored += 1
            async with self._sessions() as session, session.begin():
                job = await session.get(ScoringJob, job_id)
                assert job is not None
                job.done = rescored
            log.info("re-apply %s: %d leads re-scored", job_id, rescored)
        return rescored, mqls

    async def _lead_chunks(self) -> AsyncIterator[list[str]]:
        after = ""
        while True:
            async with self._sessions() as session:
                ids = [
                    lead_id for lead_id, _ in await store.live_leads_after(session, after, CHUNK)
                ]
            if not ids:
                return
            yield ids
            after = ids[-1]

    async def _rescore_one(self, lead_id: str, version: str, *, cause: str) -> int:
        """Returns 1 if the lead newly qualified."""
        async with self._sessions() as session, session.begin():
            leads = await store.leads_for_update(session, [lead_id])
            lead = leads.get(lead_id)
            if lead is None or lead.merged_into is not None:
                return 0
            cycle = lead.mql_cycle
            rulebook = await self._applier.rulebooks.get(session, version)
            await self._applier.rescore(
                session, lead, ActiveRulebook(version, rulebook), cause=cause
            )
            await write_pending(session)
            return int(lead.mql_cycle > cycle)

    async def _finish(
        self, job_id: str, status: str, result: dict[str, Any], *, error: str | None = None
    ) -> None:
        async with self._sessions() as session, session.begin():
            job = await session.get(ScoringJob, job_id)
            assert job is not None
            job.status, job.result, job.error = status, result, error
            job.finished_at = self._clock.now()
