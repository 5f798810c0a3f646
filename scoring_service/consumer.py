"""Applies `lead.activity` to lead state and emits `lead.scored` and `lead.mql` via the outbox."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import ActivityData, LeadMqlData, LeadScoredData, RuleContribution
from schemas.registry import MQL, SCORED
from schemas.topics import LEAD_ACTIVITY
from scoring_service.models import Activity, Lead, LeadIdentity, LedgerEntry
from scoring_service.rules import Contribution, Outcome, Rulebook, evaluate, top_contributions
from services.clock import Clock
from services.codec import decode
from services.outbox import Emitter
from services.runner import ConsumerSpec, PoisonRecord

ActivityEvent = CloudEvent[ActivityData]


def lead_id_for(identity_key: str) -> str:
    """A stable lead id derived from the first identity seen, so replays give the same ids."""
    return "ld_" + hashlib.sha256(identity_key.encode()).hexdigest()[:24]


def identity_keys(data: ActivityData) -> list[str]:
    identity = data.identity
    keys = []
    if identity.email:
        keys.append(f"email:{identity.email.lower()}")
    if identity.user_id:
        keys.append(f"user:{identity.user_id}")
    if identity.anonymous_id:
        keys.append(f"anon:{identity.anonymous_id}")
    return keys


def parse_activity(topic: str, value: bytes | None) -> ActivityEvent:
    if topic != LEAD_ACTIVITY:
        raise PoisonRecord(f"scoring does not consume {topic}")
    return decode(ActivityEvent, value)


class ActivityApplier:
    def __init__(self, rulebook: Rulebook, clock: Clock) -> None:
        self.rulebook = rulebook
        self._clock = clock
        self._emitter = Emitter(service="scoring", source="leadflow/scoring", clock=clock)

    def spec(self) -> ConsumerSpec[ActivityEvent]:
        return ConsumerSpec(
            name="scoring",
            group_id="scoring",
            topics=(LEAD_ACTIVITY,),
            parse=parse_activity,
            event_id=lambda event: event.id,
            handle=self.apply_batch,
        )

    async def apply_batch(self, session: AsyncSession, events: Sequence[ActivityEvent]) -> None:
        for event in events:
            await self.apply(session, event)

    async def apply(self, session: AsyncSession, event: ActivityEvent) -> None:
        data = event.data
        lead = await self._resolve_lead(session, data, event)
        session.add(
            Activity(
                event_id=event.id,
                lead_id=lead.id,
                activity_type=data.activity_type.value,
                event_time=event.time,
                envelope=event.model_dump(mode="json"),
            )
        )
        if data.attributes:
            lead.attributes = {**lead.attributes, **data.attributes}
        if data.identity.email and not lead.email:
            lead.email = data.identity.email.lower()
        outcome = evaluate(self.rulebook, data, score=lead.score, qualified=lead.qualified_in_cycle)
        previous = lead.score
        self._record(session, lead, event, outcome)
        self._emit_scored(session, lead, event, outcome, previous)
        if outcome.qualification is not None:
            await self._qualify(session, lead, event, outcome)

    async def _resolve_lead(
        self, session: AsyncSession, data: ActivityData, event: ActivityEvent
    ) -> Lead:
        keys = identity_keys(data)
        known = (
            await session.scalars(select(LeadIdentity).where(LeadIdentity.key.in_(keys)))
        ).all()
        by_key = {identity.key: identity.lead_id for identity in known}
        lead_id = next((by_key[key] for key in keys if key in by_key), None)
        now = self._clock.now()
        lead = await session.get(Lead, lead_id) if lead_id else None
        if lead is None:
            lead = Lead(
                id=lead_id_for(keys[0]),
                email=data.identity.email,
                score=0.0,
                stage="lead",
                mql_cycle=0,
                qualified_in_cycle=False,
                attributes={},
                rulebook_version=self.rulebook.version,
                created_at=now,
                updated_at=now,
            )
            session.add(lead)
            await session.flush()  # rows below reference it; no ORM relationship orders them
        for key in keys:
            if key not in by_key:
                session.add(LeadIdentity(key=key, lead_id=lead.id))
        lead.updated_at = now
        if lead.last_activity_at is None or event.time > lead.last_activity_at:
            lead.last_activity_at = event.time
        return lead

    def _record(
        self, session: AsyncSession, lead: Lead, event: ActivityEvent, outcome: Outcome
    ) -> None:
        for item in outcome.contributions:
            session.add(
                LedgerEntry(
                    lead_id=lead.id,
                    event_id=event.id,
                    rule=item.rule,
                    points=item.points,
                    event_time=event.time,
                    rulebook_version=self.rulebook.version,
                )
            )
        lead.score = outcome.score
        lead.rulebook_version = self.rulebook.version

    def _emit_scored(
        self,
        session: AsyncSession,
        lead: Lead,
        event: ActivityEvent,
        outcome: Outcome,
        previous: float,
    ) -> None:
        stage = "mql" if outcome.qualification else lead.stage
        data = LeadScoredData(
            lead_id=lead.id,
            score=outcome.score,
            previous_score=previous,
            stage=stage,
            mql_cycle=lead.mql_cycle + (1 if outcome.qualification else 0),
            rulebook_version=self.rulebook.version,
            cause_event_id=event.id,
            contributions=_wire(outcome.contributions),
        )
        self._emitter.emit(
            session, SCORED, event_id=f"scored:{event.id}", time=event.time, key=lead.id, data=data
        )

    async def _qualify(
        self, session: AsyncSession, lead: Lead, event: ActivityEvent, outcome: Outcome
    ) -> None:
        assert outcome.qualification is not None
        lead.mql_cycle += 1
        lead.qualified_in_cycle = True
        lead.stage = "mql"
        ledger = (
            await session.scalars(select(LedgerEntry).where(LedgerEntry.lead_id == lead.id))
        ).all()
        top = top_contributions([Contribution(row.rule, row.points) for row in ledger])
        data = LeadMqlData(
            lead_id=lead.id,
            email=lead.email,
            cycle=lead.mql_cycle,
            score=lead.score,
            reason="trigger" if outcome.qualification.trigger else "threshold",
            trigger=outcome.qualification.trigger,
            rulebook_version=self.rulebook.version,
            qualified_at=event.time,
            top_rules=_wire(top),
        )
        self._emitter.emit(
            session,
            MQL,
            event_id=f"mql:{lead.id}:{lead.mql_cycle}",
            time=event.time,
            key=lead.id,
            data=data,
        )


def _wire(items: Sequence[Contribution]) -> list[RuleContribution]:
    return [RuleContribution(rule=item.rule, points=item.points) for item in items]
