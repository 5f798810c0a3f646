"""Applies `lead.activity` batches: each activity placed on its lead (scoring_service.stitching),
the rulebook fold, the ledger, the lead's scores and stage, and what the world is told
(scoring_service.announcing decides, scoring_service.outgoing builds the events).

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
from schemas.events import ActivityData
from schemas.lifecycle import StageEvent, allows, next_stage
from schemas.topics import LEAD_ACTIVITY
from scoring_service import engine, store
from scoring_service.announcing import Announcement, Told, decide, mql_event_id
from scoring_service.engine import ActivityRecord, LeadState, Qualification
from scoring_service.identity import identity_keys
from scoring_service.leads import standing_mql, state_of
from scoring_service.models import Lead
from scoring_service.outgoing import ScoringEvents, why_not_qualified
from scoring_service.rulebooks import ActiveRulebook, RulebookCache
from scoring_service.stitching import LeadWork, Stitching
from services.clock import Clock
from services.codec import PoisonRecord, decode
from services.faults import ConcurrentChange
from services.runner import ConsumerSpec

ActivityEvent = CloudEvent[ActivityData]


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
class Announcements:
    """MQLs decided in a transaction, emitted once the ledger they cite is written."""

    due: list[tuple[Lead, Qualification, LeadState]] = field(default_factory=list)


class ActivityApplier:
    """Applies `lead.activity` batches, and is the entry point for what else changes a lead's
    score or stage: held MQLs coming due, recycling, re-scoring under another rulebook."""

    def __init__(
        self, rulebooks: RulebookCache, clock: Clock, *, mql_hold: timedelta = timedelta(0)
    ) -> None:
        self.rulebooks = rulebooks
        self._clock = clock
        self._hold = mql_hold
        self._events = ScoringEvents(clock)

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
        batch = Stitching(
            owners=owners,
            leads=leads,
            clock=self._clock,
            events=self._events,
            rulebook_version=active.version,
        )
        placed: list[Lead] = []
        for item in incoming:
            event = item.event
            lead = await batch.place(session, event, item.keys)
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

    async def recycle(self, session: AsyncSession, lead: Lead, at: datetime, *, cause: str) -> None:
        """Return a lead to nurture: a new cycle, engagement per the rulebook's recycle policy."""
        active = await self.rulebooks.active(session)
        state = engine.recycle(active.rulebook, state_of(lead), at)
        item = LeadWork(lead=lead, state=state, previous_score=lead.score)
        lead.stage = next_stage(lead.stage, StageEvent.RECYCLED)
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
            revocable=revoke and allows(lead.stage, StageEvent.REVOKED),
        )
        decision = decide(state.qualification is not None, told, self._clock.now(), hold)
        lead.mql_due_at = decision.due_at if decision.action is Announcement.HOLD else None
        if decision.action is Announcement.ANNOUNCE:
            assert state.qualification is not None
            _start_cycle(lead)
            announcements.due.append((lead, state.qualification, state))
        elif decision.action is Announcement.REVOKE:
            assert standing is not None
            reason, detail = why_not_qualified(state)
            self._events.revoked(session, standing, lead.id, reason, detail)
            lead.mql_event_id, lead.qualified_in_cycle = None, False
            lead.stage = next_stage(
                lead.stage, StageEvent.REVOKED, recycled=state.cycle_start is not None
            )
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
            self._events.mql(session, lead, qualification, state, active, top_rules)

    def _emit_scored(
        self, session: AsyncSession, item: LeadWork, cause_event_id: str, active: ActiveRulebook
    ) -> None:
        self._events.scored(
            session,
            item.lead,
            previous_score=item.previous_score,
            merged_ids=item.merged_ids,
            cause_event_id=cause_event_id,
            version=active.version,
        )

    def _update_lead(self, lead: Lead, state: LeadState, active: ActiveRulebook) -> None:
        """The lead's stored snapshot: its fold state and its scores as of its last activity."""
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


def _start_cycle(lead: Lead) -> None:
    lead.mql_cycle += 1
    lead.qualified_in_cycle = True
    lead.mql_event_id = mql_event_id(lead.id, lead.mql_cycle)
    lead.stage = next_stage(lead.stage, StageEvent.QUALIFIED)


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
