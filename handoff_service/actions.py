"""Rep actions on a lead's assignment: accept, reject, contacted, convert, recycle (a rep's,
over HTTP or from their CRM) and reassign (an admin's).

**Checked** (pure, `check_request` and `refusal`): a reason code the routing file does not
list is a 422 naming the codes; an action the assignment's status does not allow is a 409
naming the status and the cycle. The lead's stages (`schemas.lifecycle`) say which rep
actions apply at all; the assignment adds what sales agreed to on top: one answer per
assignment (no accept after a rejection, nor a rejection after an acceptance: recycle it),
no conversion before acceptance, one first touch, and nothing on a closed attempt (recycled,
reassigned, revoked).

**Applied once** (`apply_action`, in the caller's transaction): each action applies at most
once to an attempt of an assignment. A repeat of one already applied with the same effect
(the same reason, channel, opportunity, new rep) is answered with the first answer and
emits nothing; with another effect it is a 409 naming what was done. An `Idempotency-Key`
is kept per caller with a digest of the request: the same key and request are answered with
the first answer whatever happened since, the same key with another request is a 422.

**Emitted** through the outbox in the same transaction: `lead.status` (id
`status:<lead>:<cycle>:<attempt>:<action>`) with the rep, the reason code unchanged, the note,
who acted, where from (`api`, `crm:<source>`) and the cycle; a reassignment emits the new
attempt's `lead.assigned` instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.accounts import record_owner_of
from handoff_service.action_models import HandoffAction
from handoff_service.assignments import current
from handoff_service.dispatch import Dispatcher, NotAssigned, assigned_event_id
from handoff_service.models import (
    ACCEPTED,
    ASSIGNED,
    CONVERTED,
    REASSIGNED,
    RECYCLED,
    REJECTED,
    REVOKED,
    Assignment,
    QueueEntry,
    RepRecord,
)
from handoff_service.roster import lock_routing
from handoff_service.routing_file import load_routing
from schemas.events import LeadStatusData
from schemas.lifecycle import LeadStage, StageEvent, allows
from schemas.registry import STATUS
from services.clock import Clock
from services.errors import ApiError
from services.outbox import Emitter
from services.responses import Timestamp

ActionName = Literal["accept", "reject", "contacted", "convert", "recycle", "reassign"]
"""What can be done to a lead's assignment; `reassign` is an admin's, the others a rep's."""
RepAction = Literal["accept", "reject", "contacted", "convert", "recycle"]
Channel = Literal["call", "email", "meeting"]
CHANNELS: tuple[Channel, ...] = ("call", "email", "meeting")
NEEDS_REASON = frozenset({"reject", "recycle"})

STAGE_EVENT: Mapping[RepAction, StageEvent] = {
    "accept": StageEvent.ACCEPTED,
    "reject": StageEvent.REJECTED,
    "contacted": StageEvent.CONTACTED,
    "convert": StageEvent.CONVERTED,
    "recycle": StageEvent.RECYCLED,
}
"""How each rep action moves the lead (`schemas.lifecycle`)."""

LeadStatus = Literal["accepted", "rejected", "contacted", "converted", "recycled"]
LEAD_STATUS: Mapping[RepAction, LeadStatus] = {
    "accept": "accepted",
    "reject": "rejected",
    "contacted": "contacted",
    "convert": "converted",
    "recycle": "recycled",
}
"""The `status` of the `lead.status` each rep action emits."""

STATUS_AFTER: Mapping[ActionName, str | None] = {
    "accept": ACCEPTED,
    "reject": REJECTED,
    "contacted": None,
    "convert": CONVERTED,
    "recycle": RECYCLED,
    "reassign": REASSIGNED,
}
"""The assignment's status after the action (None: unchanged)."""

ALLOWED_FROM: Mapping[ActionName, frozenset[str]] = {
    "accept": frozenset({ASSIGNED}),
    "reject": frozenset({ASSIGNED}),
    "contacted": frozenset({ASSIGNED, ACCEPTED}),
    "convert": frozenset({ACCEPTED}),
    "recycle": frozenset({ASSIGNED, ACCEPTED, REJECTED, CONVERTED}),
    "reassign": frozenset({ASSIGNED, ACCEPTED, REJECTED}),
}
"""The assignment statuses each action applies to."""

STAGE_OF_STATUS: Mapping[str, LeadStage] = {
    ASSIGNED: LeadStage.MQL,
    ACCEPTED: LeadStage.SAL,
    REJECTED: LeadStage.REJECTED,
    CONVERTED: LeadStage.SQL,
    RECYCLED: LeadStage.NURTURE,
    REVOKED: LeadStage.LEAD,
}
"""The lead's stage while its current assignment has this status."""

IDEMPOTENCY_KEY_LENGTH = 200


# --- what is asked, by whom, and the answer -------------------------------------------------


@dataclass(frozen=True)
class ActionRequest:
    """An action asked of a lead's current assignment."""

    action: ActionName
    cycle: int | None = None
    """The cycle the caller means; another than the current one is a 409."""
    reason: str | None = None
    note: str | None = None
    channel: Channel | None = None
    opportunity_id: str | None = None
    amount: float | None = None
    rep_id: str | None = None
    """A reassignment's new rep; None: back through routing."""
    at: datetime | None = None
    """When it happened, if the caller knows (a CRM's change time); else now."""


@dataclass(frozen=True)
class Actor:
    """Who acts, and what they may act on."""

    name: str
    """Recorded as who acted: an API key's name, or the CRM (and its user)."""
    origin: str
    """`api`, or `crm:<source>`."""
    key_id: str | None = None
    rep_id: str | None = None
    """The rep they act for (a bound sales key, a CRM record's owner): only that rep's
    current assignments. None: any."""
    idempotency_scope: str | None = None
    """Whose Idempotency-Keys these are (`key:<the API key's id>`); None: it sends none."""


@dataclass(frozen=True)
class IdempotencyKey:
    key: str
    request_digest: str


def request_digest(method: str, path: str, body: Mapping[str, Any]) -> str:
    """A digest of a request as the caller sent it (for an Idempotency-Key)."""
    text = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ActionResult(BaseModel):
    """What an action did; a repeat is answered with the first one's."""

    lead_id: str
    cycle: int = Field(description="The qualification cycle acted on")
    attempt: int = Field(description="The attempt of the cycle's assignment acted on")
    action: ActionName
    status: str = Field(
        description="The assignment's status after the action: `assigned`, `accepted`, "
        "`rejected`, `converted`, `recycled`, or `reassigned` (the attempt a reassignment "
        "closed)"
    )
    rep_id: str = Field(description="The rep whose assignment it was")
    reason: str | None = Field(description="The reason code (reject, recycle), unchanged")
    note: str | None
    channel: Channel | None = Field(description="The first touch's channel (contacted)")
    opportunity_id: str | None = Field(description="The CRM opportunity (convert)")
    amount: float | None = Field(description="Its amount (convert)")
    reassigned_to: str | None = Field(
        description="A reassignment's new rep; None when the lead went back to the queue"
    )
    actor: str = Field(description="Who acted: the API key's name, or the CRM")
    origin: str = Field(description="`api` or `crm:<source>`")
    at: Timestamp
    event_id: str | None = Field(
        description="The event emitted: `lead.status`, or `lead.assigned` for a reassignment"
    )


@dataclass(frozen=True)
class Applied:
    result: ActionResult
    replayed: bool = False
    """True when this is a repeat answered with the first result: nothing was changed."""


# --- pure checks ----------------------------------------------------------------------------


def check_request(request: ActionRequest, reason_codes: Mapping[str, object]) -> None:
    """422 when the request itself is wrong: a reason code the routing file does not list,
    or a field this action does not take."""
    problems: list[dict[str, str]] = []
    action = request.action
    if action in NEEDS_REASON:
        codes = ", ".join(reason_codes) or "(none: the routing file lists no reason_codes)"
        if request.reason is None:
            problems.append({"field": "reason", "message": f"required; one of {codes}"})
        elif request.reason not in reason_codes:
            problems.append(
                {
                    "field": "reason",
                    "message": f"unknown reason code {request.reason!r}; the codes are {codes}",
                }
            )
    elif request.reason is not None:
        problems.append({"field": "reason", "message": f"{action} takes no reason"})
    if action == "contacted" and request.channel is None:
        problems.append({"field": "channel", "message": "required: call, email or meeting"})
    if action != "contacted" and request.channel is not None:
        problems.append({"field": "channel", "message": f"{action} takes no channel"})
    if action != "convert":
        for name in ("opportunity_id", "amount"):
            if getattr(request, name) is not None:
                problems.append({"field": name, "message": f"{action} takes no {name}"})
    if action != "reassign" and request.rep_id is not None:
        problems.append({"field": "rep_id", "message": f"{action} takes no rep_id"})
    if problems:
        said = "; ".join(f"{problem['field']}: {problem['message']}" for problem in problems)
        raise ApiError(422, "invalid_request", said, fields=problems)


@dataclass(frozen=True)
class Held:
    """The assignment an action is asked of, as plain data."""

    lead_id: str
    cycle: int
    attempt: int
    rep_id: str
    status: str
    status_reason: str | None = None
    contacted_at: datetime | None = None
    answered_at: datetime | None = None

    @classmethod
    def of(cls, row: Assignment) -> Held:
        return cls(
            lead_id=row.lead_id,
            cycle=row.cycle,
            attempt=row.attempt,
            rep_id=row.rep_id,
            status=row.status,
            status_reason=row.status_reason,
            contacted_at=row.contacted_at,
            answered_at=row.answered_at,
        )

    def describe(self) -> str:
        """`cycle 2 is rejected (attempt 1, rep-ada)`: what a 409 names."""
        holder = f", {self.rep_id}" if self.rep_id else ""
        return f"cycle {self.cycle} is {self.status} (attempt {self.attempt}{holder})"


def allowed(action: ActionName, held: Held) -> bool:
    """Whether `action` applies to an assignment in `held`'s state."""
    if held.status not in ALLOWED_FROM[action]:
        return False
    if action == "contacted" and held.contacted_at is not None:
        return False
    if action == "reassign":
        return True
    stage = STAGE_OF_STATUS.get(held.status)
    return stage is not None and allows(stage, STAGE_EVENT[action])


def refusal(action: ActionName, held: Held) -> str | None:
    """Why `action` does not apply to `held` (the 409's message), or None when it does."""
    if allowed(action, held):
        return None
    return f"cannot {action} lead {held.lead_id}: {held.describe()}; {_hint(action, held)}"


def _hint(action: ActionName, held: Held) -> str:
    status = held.status
    if status == REVOKED:
        why = f" ({held.status_reason})" if held.status_reason else ""
        return f"its MQL was revoked{why}, so there is nothing to act on"
    if status == RECYCLED:
        return "it was recycled to nurture; a new qualification starts a new cycle"
    if status == REASSIGNED:
        return "it was reassigned; act on the current attempt"
    if action == "contacted" and held.contacted_at is not None:
        return f"its first touch was recorded at {held.contacted_at.isoformat()}"
    if status == REJECTED:
        return "it was rejected; recycle it, or an admin reassigns it"
    if status == CONVERTED:
        return "it was converted; recycle it if the opportunity was lost"
    if status == ACCEPTED and action == "reject":
        return "it was accepted, so it can no longer be rejected; recycle it instead"
    if action == "convert":
        return "accept it first"
    return f"{action} applies when it is {' or '.join(sorted(ALLOWED_FROM[action]))}"


def stale_cycle(request: ActionRequest, held: Held) -> str | None:
    """The 409's message when the caller names another cycle than the current one."""
    if request.cycle is None or request.cycle == held.cycle:
        return None
    return (
        f"lead {held.lead_id}: {held.describe()}, and cycle {request.cycle} is not the "
        f"current one; act on cycle {held.cycle}"
    )


def not_theirs(actor: Actor, held: Held) -> str | None:
    """The 403's message when the actor acts for a rep who does not hold the lead."""
    if actor.rep_id is None or actor.rep_id == held.rep_id:
        return None
    holder = held.rep_id or "nobody"
    return (
        f"this key acts for {actor.rep_id}; lead {held.lead_id} (cycle {held.cycle}) is held "
        f"by {holder}"
    )


def differs_from_first(first: ActionResult) -> str:
    """The 409's message for an action repeated with another effect."""
    done = {
        "reason": first.reason,
        "channel": first.channel,
        "opportunity_id": first.opportunity_id,
        "amount": first.amount,
        "to": first.reassigned_to,
    }
    shown = ", ".join(f"{name} {value}" for name, value in done.items() if value is not None)
    what = f" ({shown})" if shown else ""
    return (
        f"lead {first.lead_id}, cycle {first.cycle}: {first.action} was already done{what} "
        f"by {first.actor} at {first.at.isoformat()}; each is done once"
    )


# --- binding a key to a rep -----------------------------------------------------------------


async def check_rep_for_key(session: AsyncSession, routing: Path, rep_id: str) -> None:
    """A sales key may be bound to `rep_id` when they are a rep: in the reps table (seeded
    from the routing file when the handoff service starts, changed through the API), or, before
    it first started, in the routing file. ValueError naming the known reps otherwise."""
    stored = list(await session.scalars(select(RepRecord.id).order_by(RepRecord.id)))
    if rep_id in stored:
        return
    if stored:
        raise ValueError(f"no rep {rep_id!r} in the reps table; the reps are {', '.join(stored)}")
    in_file = [rep.id for rep in load_routing(routing).reps]
    if rep_id not in in_file:
        known = ", ".join(in_file) or "none"
        raise ValueError(f"no rep {rep_id!r} in {routing}; the reps are {known}")


# --- applying -------------------------------------------------------------------------------


class Reassigner(Protocol):
    """Closes `assignment` and gives the lead's cycle to `rep_id`, or back through routing
    (None), as the next attempt, emitting its `lead.assigned`. Returns the new rep (None:
    the lead went to the queue) and the id of the event emitted."""

    async def __call__(
        self,
        session: AsyncSession,
        assignment: Assignment,
        rep_id: str | None,
        *,
        actor: str,
        note: str | None,
    ) -> tuple[str | None, str | None]: ...


def reassigner(dispatcher: Dispatcher) -> Reassigner:
    """Reassignment by the routing side (`Dispatcher.reassign`): to the named rep whatever
    their load or hours, or back through routing (never to the same rep), queued when
    nobody can take it."""

    async def reassign(
        session: AsyncSession,
        assignment: Assignment,
        rep_id: str | None,
        *,
        actor: str,
        note: str | None,
    ) -> tuple[str | None, str | None]:
        try:
            placed = await dispatcher.reassign(
                session,
                assignment.lead_id,
                assignment.cycle,
                to_rep=rep_id,
                actor=actor,
                note=note,
            )
        except NotAssigned as exc:
            raise ApiError(
                422,
                "invalid_request",
                f"rep_id: {exc}",
                fields=[{"field": "rep_id", "message": str(exc)}],
            ) from exc
        if placed is None:
            return None, None
        return placed.rep_id, assigned_event_id(placed.lead_id, placed.cycle, placed.attempt)

    return reassign


@dataclass(frozen=True)
class ActionRules:
    """What actions are checked and applied with: the routing file's reason codes, and how
    a lead is reassigned (None: reassignment is refused)."""

    reason_codes: Mapping[str, object]
    reassign: Reassigner | None = None

    @classmethod
    def of(cls, dispatcher: Dispatcher) -> ActionRules:
        return cls(dict(dispatcher.routing.reason_codes), reassigner(dispatcher))


async def _queued(session: AsyncSession, lead_id: str) -> QueueEntry | None:
    """The lead's newest cycle waiting in the unassigned queue, if one does."""
    query = (
        select(QueueEntry)
        .where(QueueEntry.lead_id == lead_id)
        .order_by(QueueEntry.cycle.desc())
        .limit(1)
    )
    found: QueueEntry | None = await session.scalar(query)
    return found


def waiting(lead_id: str, entry: QueueEntry) -> str:
    return (
        f"lead {lead_id}: cycle {entry.cycle} waits in the unassigned queue "
        f"({entry.why}); nobody holds it yet"
    )


async def _by_idempotency_key(
    session: AsyncSession, scope: str, key: IdempotencyKey
) -> Applied | None:
    stored = await session.scalar(
        select(HandoffAction).where(
            HandoffAction.idempotency_scope == scope, HandoffAction.idempotency_key == key.key
        )
    )
    if stored is None:
        return None
    if stored.request_digest != key.request_digest:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"Idempotency-Key {key.key!r} was used for another request "
            f"({stored.action} of lead {stored.lead_id}); use a new key for a new request",
            fields=[{"field": "Idempotency-Key", "message": "already used for another request"}],
        )
    return Applied(ActionResult.model_validate(stored.result), replayed=True)


async def _done_before(
    session: AsyncSession, row: Assignment, action: ActionName
) -> HandoffAction | None:
    """`action` as first applied to this attempt. For a reassignment: the one that closed
    this attempt (the lead went back to the queue), or the previous attempt when this one is
    its outcome (a manual assignment)."""
    attempt = row.attempt
    if action == "reassign" and row.status != REASSIGNED:
        if row.reason != "manual" or row.attempt == 1:
            return None
        attempt = row.attempt - 1
    found: HandoffAction | None = await session.scalar(
        select(HandoffAction).where(
            HandoffAction.lead_id == row.lead_id,
            HandoffAction.cycle == row.cycle,
            HandoffAction.attempt == attempt,
            HandoffAction.action == action,
        )
    )
    return found


def same_effect(first: HandoffAction, request: ActionRequest) -> bool:
    """Whether `request` asks for what `first` did (its note, cycle and time aside)."""
    done = (first.reason, first.channel, first.opportunity_id, first.amount, first.to_rep_id)
    asked = (request.reason, request.channel, request.opportunity_id, request.amount)
    return done == (*asked, request.rep_id)


async def apply_action(
    session: AsyncSession,
    lead_id: str,
    request: ActionRequest,
    actor: Actor,
    *,
    rules: ActionRules,
    emitter: Emitter,
    clock: Clock,
    idempotency: IdempotencyKey | None = None,
) -> Applied:
    """Check and apply `request` to the lead's current assignment, in the caller's
    transaction (which must then write the outbox: `services.outbox.write_pending`).

    Raises ApiError: 422 (the request), 404 (no assignment), 403 (another rep's lead), 409
    (another cycle, done before with another effect, or not allowed in its status).
    """
    check_request(request, rules.reason_codes)
    if idempotency is not None and actor.idempotency_scope is not None:
        replay = await _by_idempotency_key(session, actor.idempotency_scope, idempotency)
        if replay is not None:
            return replay
    if request.action == "reassign":
        await lock_routing(session)  # before the assignment, as routing locks them
    row = await current(session, lead_id, for_update=True)
    queued = await _queued(session, lead_id)
    if row is None and queued is None:
        raise ApiError(404, "not_found", f"no assignment for lead {lead_id!r}")
    if row is None or (queued is not None and queued.cycle > row.cycle):
        assert queued is not None
        raise ApiError(409, "queued", waiting(lead_id, queued))
    held = Held.of(row)
    if (message := not_theirs(actor, held)) is not None:
        raise ApiError(403, "not_your_lead", message)
    if (message := stale_cycle(request, held)) is not None:
        raise ApiError(409, "stale_cycle", message)
    first = await _done_before(session, row, request.action)
    if first is not None:
        result = ActionResult.model_validate(first.result)
        if same_effect(first, request):
            return Applied(result, replayed=True)
        if request.action != "reassign":
            raise ApiError(409, "already_done", differs_from_first(result))
    if queued is not None and queued.cycle == row.cycle and row.status == REASSIGNED:
        raise ApiError(409, "queued", waiting(lead_id, queued))
    if (message := refusal(request.action, held)) is not None:
        raise ApiError(409, "conflict", message)
    now = clock.now()
    at = _when(request.at, now, row.assigned_at)
    if request.action == "reassign":
        result = await _reassign(session, row, request, actor, rules.reassign, at)
    else:
        result = _answer(session, row, request, actor, emitter, at)
        if request.action == "accept":
            await record_owner_of(session, row, at)
    session.add(
        HandoffAction(
            lead_id=held.lead_id,
            cycle=held.cycle,
            attempt=held.attempt,
            action=request.action,
            rep_id=held.rep_id,
            reason=request.reason,
            channel=request.channel,
            opportunity_id=request.opportunity_id,
            amount=request.amount,
            to_rep_id=request.rep_id,
            note=request.note,
            actor=actor.name,
            api_key_id=actor.key_id,
            origin=actor.origin,
            idempotency_scope=actor.idempotency_scope if idempotency else None,
            idempotency_key=idempotency.key if idempotency else None,
            request_digest=idempotency.request_digest if idempotency else None,
            event_id=result.event_id,
            result=result.model_dump(mode="json"),
            acted_at=now,
        )
    )
    return Applied(result)


def _when(reported: datetime | None, now: datetime, assigned_at: datetime) -> datetime:
    """When the action happened: as reported (a CRM's change time), kept between the
    assignment and now; else now."""
    if reported is None:
        return now
    return min(max(reported, assigned_at), now)


def _answer(
    session: AsyncSession,
    row: Assignment,
    request: ActionRequest,
    actor: Actor,
    emitter: Emitter,
    at: datetime,
) -> ActionResult:
    """A rep's action: the assignment's status and times, and its `lead.status`."""
    action = request.action
    if action == "reassign":
        raise ValueError("a reassignment is not a rep's answer")
    status = STATUS_AFTER[action]
    if status is not None:
        row.status = status
    if action in ("accept", "reject") and row.answered_at is None:
        row.answered_at = at
    if action == "contacted":
        row.contacted_at = at
    event_id = f"status:{row.lead_id}:{row.cycle}:{row.attempt}:{action}"
    data = LeadStatusData(
        lead_id=row.lead_id,
        cycle=row.cycle,
        status=LEAD_STATUS[action],
        rep_id=row.rep_id or None,
        reason=request.reason,
        at=at,
        note=request.note,
        actor=actor.name,
        origin=actor.origin,
        channel=request.channel,
        opportunity_id=request.opportunity_id,
        amount=request.amount,
    )
    emitter.emit(session, STATUS, event_id=event_id, time=at, key=row.lead_id, data=data)
    return ActionResult(
        lead_id=row.lead_id,
        cycle=row.cycle,
        attempt=row.attempt,
        action=action,
        status=row.status,
        rep_id=row.rep_id,
        reason=request.reason,
        note=request.note,
        channel=request.channel,
        opportunity_id=request.opportunity_id,
        amount=request.amount,
        reassigned_to=None,
        actor=actor.name,
        origin=actor.origin,
        at=at,
        event_id=event_id,
    )


async def _reassign(
    session: AsyncSession,
    row: Assignment,
    request: ActionRequest,
    actor: Actor,
    reassign: Reassigner | None,
    at: datetime,
) -> ActionResult:
    if reassign is None:
        raise ApiError(409, "conflict", "reassignment is not available in this process")
    if request.rep_id is not None and request.rep_id == row.rep_id:
        raise ApiError(
            409,
            "conflict",
            f"lead {row.lead_id}: {Held.of(row).describe()}; it is already theirs",
        )
    new_rep, event_id = await reassign(
        session, row, request.rep_id, actor=actor.name, note=request.note
    )
    return ActionResult(
        lead_id=row.lead_id,
        cycle=row.cycle,
        attempt=row.attempt,
        action="reassign",
        status=row.status,
        rep_id=row.rep_id,
        reason=None,
        note=request.note,
        channel=None,
        opportunity_id=None,
        amount=None,
        reassigned_to=new_rep,
        actor=actor.name,
        origin=actor.origin,
        at=at,
        event_id=event_id,
    )
