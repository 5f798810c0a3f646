"""Applies `lead.activity` batches: identity stitching, the rulebook fold, the ledger, and the
`lead.scored` / `lead.mql` / `lead.mql_revoked` events (through the outbox).

Scoring is a fold over a lead's activities in event time (scoring_service.engine). An
activity newer than everything the lead has seen continues the stored fold; a late one, or a
merge of two leads, replays the lead's stored log, so scores never depend on the order in
which events arrived. Lead ids come from identity keys alone (scoring_service.identity), and
what is announced follows the fold after an allowed lateness (scoring_service.announcing),
so neither do lead ids or the MQLs that stand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import (
    ActivityData,
    LeadMqlData,
    LeadMqlRevokedData,
    LeadScoredData,
    RevocationReason,
    RuleContribution,
)
from schemas.registry import MQL, MQL_REVOKED, SCORED
from schemas.topics import LEAD_ACTIVITY
from scoring_service import engine, store
from scoring_service.announcing import (
    Announcement,
    Told,
    decide,
    mql_event_id,
    parse_mql_event_id,
    revocation_event_id,
)
from scoring_service.engine import ActivityRecord, LeadState, Qualification
from scoring_service.identity import identity_keys, target_lead
from scoring_service.models import Lead
from scoring_service.rulebooks import ActiveRulebook, RulebookCache
from services.clock import Clock
from services.codec import PoisonRecord, decode
from services.faults import ConcurrentChange
from services.outbox import Emitter
from services.runner import ConsumerSpec

ActivityEvent = CloudEvent[ActivityData]

QUALIFYING_STAGES = frozenset({"lead", "nurture"})


@dataclass(frozen=True, slots=True)
class IncomingActivity:
    """An activity as read from `lead.activity`: the parsed event and its envelope as received,
    which is what the activity log stores (no second serialization per event)."""

    event: ActivityEvent
    envelope: str
    keys: tuple[str, ...]


def parse_activity(topic: str, value: bytes | None) -> IncomingActivity:
    if topic != LEAD_ACTIVITY:
        raise PoisonRecord(f"scoring does not consume {topic}")
    event = decode(ActivityEvent, value)
    assert value is not None
    keys = tuple(identity_keys(event.data))
    if not keys:
        raise PoisonRecord("invalid event: data.identity names no email, user id or anonymous id")
    return IncomingActivity(event, value.decode(), keys)


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

    def leads_named(self, keys: Sequence[str]) -> list[str]:
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


def standing_mql(lead: Lead) -> str | None:
    """The id of the `lead.mql` that stands for the lead's current cycle, if one does
    (leads scored before ids were kept have only the flag)."""
    if lead.mql_event_id is not None:
        return lead.mql_event_id
    return mql_event_id(lead.id, lead.mql_cycle) if lead.qualified_in_cycle else None


@dataclass
class Announcements:
    """MQLs decided in a transaction, emitted once the ledger they cite is written."""

    due: list[tuple[Lead, Qualification, LeadState]] = field(default_factory=list)


class ActivityApplier:
    def __init__(
        self, rulebooks: RulebookCache, clock: Clock, *, mql_hold: timedelta = timedelta(0)
    ) -> None:
        self.rulebooks = rulebooks
        self._clock = clock
        self._hold = mql_hold
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
        owners = await store.owners_of(session, (key for item in incoming for key in item.keys))
        leads = await store.leads_for_update(session, owners.values())
        if any(lead.merged_into for lead in leads.values()):
            raise ConcurrentChange("a lead of this batch was merged by another worker")
        batch = Stitching(owners=owners, leads=leads)
        placed: list[Lead] = []
        for item in incoming:
            event = item.event
            lead = await self._place(session, batch, event, item.keys, active)
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
        announcements = Announcements()
        scored = []
        # a replay reads the log; letting that flush the leads scored so far would write them
        # row by row, and write_leads writes them all in one statement anyway
        with session.no_autoflush:
            for work in batch.work.values():
                if work.lead.merged_into is None:
                    state = await self._score(session, work, active, ledger)
                    self._announce(session, work.lead, state, announcements, hold=self._hold)
                    self._emit_scored(session, work, _latest(work.pending), active)
                    scored.append(work.lead)
        await store.write_leads(session, scored, batch.created)
        await store.insert_identities(session, batch.new_identities())
        await ledger.write(session)
        await self._emit_mqls(session, announcements, active)

    async def promote_due(self, session: AsyncSession, now: datetime, limit: int) -> int:
        """Announce the held qualifications whose allowed lateness has passed; returns how
        many went out. Leads another worker holds are left for the next round."""
        leads = await store.due_leads(session, now, limit)
        if not leads:
            return 0
        active = await self.rulebooks.active(session)
        announcements = Announcements()
        for lead in leads:
            self._announce(session, lead, state_of(lead), announcements, hold=self._hold)
        await session.flush()
        await self._emit_mqls(session, announcements, active)
        return len(announcements.due)

    async def _place(
        self,
        session: AsyncSession,
        batch: Stitching,
        event: ActivityEvent,
        keys: Sequence[str],
        active: ActiveRulebook,
    ) -> Lead:
        """The lead an activity belongs to: the one lead it names when it brings no new
        identity (nearly every activity, and no database round trip); otherwise the lead
        with the smallest id among those it names and those its new keys would make, which
        the others are merged into."""
        named = batch.leads_named(keys)
        new_keys = [key for key in keys if key not in batch.owners]
        if len(named) == 1 and not new_keys:
            return self._claim(batch, batch.leads[named[0]], event, keys)
        target = target_lead(named, new_keys)
        survivor = batch.leads.get(target)
        if survivor is None:
            survivor = self._new_lead(target, active)
            batch.leads[target] = survivor
            batch.created.append(survivor)
        for lead_id in named:
            if lead_id != target:
                await self._merge(session, batch, batch.leads[lead_id], survivor)
        return self._claim(batch, survivor, event, keys)

    @staticmethod
    def _claim(batch: Stitching, lead: Lead, event: ActivityEvent, keys: Sequence[str]) -> Lead:
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

    def _new_lead(self, lead_id: str, active: ActiveRulebook) -> Lead:
        now = self._clock.now()
        return Lead(
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
        )

    async def _merge(
        self, session: AsyncSession, batch: Stitching, merged: Lead, survivor: Lead
    ) -> None:
        """Fold `merged` into `survivor`: its identities and history move; its id points on.
        The survivor may be a lead this batch creates: the identities' reference to it is
        checked at commit, after it was inserted."""
        await session.flush()
        await store.move_lead(session, merged.id, survivor.id)
        for key, owner in batch.owners.items():
            if owner == merged.id:
                batch.owners[key] = survivor.id
        for lead in batch.created:  # not stored yet, so move_lead did not repoint them
            if lead.merged_into == merged.id:
                lead.merged_into = survivor.id
        merged.merged_into = survivor.id
        self._take_lifecycle(session, survivor, merged)
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

    def _take_lifecycle(self, session: AsyncSession, survivor: Lead, merged: Lead) -> None:
        """One person keeps one standing MQL: the survivor's own if it has one (the merged
        lead's is revoked as a duplicate), else the merged lead's with its stage and owner.
        Whether it still stands is decided once the survivor is scored on the joint log."""
        survivor.email = survivor.email or merged.email
        survivor.mql_cycle = max(survivor.mql_cycle, merged.mql_cycle)
        merged_mql = standing_mql(merged)
        if merged_mql is not None:
            if standing_mql(survivor) is None:
                survivor.mql_event_id, survivor.qualified_in_cycle = merged_mql, True
                survivor.stage = merged.stage
                survivor.owner_rep_id, survivor.owner_name = merged.owner_rep_id, merged.owner_name
            elif merged.stage == "mql":
                self._emit_revoked(
                    session, merged_mql, survivor.id, RevocationReason.DUPLICATE, None
                )
        merged.mql_event_id, merged.qualified_in_cycle, merged.mql_due_at = None, False, None

    async def recycle(self, session: AsyncSession, lead: Lead, at: datetime, *, cause: str) -> None:
        """Return a lead to nurture: a new cycle, engagement per the rulebook's recycle policy."""
        active = await self.rulebooks.active(session)
        state = engine.recycle(active.rulebook, state_of(lead), at)
        item = LeadWork(lead=lead, state=state, previous_score=lead.score)
        lead.stage = "nurture"
        lead.qualified_in_cycle = False
        lead.mql_event_id = lead.mql_due_at = None
        lead.owner_rep_id = lead.owner_name = None
        self._update_lead(lead, state, active)
        self._emit_scored(session, item, cause, active)

    async def rescore(
        self, session: AsyncSession, lead: Lead, active: ActiveRulebook, *, cause: str
    ) -> None:
        """Score a lead again from its stored log (after a rulebook change). A lead that now
        qualifies is announced at once; one that no longer would keeps its standing MQL,
        which was right under the rules it was announced by."""
        item = LeadWork(lead=lead, state=state_of(lead), previous_score=lead.score, replay=True)
        ledger = store.LedgerWrites()
        state = await self._score(session, item, active, ledger)
        announcements = Announcements()
        self._announce(session, lead, state, announcements, hold=timedelta(0), revoke=False)
        self._emit_scored(session, item, cause, active)
        await ledger.write(session)
        await self._emit_mqls(session, announcements, active)

    async def _score(
        self,
        session: AsyncSession,
        item: LeadWork,
        active: ActiveRulebook,
        ledger: store.LedgerWrites,
    ) -> LeadState:
        """Fold the lead's new activities (or replay its log) and update the lead's scores."""
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
        return state

    def _announce(
        self,
        session: AsyncSession,
        lead: Lead,
        state: LeadState,
        announcements: Announcements,
        *,
        hold: timedelta,
        revoke: bool = True,
    ) -> None:
        """Bring what the world was told about the lead in line with its fold."""
        standing = standing_mql(lead)
        told = Told(
            standing=standing is not None,
            due_at=lead.mql_due_at,
            revocable=revoke and lead.stage == "mql",
        )
        decision = decide(state.qualification is not None, told, self._clock.now(), hold)
        lead.mql_due_at = decision.due_at if decision.action is Announcement.HOLD else None
        if decision.action is Announcement.ANNOUNCE:
            assert state.qualification is not None
            _start_cycle(lead)
            announcements.due.append((lead, state.qualification, state))
        elif decision.action is Announcement.REVOKE:
            assert standing is not None
            reason, detail = _why_not_qualified(state)
            self._emit_revoked(session, standing, lead.id, reason, detail)
            lead.mql_event_id, lead.qualified_in_cycle = None, False
            lead.stage = "nurture" if state.cycle_start is not None else "lead"
            lead.owner_rep_id = lead.owner_name = None

    async def _emit_mqls(
        self, session: AsyncSession, announcements: Announcements, active: ActiveRulebook
    ) -> None:
        """One `lead.mql` per announced lead, with its top rules from the written ledger."""
        if not announcements.due:
            return
        totals = await store.rule_totals(
            session, {lead.id: state.cycle_start for lead, _, state in announcements.due}
        )
        for lead, qualification, state in announcements.due:
            top_rules = engine.rank_rules(totals.get(lead.id, []))
            self._emit_mql(session, lead, qualification, state, active, top_rules)

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
        lead.source = state.source
        lead.email = _email_of(state) or lead.email
        lead.updated_at = self._clock.now()

    def _emit_mql(
        self,
        session: AsyncSession,
        lead: Lead,
        qualification: Qualification,
        state: LeadState,
        active: ActiveRulebook,
        top_rules: list[tuple[str, float]],
    ) -> None:
        view = engine.snapshot(active.rulebook, state, qualification.time)
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
        assert lead.mql_event_id is not None
        self._emitter.emit(
            session,
            MQL,
            event_id=lead.mql_event_id,
            time=qualification.time,
            key=lead.id,
            data=data,
        )

    def _emit_revoked(
        self,
        session: AsyncSession,
        mql_id: str,
        current_lead_id: str,
        reason: RevocationReason,
        detail: str | None,
    ) -> None:
        """Revoke a standing `lead.mql`, keyed like it so it follows it on its partition."""
        mql_lead, cycle = parse_mql_event_id(mql_id)
        now = self._clock.now()
        data = LeadMqlRevokedData(
            lead_id=mql_lead,
            cycle=cycle,
            mql_event_id=mql_id,
            reason=reason,
            detail=detail,
            current_lead_id=current_lead_id,
            revoked_at=now,
        )
        self._emitter.emit(
            session,
            MQL_REVOKED,
            event_id=revocation_event_id(mql_id),
            time=now,
            key=mql_lead,
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


def _start_cycle(lead: Lead) -> None:
    lead.mql_cycle += 1
    lead.qualified_in_cycle = True
    lead.mql_event_id = mql_event_id(lead.id, lead.mql_cycle)
    if lead.stage in QUALIFYING_STAGES:
        lead.stage = "mql"


def _why_not_qualified(state: LeadState) -> tuple[RevocationReason, str | None]:
    if state.disqualified_by:
        return RevocationReason.DISQUALIFIED, "disqualified by " + ", ".join(state.disqualified_by)
    return RevocationReason.NOT_QUALIFIED, None


def _email_of(state: LeadState) -> str | None:
    """The lead's address as its newest details (in event time) state it."""
    email = state.attributes.get("email")
    return email.lower() if isinstance(email, str) and 0 < len(email) <= 320 else None


def _latest(pending: Sequence[ActivityRecord]) -> str:
    """The event id of the newest (in event time) of a lead's activities in the batch."""
    return max(pending, key=lambda record: (record.time, record.event_id)).event_id


def _continues(state: LeadState, pending: Sequence[ActivityRecord]) -> bool:
    """Whether the pending activities all come after what the stored fold has seen."""
    last = state.last_key
    return last is None or (pending[0].time, pending[0].event_id) > last


def _wire(items: Sequence[tuple[str, float]]) -> list[RuleContribution]:
    return [RuleContribution(rule=rule, points=points) for rule, points in items]
