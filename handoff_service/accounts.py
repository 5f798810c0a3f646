"""Who owns which company (by domain): later leads of the company go to that rep first.

An account gets its owner when a rep accepts one of its leads (`record_owner`, called by the
accept action). The owner stays while they are an active rep; a lead of the company accepted
by someone else then does not move the account, unless the owner has left (inactive or no
longer a rep).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.models import AccountOwner, Assignment, RepRecord
from handoff_service.router import domain_of


async def owner_of(session: AsyncSession, domain: str | None) -> str | None:
    """The rep id owning `domain`, or None."""
    if domain is None:
        return None
    found = await session.get(AccountOwner, domain)
    return None if found is None else found.rep_id


async def record_owner(
    session: AsyncSession,
    domain: str | None,
    rep_id: str,
    *,
    lead_id: str,
    cycle: int,
    at: datetime,
) -> bool:
    """Make `rep_id` the owner of `domain` (a company domain or URL; normalized) unless it
    has an owner who is still an active rep. Returns whether the owner was set. Nothing
    happens without a domain (a personal email address gives none)."""
    key = domain_of(domain)
    if key is None:
        return False
    existing = await session.get(AccountOwner, key, with_for_update=True)
    if existing is not None:
        if existing.rep_id == rep_id:
            return False
        holder = await session.get(RepRecord, existing.rep_id)
        if holder is not None and holder.active:
            return False
        existing.rep_id, existing.lead_id, existing.cycle, existing.since = (
            rep_id,
            lead_id,
            cycle,
            at,
        )
        return True
    values = {"domain": key, "rep_id": rep_id, "lead_id": lead_id, "cycle": cycle, "since": at}
    insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    # two acceptances of the company's first leads at once: the first one stands
    added = await session.execute(
        insert(AccountOwner).values(values).on_conflict_do_nothing().returning(AccountOwner.domain)
    )
    return added.first() is not None


async def record_owner_of(session: AsyncSession, assignment: Assignment, at: datetime) -> bool:
    """`record_owner` for an accepted assignment: its lead's company goes to its rep."""
    return await record_owner(
        session,
        assignment.account_domain,
        assignment.rep_id,
        lead_id=assignment.lead_id,
        cycle=assignment.cycle,
        at=at,
    )
