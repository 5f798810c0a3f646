"""Reading assignments: the attempt that stands for a lead's cycle, and the reps' open leads.

For the rep actions as much as for routing: an action acts on `current(...)`, and a rep's
open leads (what `capacity` limits) are their assignments whose status is `assigned`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.models import ASSIGNED, Assignment


async def current(
    session: AsyncSession, lead_id: str, cycle: int | None = None, *, for_update: bool = False
) -> Assignment | None:
    """The latest attempt of the lead's cycle (its latest cycle when `cycle` is None), or
    None. `for_update` locks the row until the transaction ends (PostgreSQL)."""
    query = select(Assignment).where(Assignment.lead_id == lead_id)
    if cycle is not None:
        query = query.where(Assignment.cycle == cycle)
    query = query.order_by(Assignment.cycle.desc(), Assignment.attempt.desc()).limit(1)
    if for_update:
        query = query.with_for_update()
    found: Assignment | None = await session.scalar(query)
    return found


async def attempts(session: AsyncSession, lead_id: str, cycle: int) -> Sequence[Assignment]:
    """Every attempt of the lead's cycle, first to last."""
    query = (
        select(Assignment)
        .where(Assignment.lead_id == lead_id, Assignment.cycle == cycle)
        .order_by(Assignment.attempt)
    )
    return (await session.scalars(query)).all()


async def open_leads(session: AsyncSession) -> dict[str, int]:
    """Rep id -> how many leads they hold unanswered (status `assigned`)."""
    query = (
        select(Assignment.rep_id, func.count())
        .where(Assignment.status == ASSIGNED)
        .group_by(Assignment.rep_id)
    )
    return {rep_id: count for rep_id, count in (await session.execute(query)).all()}
