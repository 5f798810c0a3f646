"""Identity stitching for a batch of activities: which lead each activity belongs to, the leads
the batch creates, and the merges when one person's identity keys meet.

Lead ids come from identity keys alone (scoring_service.identity): an activity belongs to the
lead with the smallest id among the leads it names and those its new keys would make, and the
others are merged into it. A merged lead's identities and activity log move to the survivor,
its id points on, and the person keeps one standing MQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import ActivityData, RevocationReason
from schemas.lifecycle import LeadStage, StageEvent, allows, next_stage
from scoring_service import store
from scoring_service.engine import ActivityRecord, LeadState
from scoring_service.identity import target_lead
from scoring_service.leads import standing_mql, state_of
from scoring_service.models import Lead
from scoring_service.outgoing import ScoringEvents
from services.clock import Clock


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
    """What a batch has learned about identities and leads while it is being stitched, and
    the stitching itself (`place`)."""

    owners: dict[str, str]
    """identity key -> lead id (kept current through merges)"""
    leads: dict[str, Lead]
    clock: Clock
    events: ScoringEvents
    rulebook_version: str
    """The version a lead the batch creates starts with."""
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

    async def place(
        self, session: AsyncSession, event: CloudEvent[ActivityData], keys: Sequence[str]
    ) -> Lead:
        """The lead an activity belongs to: the one lead it names when it brings no new
        identity (nearly every activity, and no database round trip); otherwise the lead
        with the smallest id among those it names and those its new keys would make, which
        the others are merged into."""
        named = self.leads_named(keys)
        new_keys = [key for key in keys if key not in self.owners]
        if len(named) == 1 and not new_keys:
            return self._claim(self.leads[named[0]], event, keys)
        target = target_lead(named, new_keys)
        survivor = self.leads.get(target)
        if survivor is None:
            survivor = self._new_lead(target)
            self.leads[target] = survivor
            self.created.append(survivor)
        for lead_id in named:
            if lead_id != target:
                await self._merge(session, self.leads[lead_id], survivor)
        return self._claim(survivor, event, keys)

    def _claim(self, lead: Lead, event: CloudEvent[ActivityData], keys: Sequence[str]) -> Lead:
        """Record the activity's identities as the lead's, and its email if it had none."""
        for key in keys:
            if key not in self.owners:
                self.owners[key] = lead.id
                self.new_keys.append(key)
        self.work_for(lead)
        email = event.data.identity.email
        if email and not lead.email:
            lead.email = email.lower()
        return lead

    def _new_lead(self, lead_id: str) -> Lead:
        now = self.clock.now()
        return Lead(
            id=lead_id,
            email=None,
            score=0.0,
            fit=0.0,
            engagement=0.0,
            stage=LeadStage.LEAD,
            mql_cycle=0,
            qualified_in_cycle=False,
            attributes={},
            state={},
            rulebook_version=self.rulebook_version,
            created_at=now,
            updated_at=now,
        )

    async def _merge(self, session: AsyncSession, merged: Lead, survivor: Lead) -> None:
        """Fold `merged` into `survivor`: its identities and history move; its id points on.
        The survivor may be a lead this batch creates: the identities' reference to it is
        checked at commit, after it was inserted."""
        await session.flush()
        await store.move_lead(session, merged.id, survivor.id)
        for key, owner in self.owners.items():
            if owner == merged.id:
                self.owners[key] = survivor.id
        for lead in self.created:  # not stored yet, so move_lead did not repoint them
            if lead.merged_into == merged.id:
                lead.merged_into = survivor.id
        merged.merged_into = survivor.id
        self._take_lifecycle(session, survivor, merged)
        merged.stage = next_stage(merged.stage, StageEvent.MERGED)
        merged.updated_at = self.clock.now()
        target = self.work_for(survivor)
        target.replay = True
        target.merged_ids.append(merged.id)
        moved = self.work.pop(merged.id, None)
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
            elif allows(merged.stage, StageEvent.REVOKED):
                self.events.revoked(
                    session, merged_mql, survivor.id, RevocationReason.DUPLICATE, None
                )
        merged.mql_event_id, merged.qualified_in_cycle, merged.mql_due_at = None, False, None
