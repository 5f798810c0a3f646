"""The pools' turns (`router.PoolTurns`), stored: read before routing, written after."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.models import PoolTurn, RepTurnRecord
from handoff_service.router import PoolTurns, RepTurn, Turns


async def load_turns(session: AsyncSession) -> dict[str, PoolTurns]:
    reps: dict[str, dict[str, RepTurn]] = {}
    for row in await session.scalars(select(RepTurnRecord)):
        reps.setdefault(row.pool, {})[row.rep_id] = RepTurn(row.pass_value, row.waiting_since)
    return {
        row.pool: PoolTurns(dealt=row.dealt, floor=row.floor, reps=reps.get(row.pool, {}))
        for row in await session.scalars(select(PoolTurn))
    }


async def save_turns(session: AsyncSession, before: Turns, after: Turns) -> None:
    """Write the pools whose turns moved from `before` (as loaded) to `after`."""
    for pool, turns in after.items():
        old = before.get(pool)
        if old is turns:
            continue
        stored = await session.get(PoolTurn, pool)
        if stored is None:
            session.add(PoolTurn(pool=pool, dealt=turns.dealt, floor=turns.floor))
        else:
            stored.dealt, stored.floor = turns.dealt, turns.floor
        previous = old.reps if old is not None else {}
        for rep_id, turn in turns.reps.items():
            if previous.get(rep_id) == turn:
                continue
            row = await session.get(RepTurnRecord, (pool, rep_id))
            if row is None:
                session.add(
                    RepTurnRecord(
                        pool=pool,
                        rep_id=rep_id,
                        pass_value=turn.pass_value,
                        waiting_since=turn.waiting_since,
                    )
                )
            else:
                row.pass_value, row.waiting_since = turn.pass_value, turn.waiting_since
