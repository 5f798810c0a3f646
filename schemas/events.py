"""Data payloads of every leadflow event type; `schemas.registry` pairs each with its topic."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema

from schemas.lifecycle import LeadStage


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActivityType(StrEnum):
    PAGE_VIEW = "page_view"
    EMAIL_OPEN = "email_open"
    EMAIL_CLICK = "email_click"
    FORM_SUBMIT = "form_submit"
    CONTENT_DOWNLOAD = "content_download"
    WEBINAR_REGISTER = "webinar_register"
    WEBINAR_ATTEND = "webinar_attend"
    UNSUBSCRIBE = "unsubscribe"
    IDENTIFY = "identify"
    CUSTOM = "custom"


_WHITESPACE = re.compile(r"\s")


def _plausible_email(value: str) -> str:
    """A cheap shape check: the gateway validates addresses fully at the edge, and consumers
    read every event, so they should not pay for full RFC validation again."""
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain.strip(".") or _WHITESPACE.search(value):
        raise ValueError("value is not a valid email address")
    return value


NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
"""No NUL or other control character: identities become keys, ids and database text."""

Email = Annotated[
    str,
    Field(max_length=320, pattern=NO_CONTROL),
    AfterValidator(_plausible_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 320, "pattern": NO_CONTROL}),
]


class Identity(_Data):
    """Who did it, as far as the sender knows. At least one field is set."""

    email: Email | None = None
    user_id: str | None = Field(default=None, pattern=NO_CONTROL)
    anonymous_id: str | None = Field(default=None, pattern=NO_CONTROL)

    def key(self) -> str:
        """The identity key: email > user id > anonymous id (the Kafka key on lead.activity)."""
        if self.email:
            return f"email:{self.email.lower()}"
        if self.user_id:
            return f"user:{self.user_id}"
        if self.anonymous_id:
            return f"anon:{self.anonymous_id}"
        raise ValueError("identity has no email, user id or anonymous id")


class ActivityData(_Data):
    """`lead.activity.<activity_type>`: something a person did, normalized by the gateway."""

    activity_type: ActivityType
    event_name: str = Field(description="The name the sender used, e.g. 'Form Submitted'.")
    identity: Identity
    properties: dict[str, Any] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Lead attributes from traits or form fields."
    )
    context: dict[str, Any] = Field(default_factory=dict)
    channel: str = Field(description="How it arrived, e.g. 'http:/v1/track'.")
    received_at: AwareDatetime
    is_bot: bool = False


class RuleContribution(_Data):
    rule: str
    points: float


class LeadScoredData(_Data):
    """`lead.scored`: the lead's score after an activity was applied (latest wins per key)."""

    lead_id: str
    score: float
    previous_score: float
    fit: float = 0.0
    engagement: float = 0.0
    grade: str | None = None
    stage: LeadStage
    mql_cycle: int
    rulebook_version: str
    cause_event_id: str
    merged_ids: list[str] = Field(
        default_factory=list, description="Leads merged into this one by this change."
    )
    contributions: list[RuleContribution] = Field(default_factory=list)


class LeadMqlData(_Data):
    """`lead.mql`: the lead qualified; emitted once per qualification cycle."""

    lead_id: str
    email: str | None = None
    cycle: int = Field(ge=1)
    score: float
    fit: float = 0.0
    engagement: float = 0.0
    grade: str | None = None
    reason: Literal["threshold", "trigger"]
    trigger: str | None = None
    rulebook_version: str
    qualified_at: AwareDatetime
    top_rules: list[RuleContribution] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(
        default_factory=dict,
        description="The lead's details when it was announced (what routing rules match on).",
    )
    source: str | None = Field(default=None, description="Where the lead came from.")


class RevocationReason(StrEnum):
    DISQUALIFIED = "disqualified"
    """A fact that arrived later (in event time, earlier) disqualifies the lead."""
    NOT_QUALIFIED = "not_qualified"
    """With every activity in event-time order, the lead never reached the bar."""
    DUPLICATE = "duplicate"
    """Two leads turned out to be one person whose other lead's MQL stands."""


class LeadMqlRevokedData(_Data):
    """`lead.mql_revoked`, on the `lead.mql` topic after the MQL it revokes: facts that
    arrived late undo a qualification, so the MQL no longer stands. Handoff closes the
    assignment and the SLA monitor cancels its clocks."""

    lead_id: str = Field(description="The lead the revoked `lead.mql` named.")
    cycle: int = Field(ge=1, description="The revoked `lead.mql`'s cycle.")
    mql_event_id: str = Field(description="The id of the revoked `lead.mql` event.")
    reason: RevocationReason
    detail: str | None = Field(default=None, description="e.g. the disqualifying rules.")
    current_lead_id: str = Field(description="The lead the person is now (after merges).")
    revoked_at: AwareDatetime


class LeadAssignedData(_Data):
    """`lead.assigned`: the handoff service chose a rep for an MQL."""

    lead_id: str
    cycle: int
    rep_id: str
    rep_name: str
    rep_email: str
    routing_rule: str = Field(description="The routing rule that matched the lead.")
    strategy: str = Field(
        description="How the rep was chosen: the pool's strategy (`round_robin`, `weighted`, "
        "`load_balanced`), or `account_owner` or `manual` when no pool dealt the lead."
    )
    assigned_at: AwareDatetime
    mql_event_id: str
    pool: str | None = Field(
        default=None, description="The pool that dealt the lead (after fallbacks), if one did."
    )
    reason: (
        Literal["routed", "account_owner", "from_queue", "reassigned_after_breach", "manual"] | None
    ) = Field(default=None, description="Why the lead went to this rep.")
    attempt: int = Field(
        default=1,
        ge=1,
        description="1 for the cycle's first assignment; a reassignment is the next attempt, "
        "and its `lead.assigned` replaces the one before.",
    )


class LeadStatusData(_Data):
    """`lead.status`: a rep acted on a lead (accept, reject, contacted, convert, recycle)."""

    lead_id: str
    cycle: int
    status: Literal["accepted", "rejected", "contacted", "converted", "recycled"]
    rep_id: str | None = None
    reason: str | None = Field(
        default=None, description="The reason code (a rejection's or a recycle's), unchanged."
    )
    at: AwareDatetime
    note: str | None = Field(default=None, description="The rep's own words, if any.")
    actor: str | None = Field(
        default=None, description="Who acted: an API key's name, or the CRM that reported it."
    )
    origin: str | None = Field(
        default=None, description="Where the action came from: `api`, `crm:<source>`, …"
    )
    channel: Literal["call", "email", "meeting"] | None = Field(
        default=None, description="How the first touch was made (`contacted`)."
    )
    opportunity_id: str | None = Field(
        default=None, description="The CRM opportunity (`converted`)."
    )
    amount: float | None = Field(default=None, ge=0, description="Its amount (`converted`).")


class SlaEventData(_Data):
    """`sla.events`: an SLA clock started, warned, was met (in time or late), breached or
    cancelled. One record per transition, with a stable id
    (`sla:<lead>:<cycle>:<clock>:<attempt>:<kind>`)."""

    lead_id: str
    cycle: int
    kind: Literal["clock_started", "warning", "met", "met_late", "breached", "cancelled"]
    policy: str = Field(description="The target the clock runs under (its name in the SLA file).")
    rep_id: str | None = None
    started_at: AwareDatetime
    deadline: AwareDatetime
    at: AwareDatetime = Field(
        description="When the transition happened, in event time: the start, the warning time, "
        "the deadline (a breach), the rep's action (met, met_late), the cancellation."
    )
    reason: str | None = Field(
        default=None, description="Why a clock was cancelled, or the answer's reason code."
    )
    clock: Literal["accept", "first_touch", "qualify"] | None = Field(
        default=None,
        description="`accept` (assignment → accept or reject), `first_touch` (assignment → "
        "contacted), `qualify` (accept → convert, reject or recycle).",
    )
    attempt: int | None = Field(
        default=None,
        ge=1,
        description="The assignment attempt (accept, first_touch) or the "
        "acceptance (qualify) the clock times; a reassignment starts the next attempt's.",
    )
    state: Literal["running", "met", "breached", "met_late", "cancelled"] | None = Field(
        default=None, description="The clock's state after the transition."
    )
    target: str | None = Field(
        default=None, description="The time allowed, as written in the SLA file (`4h`, `2d`)."
    )
    calendar: str | None = Field(
        default=None, description="The business calendar it is counted on (`always`: wall time)."
    )
    warn_at: AwareDatetime | None = Field(default=None, description="When its warning is due.")
    business_seconds: float | None = Field(
        default=None, ge=0, description="Business time from the start to `at`, on the calendar."
    )
    wall_seconds: float | None = Field(
        default=None, ge=0, description="Wall-clock time from the start to `at`."
    )
    on_breach: Literal["reassign", "queue", "notify", "none"] | None = Field(
        default=None, description="What the SLA file says a breach of this clock does."
    )
    notify: str | None = Field(
        default=None, description="The manager's or team's e-mail to tell, when the file names one."
    )
    pool: str | None = Field(default=None, description="The pool that dealt the lead.")
    team: str | None = Field(default=None, description="The rep's team, when known.")
    action: str | None = Field(
        default=None, description="The rep's action that ended the clock (`accepted`, …)."
    )
    cause_event_id: str | None = Field(
        default=None, description="The event that caused the transition, if one did."
    )
    detected_at: AwareDatetime | None = Field(
        default=None,
        description="When the SLA monitor noticed it: later than `at` for a warning or breach "
        "fired late, after an outage.",
    )
