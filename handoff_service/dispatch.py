"""Routing with the stored state: MQLs to reps, the queue drained, a missed deadline
re-routed, a lead reassigned by hand.

`router` decides on plain data; this module loads that data (the reps as stored, their open
leads, the pools' turns, the account owner) under a lock that serializes routing across
workers, records every decision on the assignment or in the queue, emits `lead.assigned`
through the outbox, and stores the turns it leaves. Every method works in the caller's
transaction, after `snapshot`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.accounts import owner_of
from handoff_service.assignments import attempts, current, open_leads
from handoff_service.models import (
    ASSIGNED,
    REASSIGNED,
    REVOKED,
    AccountOwner,
    Assignment,
    QueueEntry,
)
from handoff_service.roster import load_reps, lock_routing
from handoff_service.router import (
    Decision,
    Lead,
    QueuedLead,
    RosterState,
    Skip,
    account_domain,
    drain_queue,
    route,
)
from handoff_service.routing_file import RoutingFile
from handoff_service.turns import load_turns, save_turns
from schemas.events import LeadAssignedData, LeadMqlData, LeadMqlRevokedData, SlaEventData
from schemas.registry import ASSIGNED as ASSIGNED_CONTRACT
from services.clock import Clock
from services.db import among
from services.outbox import Emitter

AssignReason = Literal["routed", "account_owner", "from_queue", "reassigned_after_breach", "manual"]
QueueWhy = Literal["no_rule", "nobody_available", "breach"]


def assigned_event_id(lead_id: str, cycle: int, attempt: int) -> str:
    """`assigned:<lead>:<cycle>` for a cycle's first assignment, then `…:<attempt>`."""
    base = f"assigned:{lead_id}:{cycle}"
    return base if attempt == 1 else f"{base}:{attempt}"


# --- what routing knows of a lead, stored as JSON -------------------------------------------


def lead_of_mql(mql: LeadMqlData) -> Lead:
    campaign = next(
        (
            value
            for name in ("campaign", "utm_campaign")
            if isinstance(value := mql.attributes.get(name), str)
        ),
        None,
    )
    return Lead(
        lead_id=mql.lead_id,
        attributes=dict(mql.attributes),
        email=mql.email,
        grade=mql.grade,
        source=mql.source,
        campaign=campaign,
        trigger=mql.trigger,
    )


def lead_values(lead: Lead) -> dict[str, Any]:
    return {
        "lead_id": lead.lead_id,
        "attributes": dict(lead.attributes),
        "email": lead.email,
        "grade": lead.grade,
        "source": lead.source,
        "campaign": lead.campaign,
        "trigger": lead.trigger,
    }


def lead_from_values(values: Mapping[str, Any] | None, lead_id: str) -> Lead:
    if not values:
        return Lead(lead_id=lead_id)
    return Lead(
        lead_id=lead_id,
        attributes=dict(values.get("attributes") or {}),
        email=values.get("email"),
        grade=values.get("grade"),
        source=values.get("source"),
        campaign=values.get("campaign"),
        trigger=values.get("trigger"),
    )


def skip_values(skipped: Sequence[Skip]) -> list[dict[str, Any]]:
    return [{"rep_id": each.rep_id, "reason": each.reason, "pool": each.pool} for each in skipped]


# --- the state routing decides on -----------------------------------------------------------


@dataclass
class Snapshot:
    """The routing file with the stored reps, their live state, and the time of decisions."""

    routing: RoutingFile
    state: RosterState
    now: datetime
    loaded: Mapping[str, Any]
    """The turns as read, to write back only what moved."""


class NotAssigned(LookupError):
    """There is no assignment to act on, or no such rep."""


class Dispatcher:
    def __init__(self, routing: RoutingFile, clock: Clock) -> None:
        self.routing = routing
        """The routing file as read at start: pools, rules, reason codes (reps come from the
        database)."""
        self._clock = clock
        self._emitter = Emitter(service="handoff", source="leadflow/handoff", clock=clock)

    async def snapshot(self, session: AsyncSession) -> Snapshot:
        """Lock routing for the transaction and read what it decides on."""
        await lock_routing(session)
        reps = await load_reps(session)
        turns = await load_turns(session)
        state = RosterState(open_leads=await open_leads(session), turns=turns)
        routing = self.routing.model_copy(update={"reps": tuple(reps)})
        return Snapshot(routing, state, self._clock.now(), turns)

    async def finish(self, session: AsyncSession, snapshot: Snapshot) -> None:
        """Store the turns the decisions moved."""
        await save_turns(session, snapshot.loaded, snapshot.state.turns)

    # --- a new MQL ------------------------------------------------------------------------

    async def route_mql(
        self, session: AsyncSession, snapshot: Snapshot, event_id: str, mql: LeadMqlData
    ) -> None:
        """Assign the MQL's cycle, or queue it; a cycle already handled is left alone."""
        if await self._handled(session, mql.lead_id, mql.cycle):
            return
        lead = lead_of_mql(mql)
        domain = account_domain(lead)
        owner = await owner_of(session, domain)
        decision = route(lead, snapshot.routing, snapshot.state, snapshot.now, account_owner=owner)
        if decision.queued:
            why: QueueWhy = "no_rule" if decision.rule is None else "nobody_available"
            self._enqueue(
                session, snapshot, lead, mql.cycle, 1, event_id, domain, why, decision=decision
            )
            return
        reason: AssignReason = "account_owner" if decision.reason == "account_owner" else "routed"
        self._assign(
            session,
            snapshot,
            lead=lead,
            cycle=mql.cycle,
            attempt=1,
            mql_event_id=event_id,
            domain=domain,
            decision=decision,
            reason=reason,
        )

    async def _handled(self, session: AsyncSession, lead_id: str, cycle: int) -> bool:
        if await session.get(QueueEntry, (lead_id, cycle)) is not None:
            return True
        query = select(Assignment.attempt).where(
            Assignment.lead_id == lead_id, Assignment.cycle == cycle
        )
        return await session.scalar(query.limit(1)) is not None

    # --- a revoked MQL --------------------------------------------------------------------

    async def close_revoked(
        self, session: AsyncSession, snapshot: Snapshot, revoked: LeadMqlRevokedData
    ) -> None:
        """The MQL no longer stands: its assignment is closed with the reason, a queued lead
        leaves the queue. One that was never made (the revocation came first) is recorded
        closed, so it is never made."""
        reason = revoked.reason.value + (f": {revoked.detail}" if revoked.detail else "")
        now = snapshot.now
        queued = await session.get(QueueEntry, (revoked.lead_id, revoked.cycle))
        assignment = await current(session, revoked.lead_id, revoked.cycle)
        if queued is not None:
            await session.delete(queued)
            session.add(_closed_placeholder(revoked, queued.attempt, reason, now))
        elif assignment is None:
            session.add(_closed_placeholder(revoked, 1, reason, now))
        elif assignment.status != REVOKED:
            self._close(assignment, REVOKED, reason, snapshot)

    # --- a missed deadline ----------------------------------------------------------------

    async def on_breach(self, session: AsyncSession, snapshot: Snapshot, sla: SlaEventData) -> None:
        """The rep missed the accept deadline of the current attempt (`sla.events` kind
        `breached` of its `accept` clock): per the pool's `on_breach`, reassign to the next
        rep (never one who missed it in this cycle), queue, or leave it, at most
        `max_reassignments` times. A breach of an earlier attempt or of another clock, or
        one already seen, changes nothing."""
        if sla.kind != "breached" or sla.clock not in (None, "accept"):
            return
        held = await current(session, sla.lead_id, sla.cycle)
        if (
            held is None
            or held.status != ASSIGNED
            or held.rep_id != sla.rep_id
            or not _times(held, sla)
            or held.breached_at is not None
        ):
            return
        earlier = [
            each for each in await attempts(session, sla.lead_id, sla.cycle) if each is not held
        ]
        held.breached_at = sla.at
        pool = snapshot.routing.pools.get(self._pool_of(held) or "")
        if pool is None or pool.on_breach == "none":
            return
        reassigned = sum(1 for each in earlier if each.breached_at is not None)
        if reassigned >= pool.max_reassignments:
            return
        missed = {each.rep_id for each in earlier if each.breached_at is not None} | {held.rep_id}
        self._close(held, REASSIGNED, f"missed the accept deadline ({sla.policy})", snapshot)
        lead = lead_from_values(held.lead, held.lead_id)
        if pool.on_breach == "queue":
            self._enqueue(
                session,
                snapshot,
                lead,
                held.cycle,
                held.attempt + 1,
                held.mql_event_id,
                held.account_domain,
                "breach",
                rule=held.routing_rule or None,
                exclude=missed,
            )
            return
        await self._reroute(
            session, snapshot, held, lead, reason="reassigned_after_breach", exclude=missed
        )

    def _pool_of(self, assignment: Assignment) -> str | None:
        """The pool whose `on_breach` applies: the one that dealt the lead, else its rule's."""
        if assignment.pool is not None:
            return assignment.pool
        rule = next((r for r in self.routing.rules if r.name == assignment.routing_rule), None)
        return None if rule is None else rule.pool

    async def _reroute(
        self,
        session: AsyncSession,
        snapshot: Snapshot,
        previous: Assignment,
        lead: Lead,
        *,
        reason: AssignReason,
        exclude: Collection[str],
        actor: str | None = None,
    ) -> Assignment | None:
        owner = await owner_of(session, previous.account_domain)
        decision = route(
            lead,
            snapshot.routing,
            snapshot.state,
            snapshot.now,
            account_owner=owner,
            exclude=exclude,
        )
        if decision.queued:
            self._enqueue(
                session,
                snapshot,
                lead,
                previous.cycle,
                previous.attempt + 1,
                previous.mql_event_id,
                previous.account_domain,
                "breach" if reason == "reassigned_after_breach" else "nobody_available",
                decision=decision,
                exclude=exclude,
            )
            return None
        return self._assign(
            session,
            snapshot,
            lead=lead,
            cycle=previous.cycle,
            attempt=previous.attempt + 1,
            mql_event_id=previous.mql_event_id,
            domain=previous.account_domain,
            decision=decision,
            reason=reason,
            actor=actor,
        )

    # --- by hand --------------------------------------------------------------------------

    async def reassign(
        self,
        session: AsyncSession,
        lead_id: str,
        cycle: int,
        *,
        to_rep: str | None,
        actor: str,
        note: str | None = None,
    ) -> Assignment | None:
        """Take the lead's current attempt from its rep and give it to `to_rep` (whatever
        their load or hours), or back through routing (not to the same rep; queued when
        nobody can take it: None). Takes the routing lock first: call it before locking
        anything else. Raises NotAssigned when the cycle has no attempt or `to_rep` is not
        a rep."""
        snapshot = await self.snapshot(session)
        held = await current(session, lead_id, cycle, for_update=True)
        if held is None:
            raise NotAssigned(f"lead {lead_id!r} has no assignment in cycle {cycle}")
        why = f"reassigned by {actor}" + (f": {note}" if note else "")
        lead = lead_from_values(held.lead, lead_id)
        if to_rep is None:
            self._close(held, REASSIGNED, why, snapshot)
            placed = await self._reroute(
                session, snapshot, held, lead, reason="manual", exclude={held.rep_id}, actor=actor
            )
            await self.finish(session, snapshot)
            return placed
        rep = snapshot.routing.rep(to_rep)
        if rep is None:
            raise NotAssigned(f"no rep {to_rep!r}")
        self._close(held, REASSIGNED, why, snapshot)
        decision = Decision(
            lead_id=lead_id,
            rep_id=rep.id,
            reason="manual",
            rule=held.routing_rule or None,
            pool=None,
            strategy=None,
            tried=(),
            skipped=(),
            turns=snapshot.state.turns,
        )
        return self._assign(
            session,
            snapshot,
            lead=lead,
            cycle=cycle,
            attempt=held.attempt + 1,
            mql_event_id=held.mql_event_id,
            domain=held.account_domain,
            decision=decision,
            reason="manual",
            actor=actor,
        )

    # --- the queue ------------------------------------------------------------------------

    async def drain(self, session: AsyncSession, snapshot: Snapshot) -> int:
        """Assign the queued leads someone can take now, oldest first; returns how many."""
        query = select(QueueEntry).order_by(
            QueueEntry.queued_at, QueueEntry.lead_id, QueueEntry.cycle
        )
        entries = list((await session.scalars(query)).all())
        if not entries:
            return 0
        domains = {entry.account_domain for entry in entries if entry.account_domain}
        owners: dict[str | None, str] = {}
        if domains:
            found = await session.execute(
                select(AccountOwner.domain, AccountOwner.rep_id).where(
                    among(session, AccountOwner.domain, domains)
                )
            )
            owners.update((domain, rep_id) for domain, rep_id in found.all())
        queued = [
            QueuedLead(
                lead=lead_from_values(entry.lead, entry.lead_id),
                queued_at=entry.queued_at,
                account_owner=owners.get(entry.account_domain),
                exclude=frozenset(entry.exclude),
            )
            for entry in entries
        ]
        drained = drain_queue(queued, snapshot.routing, snapshot.state, snapshot.now)
        waiting = {id(item) for item in drained.waiting}
        placed = [
            (entry, item)
            for entry, item in zip(entries, queued, strict=True)
            if id(item) not in waiting
        ]
        for (entry, item), decision in zip(placed, drained.decisions, strict=True):
            await session.delete(entry)
            self._assign(
                session,
                snapshot,
                lead=item.lead,
                cycle=entry.cycle,
                attempt=entry.attempt,
                mql_event_id=entry.mql_event_id,
                domain=entry.account_domain,
                decision=decision,
                reason="from_queue",
            )
        return len(drained.decisions)

    # --- recording ------------------------------------------------------------------------

    def _close(self, held: Assignment, status: str, reason: str, snapshot: Snapshot) -> None:
        if held.status == ASSIGNED:
            snapshot.state = snapshot.state.answered(held.rep_id)
        held.status, held.status_reason, held.closed_at = status, reason, snapshot.now

    def _assign(
        self,
        session: AsyncSession,
        snapshot: Snapshot,
        *,
        lead: Lead,
        cycle: int,
        attempt: int,
        mql_event_id: str,
        domain: str | None,
        decision: Decision,
        reason: AssignReason,
        actor: str | None = None,
    ) -> Assignment:
        assert decision.rep_id is not None
        rep = snapshot.routing.rep(decision.rep_id)
        assert rep is not None, "the router chose a rep of the roster"
        strategy = decision.strategy or ("manual" if reason == "manual" else "account_owner")
        row = Assignment(
            lead_id=lead.lead_id,
            cycle=cycle,
            attempt=attempt,
            rep_id=rep.id,
            rep_name=rep.name,
            rep_email=str(rep.email),
            routing_rule=decision.rule or "",
            strategy=strategy,
            pool=decision.pool,
            reason=reason,
            skipped=skip_values(decision.skipped),
            tried=list(decision.tried),
            lead=lead_values(lead),
            account_domain=domain,
            assigned_by=actor,
            status=ASSIGNED,
            mql_event_id=mql_event_id,
            assigned_at=snapshot.now,
        )
        session.add(row)
        snapshot.state = snapshot.state.assigned(decision)
        data = LeadAssignedData(
            lead_id=lead.lead_id,
            cycle=cycle,
            rep_id=rep.id,
            rep_name=rep.name,
            rep_email=str(rep.email),
            routing_rule=row.routing_rule,
            strategy=strategy,
            assigned_at=snapshot.now,
            mql_event_id=mql_event_id,
            pool=decision.pool,
            reason=reason,
            attempt=attempt,
        )
        self._emitter.emit(
            session,
            ASSIGNED_CONTRACT,
            event_id=assigned_event_id(lead.lead_id, cycle, attempt),
            time=snapshot.now,
            key=lead.lead_id,
            data=data,
        )
        return row

    def _enqueue(
        self,
        session: AsyncSession,
        snapshot: Snapshot,
        lead: Lead,
        cycle: int,
        attempt: int,
        mql_event_id: str,
        domain: str | None,
        why: QueueWhy,
        *,
        decision: Decision | None = None,
        rule: str | None = None,
        exclude: Collection[str] = (),
    ) -> None:
        session.add(
            QueueEntry(
                lead_id=lead.lead_id,
                cycle=cycle,
                attempt=attempt,
                mql_event_id=mql_event_id,
                lead=lead_values(lead),
                account_domain=domain,
                why=why,
                rule=decision.rule if decision is not None else rule,
                tried=list(decision.tried) if decision is not None else [],
                skipped=skip_values(decision.skipped) if decision is not None else [],
                exclude=sorted(exclude),
                queued_at=snapshot.now,
            )
        )


def _times(held: Assignment, sla: SlaEventData) -> bool:
    """Whether the SLA clock times this attempt: by the attempt it names, or (from an
    emitter that names none) by starting when the attempt was assigned."""
    if sla.attempt is not None:
        return sla.attempt == held.attempt
    return sla.started_at == held.assigned_at


def _closed_placeholder(
    revoked: LeadMqlRevokedData, attempt: int, reason: str, now: datetime
) -> Assignment:
    return Assignment(
        lead_id=revoked.lead_id,
        cycle=revoked.cycle,
        attempt=attempt,
        rep_id="",
        rep_name="",
        rep_email="",
        routing_rule="",
        strategy="",
        reason="routed",
        status=REVOKED,
        status_reason=reason,
        mql_event_id=revoked.mql_event_id,
        assigned_at=revoked.revoked_at,
        closed_at=now,
    )


async def queue_size(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(QueueEntry)) or 0
