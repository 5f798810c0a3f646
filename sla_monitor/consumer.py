"""The SLA monitor's consumer: starts, ends and cancels clocks from what the other services
tell (warnings and breaches are the scheduler's, `sla_monitor.scheduler`).

* `lead.mql`: the MQL's details are kept (`sla_cycles`): targets are chosen by them.
* `lead.assigned`: starts the attempt's `accept` and `first_touch` clocks; a reassignment
  (the next attempt) cancels the open clocks of the rep before (`qualify` included).
* `lead.status`: the rep's actions end clocks (accepted or rejected: `accept`; contacted:
  `first_touch`; converted, rejected or recycled: `qualify`) and an acceptance starts
  `qualify`; recycling cancels what still runs.
* `lead.mql_revoked`: the MQL no longer stands: its cycle's clocks are cancelled, and an
  assignment still on its way starts none.

Topics are read in whatever order their partitions deliver, so a fact that comes before the
clock it concerns is kept on the cycle, and a clock started later follows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import (
    LeadAssignedData,
    LeadMqlData,
    LeadMqlRevokedData,
    LeadStatusData,
)
from schemas.topics import LEAD_ASSIGNED, LEAD_MQL, LEAD_STATUS
from services.clock import Clock
from services.codec import PoisonRecord, decode, decode_either
from services.conditions import with_derived
from services.runner import ConsumerSpec
from sla_monitor.clocks import ClockBook, Start
from sla_monitor.lifecycle import ClockName, Happening
from sla_monitor.models import SlaClock, SlaCycle
from sla_monitor.policy import SlaPolicy

AssignedEvent = CloudEvent[LeadAssignedData]
MqlEvent = CloudEvent[LeadMqlData]
RevokedEvent = CloudEvent[LeadMqlRevokedData]
StatusEvent = CloudEvent[LeadStatusData]
SlaInput = AssignedEvent | MqlEvent | RevokedEvent | StatusEvent

Effect = Literal["answer", "cancel"]

EFFECTS: dict[str, dict[ClockName, Effect]] = {
    "accepted": {ClockName.ACCEPT: "answer"},
    "rejected": {
        ClockName.ACCEPT: "answer",
        ClockName.FIRST_TOUCH: "cancel",
        ClockName.QUALIFY: "answer",
    },
    "contacted": {ClockName.FIRST_TOUCH: "answer"},
    "converted": {
        ClockName.ACCEPT: "answer",
        ClockName.FIRST_TOUCH: "answer",
        ClockName.QUALIFY: "answer",
    },
    "recycled": {
        ClockName.ACCEPT: "cancel",
        ClockName.FIRST_TOUCH: "cancel",
        ClockName.QUALIFY: "answer",
    },
}
"""What each rep action does to each clock of the cycle: answer it (met, or met_late after
the deadline) or cancel it (no answer is owed any more). A conversion answers every clock
(a converted lead was accepted and touched); a rejection ends `qualify` too."""

ASSIGNMENT_CLOCKS = (ClockName.ACCEPT, ClockName.FIRST_TOUCH)


def parse_sla_input(topic: str, value: bytes | None) -> SlaInput:
    if topic == LEAD_ASSIGNED:
        return decode(AssignedEvent, value)
    if topic == LEAD_MQL:
        return decode_either(RevokedEvent, MqlEvent, value)
    if topic == LEAD_STATUS:
        return decode(StatusEvent, value)
    raise PoisonRecord(f"sla monitor does not consume {topic}")


def mql_facts(mql: LeadMqlData) -> dict[str, Any]:
    """What targets' `when` can name, from the MQL: its details (with `email_domain`), and
    its grade, source, trigger and score."""
    facts = dict(with_derived(mql.attributes))
    if mql.email and "email" not in facts:
        facts = dict(with_derived({**facts, "email": mql.email}))
    named = {
        "grade": mql.grade,
        "source": mql.source,
        "trigger": mql.trigger,
        "score": mql.score,
        "fit": mql.fit,
        "engagement": mql.engagement,
        "qualified_by": mql.reason,
    }
    facts.update({name: value for name, value in named.items() if value is not None})
    return facts


def _replaced(row: SlaClock, assigned: LeadAssignedData) -> bool:
    """Whether a new attempt takes over an open clock: the earlier attempts' accept and
    first_touch, and a qualify clock the previous rep was running."""
    if row.clock == ClockName.QUALIFY:
        return row.started_at < assigned.assigned_at
    return row.attempt < assigned.attempt


def assigned_team(assigned: LeadAssignedData) -> str | None:
    """The rep's team, once `lead.assigned` carries it."""
    team = getattr(assigned, "team", None)
    return team if isinstance(team, str) else None


class SlaConsumer:
    def __init__(self, policy: SlaPolicy, clock: Clock) -> None:
        self.policy = policy
        self.book = ClockBook(policy, clock)

    def spec(self) -> ConsumerSpec[SlaInput]:
        return ConsumerSpec(
            name="sla",
            group_id="sla",
            topics=(LEAD_ASSIGNED, LEAD_MQL, LEAD_STATUS),
            parse=parse_sla_input,
            event_id=lambda event: event.id,
            handle=self.apply_batch,
        )

    async def apply_batch(self, session: AsyncSession, events: Sequence[SlaInput]) -> None:
        # an assignment may be read before its MQL when both are in one batch
        for event in events:
            if isinstance(event.data, LeadMqlData):
                await self.record_mql(session, event.data, event.id)
        for event in events:
            data = event.data
            if isinstance(data, LeadAssignedData):
                await self.assigned(session, data, event.id)
            elif isinstance(data, LeadStatusData):
                await self.status(session, data, event.id)
            elif isinstance(data, LeadMqlRevokedData):
                await self.revoked(session, data, event.id)

    async def _cycle(self, session: AsyncSession, lead_id: str, cycle: int) -> SlaCycle:
        """The cycle's record, locked for this transaction (created when new)."""
        found = await session.get(SlaCycle, (lead_id, cycle), with_for_update=True)
        if found is None:
            found = SlaCycle(lead_id=lead_id, cycle=cycle, facts={}, attempt=0, actions={})
            session.add(found)
        return found

    async def record_mql(self, session: AsyncSession, mql: LeadMqlData, event_id: str) -> None:
        cycle = await self._cycle(session, mql.lead_id, mql.cycle)
        cycle.mql_event_id, cycle.qualified_at = event_id, mql.qualified_at
        cycle.grade, cycle.source = mql.grade, mql.source
        cycle.facts = mql_facts(mql)

    def facts(self, cycle: SlaCycle) -> dict[str, Any]:
        """The MQL's details and the current assignment's pool, team and rep."""
        assignment = {"pool": cycle.pool, "team": cycle.team, "rep": cycle.rep_id}
        return {
            **cycle.facts,
            **{name: value for name, value in assignment.items() if value is not None},
        }

    # --- assignments ----------------------------------------------------------------------

    async def assigned(self, session: AsyncSession, assigned: LeadAssignedData, cause: str) -> None:
        cycle = await self._cycle(session, assigned.lead_id, assigned.cycle)
        if assigned.attempt <= cycle.attempt:
            return  # an attempt already seen, or one a later attempt replaced
        cycle.attempt, cycle.assigned_at = assigned.attempt, assigned.assigned_at
        cycle.rep_id, cycle.pool, cycle.team = (
            assigned.rep_id,
            assigned.pool,
            assigned_team(assigned),
        )
        for row in await self.book.open_clocks(session, assigned.lead_id, assigned.cycle):
            if _replaced(row, assigned):
                self.book.move(
                    session,
                    row,
                    Happening.CANCELLED,
                    at=max(assigned.assigned_at, row.started_at),
                    reason=f"reassigned to {assigned.rep_id}",
                    cause=cause,
                )
        if cycle.revoked_at is not None:
            return  # the MQL no longer stands: no follow-up is owed
        start = Start(
            lead_id=assigned.lead_id,
            cycle=assigned.cycle,
            attempt=assigned.attempt,
            started_at=assigned.assigned_at,
            rep_id=assigned.rep_id,
            team=cycle.team,
            pool=assigned.pool,
            cause_event_id=cause,
        )
        facts = self.facts(cycle)
        started: list[SlaClock] = []
        for name in ASSIGNMENT_CLOCKS:
            terms = self.policy.terms_for(name, facts)
            if terms is not None:
                new = await self.book.start(session, terms, start)
                if new is not None:
                    started.append(new)
        self._follow_known_actions(session, cycle, started)

    def _follow_known_actions(
        self, session: AsyncSession, cycle: SlaCycle, started: list[SlaClock]
    ) -> None:
        """Rep actions read before this assignment (on another topic) that belong to it."""
        for action, known in sorted(cycle.actions.items(), key=lambda item: item[1]["at"]):
            at = datetime.fromisoformat(known["at"])
            for row in started:
                if at >= row.started_at:
                    effect = EFFECTS.get(action, {}).get(ClockName(row.clock))
                    if effect is not None:
                        self._apply(session, row, effect, action, at, known)

    # --- rep actions ----------------------------------------------------------------------

    async def status(self, session: AsyncSession, status: LeadStatusData, cause: str) -> None:
        effects = EFFECTS.get(status.status)
        if effects is None:
            return  # an action that times no clock
        cycle = await self._cycle(session, status.lead_id, status.cycle)
        known = {
            "at": status.at.isoformat(),
            "reason": status.reason,
            "rep_id": status.rep_id,
            "event_id": cause,
        }
        if status.status not in cycle.actions:
            cycle.actions = {**cycle.actions, status.status: known}
        for row in await self.book.open_clocks(
            session, status.lead_id, status.cycle, list(effects)
        ):
            self._apply(
                session, row, effects[ClockName(row.clock)], status.status, status.at, known
            )
        if status.status == "accepted" and cycle.revoked_at is None:
            await self._start_qualify(session, cycle, status, cause)

    def _apply(
        self,
        session: AsyncSession,
        row: SlaClock,
        effect: Effect,
        action: str,
        at: datetime,
        known: dict[str, Any],
    ) -> None:
        at = max(at, row.started_at)
        if effect == "answer":
            self.book.move(
                session,
                row,
                Happening.ANSWERED,
                at=at,
                reason=known.get("reason"),
                action=action,
                cause=known.get("event_id"),
            )
        else:
            self.book.move(
                session, row, Happening.CANCELLED, at=at, reason=action, cause=known.get("event_id")
            )

    async def _start_qualify(
        self, session: AsyncSession, cycle: SlaCycle, status: LeadStatusData, cause: str
    ) -> None:
        """An acceptance starts `qualify`, unless one still runs for the cycle."""
        if await self.book.open_clocks(session, status.lead_id, status.cycle, [ClockName.QUALIFY]):
            return
        terms = self.policy.terms_for(ClockName.QUALIFY, self.facts(cycle))
        if terms is None:
            return
        attempt = 1 + await self.book.latest_attempt(
            session, status.lead_id, status.cycle, ClockName.QUALIFY
        )
        start = Start(
            lead_id=status.lead_id,
            cycle=status.cycle,
            attempt=attempt,
            started_at=status.at,
            rep_id=status.rep_id or cycle.rep_id,
            team=cycle.team,
            pool=cycle.pool,
            cause_event_id=cause,
        )
        await self.book.start(session, terms, start)

    # --- revocations ----------------------------------------------------------------------

    async def revoked(self, session: AsyncSession, revoked: LeadMqlRevokedData, cause: str) -> None:
        """The MQL no longer stands, so sales owes no follow-up: the cycle's clocks are
        cancelled with the reason, and an assignment still on its way starts none."""
        reason = revoked.reason.value + (f": {revoked.detail}" if revoked.detail else "")
        cycle = await self._cycle(session, revoked.lead_id, revoked.cycle)
        if cycle.revoked_at is None:
            cycle.revoked_at, cycle.revoked_reason = revoked.revoked_at, reason
        for row in await self.book.open_clocks(session, revoked.lead_id, revoked.cycle):
            self.book.move(
                session,
                row,
                Happening.CANCELLED,
                at=max(revoked.revoked_at, row.started_at),
                reason=reason,
                cause=cause,
            )
