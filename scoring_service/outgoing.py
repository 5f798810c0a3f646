"""The events scoring emits, built from a lead and written to the outbox: `lead.scored` after
every change of a lead, `lead.mql` when a qualification is announced and `lead.mql_revoked`
when one no longer stands. Their ids are stable (`scored:<lead>:<cause>`, `mql:<lead>:<cycle>`,
`mql:<lead>:<cycle>:revoked`), so redelivery and replay repeat them exactly."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import (
    LeadMqlData,
    LeadMqlRevokedData,
    LeadScoredData,
    RevocationReason,
    RuleContribution,
)
from schemas.registry import MQL, MQL_REVOKED, SCORED
from scoring_service import engine
from scoring_service.announcing import parse_mql_event_id, revocation_event_id
from scoring_service.engine import LeadState, Qualification
from scoring_service.models import Lead
from scoring_service.rulebooks import ActiveRulebook
from services.clock import Clock
from services.outbox import Emitter


def scored_data(
    lead: Lead, *, previous_score: float, merged_ids: list[str], cause_event_id: str, version: str
) -> LeadScoredData:
    """`lead.scored`: the lead as it now stands (its scores already updated)."""
    return LeadScoredData(
        lead_id=lead.id,
        score=lead.score,
        previous_score=previous_score,
        fit=lead.fit,
        engagement=lead.engagement,
        grade=lead.grade,
        stage=lead.stage,
        mql_cycle=lead.mql_cycle,
        rulebook_version=version,
        cause_event_id=cause_event_id,
        merged_ids=merged_ids,
    )


def mql_data(
    lead: Lead,
    qualification: Qualification,
    view: engine.Snapshot,
    *,
    version: str,
    top_rules: Sequence[tuple[str, float]],
) -> LeadMqlData:
    """`lead.mql`: the qualification of the lead's current cycle, with its scores as they were
    when it qualified (`view`) and the rules that contributed most."""
    return LeadMqlData(
        lead_id=lead.id,
        email=lead.email,
        cycle=lead.mql_cycle,
        score=view.total,
        fit=view.fit,
        engagement=view.engagement,
        grade=view.grade,
        reason=qualification.reason,
        trigger=qualification.trigger,
        rulebook_version=version,
        qualified_at=qualification.time,
        top_rules=[RuleContribution(rule=rule, points=points) for rule, points in top_rules],
        attributes=dict(lead.attributes),
        source=lead.source,
    )


def revoked_data(
    mql_id: str,
    *,
    current_lead_id: str,
    reason: RevocationReason,
    detail: str | None,
    at: datetime,
) -> LeadMqlRevokedData:
    """`lead.mql_revoked`: the MQL `mql_id` no longer stands; it names the lead and cycle the
    MQL named, whatever the lead has been merged into since (`current_lead_id`)."""
    mql_lead, cycle = parse_mql_event_id(mql_id)
    return LeadMqlRevokedData(
        lead_id=mql_lead,
        cycle=cycle,
        mql_event_id=mql_id,
        reason=reason,
        detail=detail,
        current_lead_id=current_lead_id,
        revoked_at=at,
    )


def why_not_qualified(state: LeadState) -> tuple[RevocationReason, str | None]:
    """The reason and detail of a revocation, from the fold that no longer qualifies."""
    if state.disqualified_by:
        return RevocationReason.DISQUALIFIED, "disqualified by " + ", ".join(state.disqualified_by)
    return RevocationReason.NOT_QUALIFIED, None


class ScoringEvents:
    """Writes scoring's events to the outbox, in the transaction of the change they report."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._emitter = Emitter(service="scoring", source="leadflow/scoring", clock=clock)

    def scored(
        self,
        session: AsyncSession,
        lead: Lead,
        *,
        previous_score: float,
        merged_ids: list[str],
        cause_event_id: str,
        version: str,
    ) -> None:
        data = scored_data(
            lead,
            previous_score=previous_score,
            merged_ids=merged_ids,
            cause_event_id=cause_event_id,
            version=version,
        )
        self._emitter.emit(
            session,
            SCORED,
            event_id=f"scored:{lead.id}:{cause_event_id}",
            time=lead.last_activity_at or self._clock.now(),
            key=lead.id,
            data=data,
        )

    def mql(
        self,
        session: AsyncSession,
        lead: Lead,
        qualification: Qualification,
        state: LeadState,
        active: ActiveRulebook,
        top_rules: Sequence[tuple[str, float]],
    ) -> None:
        """Announce the lead's qualification under the id its cycle was given."""
        view = engine.snapshot(active.rulebook, state, qualification.time)
        data = mql_data(lead, qualification, view, version=active.version, top_rules=top_rules)
        assert lead.mql_event_id is not None
        self._emitter.emit(
            session,
            MQL,
            event_id=lead.mql_event_id,
            time=qualification.time,
            key=lead.id,
            data=data,
        )

    def revoked(
        self,
        session: AsyncSession,
        mql_id: str,
        current_lead_id: str,
        reason: RevocationReason,
        detail: str | None,
    ) -> None:
        """Revoke a standing `lead.mql`, keyed like it so it follows it on its partition."""
        now = self._clock.now()
        data = revoked_data(
            mql_id, current_lead_id=current_lead_id, reason=reason, detail=detail, at=now
        )
        self._emitter.emit(
            session,
            MQL_REVOKED,
            event_id=revocation_event_id(mql_id),
            time=now,
            key=data.lead_id,
            data=data,
        )
