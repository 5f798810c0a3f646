"""The rep actions over HTTP: `POST /handoff/leads/{lead_id}/accept`, `/reject`, `/contacted`,
`/convert`, `/recycle` (role `sales`) and `/reassign` (role `admin`).

A sales key bound to a rep (`leadflow apikey create --role sales --rep rep-ada`) acts only on
that rep's current assignments; an unbound sales key or an admin key acts on any. Each
action is checked, applied once and emitted by `handoff_service.actions`; an
`Idempotency-Key` header (up to 200 characters) makes a retry safe whatever happened since,
and a repeat without one is answered with the first result too. A repeat's answer carries
the header `Idempotent-Replayed: true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.actions import (
    IDEMPOTENCY_KEY_LENGTH,
    ActionRequest,
    ActionResult,
    ActionRules,
    Actor,
    Applied,
    Channel,
    IdempotencyKey,
    apply_action,
    request_digest,
)
from handoff_service.crm import NOTE_LENGTH, TEXT_LENGTH
from handoff_service.crm_api import build_router as build_crm_router
from handoff_service.dispatch import Dispatcher
from services.api_keys import REP_ID_LENGTH, Caller
from services.context import AppContext
from services.deps import ContextDep, SessionDep
from services.errors import error_responses
from services.outbox import Emitter, write_pending
from services.params import LeadId, printable
from services.security import AdminCaller, SalesCaller

REPLAYED_HEADER = "Idempotent-Replayed"
_CONTROL_EXCEPT_LINES = str.maketrans("", "", "\n\r\t")


def _note_text(value: str) -> str:
    """A note may span lines; no other control character."""
    printable(value.translate(_CONTROL_EXCEPT_LINES))
    return value


Note = Annotated[
    str | None,
    Field(max_length=NOTE_LENGTH, description="The rep's own words"),
    AfterValidator(lambda value: None if value is None else _note_text(value)),
]
Cycle = Annotated[
    int | None,
    Field(
        ge=1,
        description="The qualification cycle you mean; if it is not the current one the "
        "action is refused (409) rather than applied to a newer MQL",
    ),
]
ReasonCode = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="One of the routing file's `reason_codes` (e.g. not_icp, no_budget)",
    ),
    AfterValidator(printable),
]
Text = Annotated[str, Field(min_length=1, max_length=TEXT_LENGTH), AfterValidator(printable)]
RepId = Annotated[str, Field(min_length=1, max_length=REP_ID_LENGTH), AfterValidator(printable)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cycle: Cycle = None
    note: Note = None


class AcceptBody(_Body):
    """Accept the lead: you will work it (it becomes a sales-accepted lead)."""


class RejectBody(_Body):
    """Reject the lead with a reason code; the code reaches scoring and reports unchanged."""

    reason: ReasonCode


class ContactedBody(_Body):
    """Record the first touch."""

    channel: Channel = Field(description="How: call, email or meeting")


class ConvertBody(_Body):
    """Convert the accepted lead to a sales-qualified lead (an opportunity)."""

    opportunity_id: Text | None = Field(default=None, description="The CRM opportunity")
    amount: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="The opportunity's amount"
    )


class RecycleBody(_Body):
    """Send the lead back to marketing's nurture, with a reason code."""

    reason: ReasonCode


class ReassignBody(_Body):
    """Give the lead's current cycle to another rep, or back through routing (admin)."""

    rep_id: RepId | None = Field(
        default=None,
        description="The rep who gets the lead, whatever their load or hours; absent: back "
        "through routing (never to the same rep; the queue when nobody can take it)",
    )


IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_LENGTH,
        description="Makes a retry safe: the same key and request are answered with the "
        "first result and change nothing; the key with another request is a 422",
    ),
    AfterValidator(lambda value: None if value is None else printable(value)),
]

ERRORS = error_responses(401, 403, 404, 409, 422)
_DESCRIPTION = (
    "Role `sales`; a key bound to a rep acts only on that rep's current assignment (403 "
    "otherwise). 404: no assignment for the lead; 409: the assignment's status or cycle does "
    "not allow it (the message names both), or it was done before with another effect; 422: "
    "a field is wrong (an unknown reason code names the codes). A repeat, or a retry with "
    "the same `Idempotency-Key`, is answered with the first result (header "
    "`Idempotent-Replayed: true`) and emits nothing."
)


@dataclass(frozen=True)
class Exchange:
    """What every action's handler needs of its request besides the body and the caller."""

    http: Request
    response: Response
    context: AppContext
    session: AsyncSession
    idempotency_key: str | None


def _exchange(
    http: Request,
    response: Response,
    context: ContextDep,
    session: SessionDep,
    idempotency_key: IdempotencyHeader = None,
) -> Exchange:
    return Exchange(http, response, context, session, idempotency_key)


ExchangeDep = Annotated[Exchange, Depends(_exchange)]


def actor_of(caller: Caller) -> Actor:
    return Actor(
        name=caller.name,
        origin="api",
        key_id=caller.key_id,
        rep_id=caller.rep_id,
        idempotency_scope=f"key:{caller.key_id}",
    )


def build_router(rules: ActionRules) -> APIRouter:
    router = APIRouter(tags=["rep actions"], responses=ERRORS)

    async def _apply(
        session: AsyncSession,
        lead_id: str,
        request: ActionRequest,
        caller: Caller,
        context: AppContext,
        idempotency: IdempotencyKey | None,
    ) -> Applied:
        async with session.begin():
            applied = await apply_action(
                session,
                lead_id,
                request,
                actor_of(caller),
                rules=rules,
                emitter=Emitter(service="handoff", source="leadflow/handoff", clock=context.clock),
                clock=context.clock,
                idempotency=idempotency,
            )
            await write_pending(session)
        return applied

    async def act(
        lead_id: str,
        body: _Body | None,
        request: ActionRequest,
        *,
        caller: Caller,
        exchange: Exchange,
    ) -> ActionResult:
        sent: dict[str, Any] = {} if body is None else body.model_dump(mode="json")
        key, path = exchange.idempotency_key, exchange.http.url.path
        idempotency = (
            None if key is None else IdempotencyKey(key, request_digest("POST", path, sent))
        )
        session, context = exchange.session, exchange.context
        try:
            applied = await _apply(session, lead_id, request, caller, context, idempotency)
        except IntegrityError:
            # The same action (or key) applied at this moment by another request: a second
            # try finds it and answers with its result.
            applied = await _apply(session, lead_id, request, caller, context, idempotency)
        if applied.replayed:
            exchange.response.headers[REPLAYED_HEADER] = "true"
        return applied.result

    @router.post(
        "/handoff/leads/{lead_id}/accept",
        summary="Accept a lead (the rep will work it)",
        description=_DESCRIPTION,
    )
    async def accept(
        lead_id: LeadId,
        caller: SalesCaller,
        exchange: ExchangeDep,
        body: AcceptBody | None = None,
    ) -> ActionResult:
        asked = ActionRequest(
            "accept",
            cycle=body.cycle if body else None,
            note=body.note if body else None,
        )
        return await act(
            lead_id,
            body,
            asked,
            caller=caller,
            exchange=exchange,
        )

    @router.post(
        "/handoff/leads/{lead_id}/reject",
        summary="Reject a lead, with a reason code",
        description=_DESCRIPTION,
    )
    async def reject(
        lead_id: LeadId,
        body: RejectBody,
        caller: SalesCaller,
        exchange: ExchangeDep,
    ) -> ActionResult:
        asked = ActionRequest("reject", cycle=body.cycle, reason=body.reason, note=body.note)
        return await act(
            lead_id,
            body,
            asked,
            caller=caller,
            exchange=exchange,
        )

    @router.post(
        "/handoff/leads/{lead_id}/contacted",
        summary="Record the first touch (call, email or meeting)",
        description=_DESCRIPTION,
    )
    async def contacted(
        lead_id: LeadId,
        body: ContactedBody,
        caller: SalesCaller,
        exchange: ExchangeDep,
    ) -> ActionResult:
        asked = ActionRequest("contacted", cycle=body.cycle, channel=body.channel, note=body.note)
        return await act(
            lead_id,
            body,
            asked,
            caller=caller,
            exchange=exchange,
        )

    @router.post(
        "/handoff/leads/{lead_id}/convert",
        summary="Convert an accepted lead to a sales-qualified lead",
        description=_DESCRIPTION,
    )
    async def convert(
        lead_id: LeadId,
        caller: SalesCaller,
        exchange: ExchangeDep,
        body: ConvertBody | None = None,
    ) -> ActionResult:
        asked = ActionRequest(
            "convert",
            cycle=body.cycle if body else None,
            note=body.note if body else None,
            opportunity_id=body.opportunity_id if body else None,
            amount=body.amount if body else None,
        )
        return await act(
            lead_id,
            body,
            asked,
            caller=caller,
            exchange=exchange,
        )

    @router.post(
        "/handoff/leads/{lead_id}/recycle",
        summary="Send a lead back to nurture, with a reason code",
        description=_DESCRIPTION,
    )
    async def recycle(
        lead_id: LeadId,
        body: RecycleBody,
        caller: SalesCaller,
        exchange: ExchangeDep,
    ) -> ActionResult:
        asked = ActionRequest("recycle", cycle=body.cycle, reason=body.reason, note=body.note)
        return await act(
            lead_id,
            body,
            asked,
            caller=caller,
            exchange=exchange,
        )

    @router.post(
        "/handoff/leads/{lead_id}/reassign",
        summary="Give a lead to another rep, or back through routing (admin)",
        description="Role `admin`. Closes the current attempt (`reassigned`) and gives the "
        "cycle's next attempt to `rep_id` (reason `manual`), or without `rep_id` routes it "
        "again, never to the same rep (the queue when nobody can take it); emits the new "
        "attempt's `lead.assigned`. An unknown rep is a 422; 404, 409 and repeats as for the "
        "rep actions.",
    )
    async def reassign(
        lead_id: LeadId,
        caller: AdminCaller,
        exchange: ExchangeDep,
        body: ReassignBody | None = None,
    ) -> ActionResult:
        asked = ActionRequest(
            "reassign",
            cycle=body.cycle if body else None,
            rep_id=body.rep_id if body else None,
            note=body.note if body else None,
        )
        return await act(
            lead_id,
            body,
            asked,
            caller=caller,
            exchange=exchange,
        )

    return router


def action_routers(context: AppContext, dispatcher: Dispatcher) -> list[APIRouter]:
    """The rep actions' routers (HTTP and the CRM webhooks), for the handoff part: checked
    with the routing file's reason codes, reassigning through `dispatcher`."""
    rules = ActionRules.of(dispatcher)
    return [build_router(rules), build_crm_router(context.settings, rules)]
