"""A lead's lifecycle: its stages, the events that move it, and the one rule for how (pure).

It lives with the event contracts so that every service can share it without importing
another: `lead.scored` carries the stage, and the events that move a lead are the contracts'
own (`lead.mql`, `lead.mql_revoked`, the rep actions of `lead.status`).

```
 lead ──qualified──> mql ──accepted──> sal ──converted──> sql
   ^                  │ │                  (converted also straight from mql)
   └────revoked───────┘ └──rejected──> rejected
 mql, sal, rejected, sql ──recycled──> nurture ──qualified──> mql (a new cycle)
 any stage ──merged──> merged
```

A revoked MQL returns the lead to where its cycle began: `lead`, or `nurture` for a lead that
was recycled before. Once sales has acted on an MQL (accepted, rejected, converted) it is no
longer revoked. While a qualification stands, a rep's actions move the lead between the stages
sales holds (mql, sal, rejected, sql) in whatever order they come; `contacted` changes no stage.
"""

from __future__ import annotations

from enum import StrEnum


class LeadStage(StrEnum):
    """Where a lead is in the marketing-to-sales funnel."""

    LEAD = "lead"
    """Known, not qualified in its current cycle."""
    MQL = "mql"
    """Marketing qualified: its `lead.mql` stands and sales has not acted on it yet."""
    SAL = "sal"
    """Sales accepted the MQL."""
    SQL = "sql"
    """Sales converted it: a sales-qualified lead (an opportunity)."""
    REJECTED = "rejected"
    """Sales rejected the MQL."""
    NURTURE = "nurture"
    """Recycled: back with marketing, and may qualify again in a new cycle."""
    MERGED = "merged"
    """Found to be the same person as another lead, and merged into it."""


class StageEvent(StrEnum):
    """What moves a lead from one stage to another."""

    QUALIFIED = "qualified"
    """Its qualification was announced (`lead.mql`)."""
    REVOKED = "revoked"
    """Its standing MQL was revoked (`lead.mql_revoked`)."""
    ACCEPTED = "accepted"
    """A rep accepted it (`lead.status`, as are the next four)."""
    REJECTED = "rejected"
    CONTACTED = "contacted"
    CONVERTED = "converted"
    RECYCLED = "recycled"
    MERGED = "merged"
    """It was merged into another lead."""


class InvalidTransition(ValueError):
    """The event does not apply to a lead in that stage."""

    def __init__(self, stage: LeadStage, event: StageEvent) -> None:
        super().__init__(f"{event.value} does not apply to a lead in stage {stage.value}")
        self.stage = stage
        self.event = event


SALES_STAGES = frozenset({LeadStage.MQL, LeadStage.SAL, LeadStage.REJECTED, LeadStage.SQL})
"""The stages of a lead whose qualification stands: sales' to act on."""

_MARKETING_STAGES = frozenset({LeadStage.LEAD, LeadStage.NURTURE})

_REP_ACTIONS = {
    StageEvent.ACCEPTED: LeadStage.SAL,
    StageEvent.REJECTED: LeadStage.REJECTED,
    StageEvent.CONVERTED: LeadStage.SQL,
    StageEvent.RECYCLED: LeadStage.NURTURE,
}


def allows(stage: LeadStage, event: StageEvent) -> bool:
    """Whether `event` applies to a lead in `stage` (`next_stage` would not refuse it)."""
    if event is StageEvent.MERGED:
        return True
    if stage is LeadStage.MERGED:
        return False
    if event is StageEvent.QUALIFIED:
        return True  # a stage sales holds is kept: see next_stage
    if event is StageEvent.REVOKED:
        return stage is LeadStage.MQL
    return stage in SALES_STAGES


def next_stage(stage: LeadStage, event: StageEvent, *, recycled: bool = False) -> LeadStage:
    """The stage a lead in `stage` moves to on `event`; InvalidTransition when it does not
    apply (a revocation once sales has acted, a rep action on a lead nobody qualified, any
    event but a merge on a merged lead).

    `recycled` says whether the lead was recycled before, so its current cycle began in
    nurture: that is where a revocation returns it.

    A qualification moves a lead from marketing's stages (lead, nurture) to mql; a lead in a
    stage sales holds keeps it.
    """
    if not allows(stage, event):
        raise InvalidTransition(stage, event)
    if event is StageEvent.MERGED:
        return LeadStage.MERGED
    if event is StageEvent.QUALIFIED:
        return LeadStage.MQL if stage in _MARKETING_STAGES else stage
    if event is StageEvent.REVOKED:
        return LeadStage.NURTURE if recycled else LeadStage.LEAD
    return _REP_ACTIONS.get(event, stage)
