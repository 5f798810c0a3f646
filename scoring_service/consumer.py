"""Applies `lead.activity` batches: identity stitching, the rulebook fold, the ledger, and the
`lead.scored` / `lead.mql` events (through the outbox).

Scoring is a fold over a lead's activities in event time (scoring_service.engine). An
activity newer than everything the lead has seen continues the stored fold; a late one, or a
merge of two leads, replays the lead's stored log, so the result never depends on the order
in which events arrived.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import ActivityData, LeadMqlData, LeadScoredData, RuleContribution
from schemas.registry import MQL, SCORED
from schemas.topics import LEAD_ACTIVITY
from scoring_service import engine, store
from scoring_service.engine import ActivityRecord, LeadState, Step
from scoring_service.models import Lead
from scoring_service.rulebooks import ActiveRulebook, RulebookCache
from services.clock import Clock
from services.codec import PoisonRecord, decode
from services.outbox import Emitter
from services.runner import ConcurrentChange, ConsumerSpec

ActivityEvent = CloudEvent[ActivityData]

QUALIFYING_STAGES = frozenset({"lead", "nurture"})


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


def source_of(data: ActivityData) -> str:
    """Where a lead came from: the UTM source if the activity carries one, else the channel."""
    campaign = data.context.get("campaign")
    if isinstance(campaign, dict) and campaign.get("source"):
        return str(campaign["source"])
    utm = data.properties.get("utm_source")
    return str(utm) if utm else data.channel


@dataclass(frozen=True, slots=True)
class IncomingActivity:
    """An activity as read from `lead.activity`: the parsed event and its envelope as received,
    which is what the activity log stores (no second serialization per event)."""

    event: ActivityEvent
    envelope: str


def parse_activity(topic: str, value: bytes | None) -> IncomingActivity:
    if topic != LEAD_ACTIVITY:
        raise PoisonRecord(f"scoring does not consume {topic}")
    event = decode(ActivityEvent, value)
    assert value is not None
    return IncomingActivity(event, value.decode())


@dataclass
class LeadWork:
    """One lead's share of a batch."""

    lead: Lead
    state: LeadState
    previous_score: float
    pending: list[ActivityRecord] = field(default_factory=list)
    replay: bool = False
    merged_ids: list[str] = field(default_factory=list)


@dataclass
class Stitching:
    """What a batch has learned about identities and leads while it is being stitched."""

    owners: dict[str, str]
    """identity key -> lead id (kept current through merges)"""
    leads: dict[str, Lead]
    work: dict[str, LeadWork] = field(default_factory=dict)
    new_keys: list[str] = field(default_factory=list)
    created: list[Lead] = field(default_factory=list)
    """Leads this batch creates: kept out of the session and inserted once scored, so each is
    written once instead of inserted now and updated after scoring."""

    def leads_named(self, keys: list[str]) -> list[str]:
        """The known leads these identity keys belong to, in id order."""
        return sorted({self.owners[key] for key in keys if key in self.owners})

    def work_for(self, lead: Lead) -> LeadWork:
        if lead.id not in self.work:
            self.work[lead.id] = LeadWork(
                lead=lead, state=state_of(lead), previous_score=lead.score
            )
        return self.work[lead.id]

    def final(self, lead: Lead) -> Lead:
        """Follow merges made earlier in this batch to the surviving lead."""
        while lead.merged_into is not None:
            lead = self.leads[lead.merged_into]
        return lead

    def new_identities(self) -> list[dict[str, str]]:
        return [{"key": key, "lead_id": self.owners[key]} for key in self.new_keys]


def state_of(lead: Lead) -> LeadState:
    return LeadState.from_json(lead.state) if lead.state else engine.initial_state()


class ActivityApplier:
    def __init__(self, rulebooks: RulebookCache, clock: Clock) -> None:
        self.rulebooks = rulebooks
        self._clock = clock
        self._emitter = Emitter(service="scoring", source="leadflow/scoring", clock=clock)

    def spec(self) -> ConsumerSpec[IncomingActivity]:
        return ConsumerSpec(
            name="scoring",
            group_id="scoring",
            topics=(LEAD_ACTIVITY,),
            parse=parse_activity,
            event_id=lambda incoming: incoming.event.id,
            handle=self.apply_batch,
            applied=store.logged_event_ids,
        )

    async def apply_batch(
        self, session: AsyncSession, incoming: Sequence[IncomingActivity]
    ) -> None:
        active = await self.rulebooks.active(session)
        events = [item.event for item in incoming]
        keys_by_event = [identity_keys(event.data) for event in events]
        owners = await store.owners_of(session, (key for keys in keys_by_event for key in keys))
        leads = await store.leads_for_update(session, owners.values())
        if any(lead.merged_into for lead in leads.values()):
            raise ConcurrentChange("a lead of this batch was merged by another worker")
        batch = Stitching(owners=owners, leads=leads)
        placed: list[Lead] = []
        for event, keys in zip(events, keys_by_event, strict=True):
            found = batch.leads_named(keys)
            if len(found) > 1:
                survivor = await self._merge_all(session, batch, found)
                lead = self._claim(batch, survivor, event, keys)
            else:
                lead = self._place(batch, found, event, keys, active)
            batch.work[lead.id].pending.append(
                ActivityRecord(event_id=event.id, time=event.time, activity=event.data)
            )
            placed.append(lead)
        # leads merged later in the batch hand their new identities and activities on
        await store.insert_activities(
            session,
            [
                store.activity_row(item.event, item.envelope, batch.final(lead).id)
                for item, lead in zip(incoming, placed, strict=True)
            ],
        )
        ledger = store.LedgerWrites()
        qualified = []
        scored = []
        # a replay reads the log; letting that flush the leads scored so far would write them
        # row by row, and write_leads writes them all in one statement anyway
        with session.no_autoflush:
            for item in batch.work.values():
                if item.lead.merged_into is None:
                    step = await self._score(session, item, active, ledger)
                    scored.append(item.lead)
                    if step is not None:
                        qualified.append((item.lead, step))
        await store.write_leads(session, scored, batch.created)
        await store.insert_identities(session, batch.new_identities())
        await ledger.write(session)
        await self._emit_mqls(session, qualified, active)

    async def _merge_all(self, session: AsyncSession, batch: Stitching, found: list[str]) -> Lead:
        """One activity names several leads: they are one person, merged into a survivor."""
        candidates = [batch.leads[lead_id] for lead_id in found]
        survivor = await self._survivor(session, candidates, batch.work)
        for other in candidates:
            if other is not survivor:
                await self._merge(session, batch, other, survivor)
        return survivor

    def _place(
        self,
        batch: Stitching,
        found: list[str],
        event: ActivityEvent,
        keys: list[str],
        active: ActiveRulebook,
    ) -> Lead:
        """The lead of an activity that names at most one known lead (nearly every activity,
        and no database round trip): that lead, or a new one."""
        if found:
            return self._claim(batch, batch.leads[found[0]], event, keys)
        lead = self._new_lead(lead_id_for(keys[0]), event, active)
        batch.leads[lead.id] = lead
        batch.created.append(lead)
        return self._claim(batch, lead, event, keys)

    @staticmethod
    def _claim(batch: Stitching, lead: Lead, event: ActivityEvent, keys: list[str]) -> Lead:
        """Record the activity's identities as the lead's, and its email if it had none."""
        for key in keys:
            if key not in batch.owners:
                batch.owners[key] = lead.id
                batch.new_keys.append(key)
        batch.work_for(lead)
        email = event.data.identity.email
        if email and not lead.email:
            lead.email = email.lower()
        return lead

    async def _survivor(
        self, session: AsyncSession, candidates: list[Lead], work: dict[str, LeadWork]
    ) -> Lead:
        """The lead whose history starts first in event time (ties: the smaller id), so the
        choice does not depend on the order in which workers saw the events."""
        if len(candidates) == 1:
            return candidates[0]
        first = await store.first_activity_times(session, [lead.id for lead in candidates])
        for lead in candidates:
            pending = work[lead.id].pending if lead.id in work else []
            times = [record.time for record in pending]
            if lead.id in first:
                times.append(first[lead.id])
            first[lead.id] = min(times) if times else datetime.max.replace(tzinfo=UTC)
        return min(candidates, key=lambda lead: (first[lead.id], lead.id))

    def _new_lead(self, lead_id: str, event: ActivityEvent, active: ActiveRulebook) -> Lead:
        now = self._clock.now()
        lead = Lead(
            id=lead_id,
            email=None,
            score=0.0,
            fit=0.0,
            engagement=0.0,
            stage="lead",
            mql_cycle=0,
            qualified_in_cycle=False,
            attributes={},
            state={},
            rulebook_version=active.version,
            created_at=now,
            updated_at=now,
            source=source_of(event.data),
        )
        return lead

    async def _merge(
        self, session: AsyncSession, batch: Stitching, merged: Lead, survivor: Lead
    ) -> None:
        """Fold `merged` into `survivor`: its identities and history move; its id points on."""
        await session.flush()
        await store.move_lead(session, merged.id, survivor.id)
        for key, owner in batch.owners.items():
            if owner == merged.id:
                batch.owners[key] = survivor.id
        for lead in batch.created:  # not stored yet, so move_lead did not repoint them
            if lead.merged_into == merged.id:
                lead.merged_into = survivor.id
        merged.merged_into = survivor.id
        _take_lifecycle(survivor, merged)
        merged.stage = "merged"
        merged.updated_at = self._clock.now()
        target = batch.work_for(survivor)
        target.replay = True
        target.merged_ids.append(merged.id)
        moved = batch.work.pop(merged.id, None)
        if moved is not None:
            target.pending.extend(moved.pending)
            target.merged_ids.extend(moved.merged_ids)
        merged.state = {}

    async def recycle(self, session: AsyncSession, lead: Lead, at: datetime, *, cause: str) -> None:
        """Return a lead to nurture: a new cycle, engagement per the rulebook's recycle policy."""
        active = await self.rulebooks.active(session)
        state = engine.recycle(active.rulebook, state_of(lead), at)
        item = LeadWork(lead=lead, state=state, previous_score=lead.score)
        lead.stage = "nurture"
        lead.qualified_in_cycle = False
        lead.owner_rep_id = lead.owner_name = None
        self._update_lead(lead, state, active)
        self._emit_scored(session, item, cause, active)

    async def rescore(
        self, session: AsyncSession, lead: Lead, active: ActiveRulebook, *, cause: str
    ) -> None:
        """Score a lead again from its stored log (after a rulebook change)."""
        item = LeadWork(lead=lead, state=state_of(lead), previous_score=lead.score, replay=True)
        ledger = store.LedgerWrites()
        step = await self._score(session, item, active, ledger, cause=cause)
        await ledger.write(session)
        await self._emit_mqls(session, [(lead, step)] if step else [], active)

    async def _score(
        self,
        session: AsyncSession,
        item: LeadWork,
        active: ActiveRulebook,
        ledger: store.LedgerWrites,
        *,
        cause: str | None = None,
    ) -> Step | None:
        """Fold the lead's new activities; returns the step that newly qualified it, if any."""
        pending = sorted(item.pending, key=lambda record: (record.time, record.event_id))
        replace = item.replay or not pending or not _continues(item.state, pending)
        if replace:
            log = await store.activity_log(session, item.lead.id)
            start = engine.initial_state(cycle_start=item.state.cycle_start)
            state, steps = engine.replay(active.rulebook, log, start=start)
        else:
            steps = []
            state = item.state
            for record in pending:
                step = engine.apply(active.rulebook, state, record)
                steps.append(step)
                state = step.state
        lines = [line for step in steps for line in step.lines]
        ledger.add(item.lead.id, lines, version=active.version, replace=replace)
        self._update_lead(item.lead, state, active)
        qualifying = next((step for step in steps if step.qualification), None)
        newly = qualifying is not None and not item.lead.qualified_in_cycle
        if newly:
            _start_cycle(item.lead)
        self._emit_scored(session, item, cause or pending[-1].event_id, active)
        return qualifying if newly else None

    async def _emit_mqls(
        self, session: AsyncSession, qualified: list[tuple[Lead, Step]], active: ActiveRulebook
    ) -> None:
        """One `lead.mql` per newly qualified lead, with its top rules from the written ledger."""
        if not qualified:
            return
        totals = await store.rule_totals(
            session, {lead.id: step.state.cycle_start for lead, step in qualified}
        )
        for lead, step in qualified:
            self._emit_mql(session, lead, step, active, engine.rank_rules(totals.get(lead.id, [])))

    def _update_lead(self, lead: Lead, state: LeadState, active: ActiveRulebook) -> None:
        at = state.last_time or self._clock.now()
        view = engine.snapshot(active.rulebook, state, at)
        lead.state = state.to_json()
        lead.attributes = dict(state.attributes)
        lead.fit, lead.engagement, lead.score = view.fit, view.engagement, view.total
        lead.grade = view.grade
        lead.disqualified_by = ", ".join(view.disqualified_by) or None
        lead.rulebook_version = active.version
        lead.last_activity_at = state.last_time
        lead.updated_at = self._clock.now()

    def _emit_mql(
        self,
        session: AsyncSession,
        lead: Lead,
        step: Step,
        active: ActiveRulebook,
        top_rules: list[tuple[str, float]],
    ) -> None:
        qualification = step.qualification
        assert qualification is not None
        view = engine.snapshot(active.rulebook, step.state, qualification.time)
        data = LeadMqlData(
            lead_id=lead.id,
            email=lead.email,
            cycle=lead.mql_cycle,
            score=view.total,
            fit=view.fit,
            engagement=view.engagement,
            grade=view.grade,
            reason=qualification.reason,
            trigger=qualification.trigger,
            rulebook_version=active.version,
            qualified_at=qualification.time,
            top_rules=_wire(top_rules),
        )
        self._emitter.emit(
            session,
            MQL,
            event_id=f"mql:{lead.id}:{lead.mql_cycle}",
            time=qualification.time,
            key=lead.id,
            data=data,
        )

    def _emit_scored(
        self, session: AsyncSession, item: LeadWork, cause_event_id: str, active: ActiveRulebook
    ) -> None:
        lead = item.lead
        data = LeadScoredData(
            lead_id=lead.id,
            score=lead.score,
            previous_score=item.previous_score,
            fit=lead.fit,
            engagement=lead.engagement,
            grade=lead.grade,
            stage=lead.stage,
            mql_cycle=lead.mql_cycle,
            rulebook_version=active.version,
            cause_event_id=cause_event_id,
            merged_ids=item.merged_ids,
        )
        time = lead.last_activity_at or self._clock.now()
        self._emitter.emit(
            session,
            SCORED,
            event_id=f"scored:{lead.id}:{cause_event_id}",
            time=time,
            key=lead.id,
            data=data,
        )


def _take_lifecycle(survivor: Lead, merged: Lead) -> None:
    """The survivor keeps whichever of the two is further along in qualification."""
    if (merged.mql_cycle, merged.qualified_in_cycle) > (
        survivor.mql_cycle,
        survivor.qualified_in_cycle,
    ):
        survivor.mql_cycle, survivor.qualified_in_cycle = merged.mql_cycle, True
        survivor.stage = merged.stage
        survivor.owner_rep_id, survivor.owner_name = merged.owner_rep_id, merged.owner_name
    survivor.email = survivor.email or merged.email


def _start_cycle(lead: Lead) -> None:
    lead.mql_cycle += 1
    lead.qualified_in_cycle = True
    if lead.stage in QUALIFYING_STAGES:
        lead.stage = "mql"


def _continues(state: LeadState, pending: Sequence[ActivityRecord]) -> bool:
    """Whether the pending activities all come after what the stored fold has seen."""
    last = state.last_key
    return last is None or (pending[0].time, pending[0].event_id) > last


def _wire(items: Sequence[tuple[str, float]]) -> list[RuleContribution]:
    return [RuleContribution(rule=rule, points=points) for rule, points in items]
