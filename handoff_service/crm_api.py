"""`POST /webhooks/crm/{source}`: a rep's status change in their CRM, signed per Standard
Webhooks and read by the CRM's mapping (`handoff_service.crm`), applied as the rep action it
is through the same code as the HTTP actions (`handoff_service.actions`), origin
`crm:<source>`.

It is the handoff service's, not the gateway's: only handoff knows the assignments a status
change acts on, and it answers only once the change is applied (or refused). Run separately,
route `/webhooks/crm/*` to the handoff service and `/webhooks/*` to the gateway.

Order of checks: known source (404) → size (413) → signature and replay window (401) → a
`webhook-id` without control characters (422) → already-applied `webhook-id` (200 with the
first answer, `duplicate: true`, nothing changed) → body readable by the mapping, every
status value known to it (400/422) → each change, in one transaction: its lead known (422),
the owner a rep who holds it (422/403), the action allowed (409). Any refusal names the
change and the field, and nothing of the delivery is recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.action_models import CrmDelivery, CrmRecord
from handoff_service.actions import (
    ActionName,
    ActionRequest,
    ActionResult,
    ActionRules,
    Actor,
    apply_action,
)
from handoff_service.crm import (
    SECRET_PREFIX,
    CrmMapping,
    LeadRef,
    RecordLink,
    Skipped,
    StatusChange,
    load_crm_mappings,
    read_changes,
)
from handoff_service.models import Assignment, RepRecord
from services.deps import ContextDep
from services.errors import ApiError, error_responses
from services.gateway.body import parse_json
from services.gateway.mapping import MappingError
from services.gateway.signature import secret_bytes
from services.gateway.webhooks import read_signed
from services.outbox import Emitter, write_pending
from services.settings import Settings

Outcome = Literal["applied", "repeated", "linked", "skipped"]


class CrmChangeResult(BaseModel):
    """What became of one change of the delivery."""

    index: int = Field(description="Its position in the delivery, from 0")
    outcome: Outcome = Field(
        description="`applied`; `repeated` (done before: answered with the first result, "
        "nothing changed); `linked` (the CRM record is now known as the lead); `skipped` "
        "(not a status change, or a status leadflow ignores)"
    )
    lead_id: str | None = None
    status_value: str | None = Field(default=None, description="The CRM's status value")
    action: ActionName | None = None
    detail: str | None = Field(default=None, description="Why it was skipped")
    result: ActionResult | None = Field(default=None, description="The action's result")


class CrmAccepted(BaseModel):
    """The delivery was applied (or had been before)."""

    success: bool
    duplicate: bool = Field(
        default=False, description="A redelivered `webhook-id`: the first answer, nothing changed"
    )
    changes: list[CrmChangeResult]


def configured_crm_sources(
    settings: Settings, rules: ActionRules
) -> dict[str, tuple[CrmMapping, str]]:
    """CRMs with a mapping and a `crm:<source>` secret; a secret without a mapping, or a
    mapping naming reason codes the routing file lacks, stops the start."""
    mappings = load_crm_mappings(settings.crm_mappings, reason_codes=rules.reason_codes)
    sources: dict[str, tuple[CrmMapping, str]] = {}
    for name, secret in settings.webhook_secrets.items():
        if not name.startswith(SECRET_PREFIX):
            continue
        source = name.removeprefix(SECRET_PREFIX)
        if source not in mappings:
            raise ValueError(
                f"LEADFLOW_WEBHOOK_SECRETS names CRM {source!r} ({name}), but "
                f"{settings.crm_mappings} has no mapping for it"
            )
        try:
            secret_bytes(secret)
        except ValueError as exc:
            raise ValueError(f"LEADFLOW_WEBHOOK_SECRETS: {name!r}: {exc}") from exc
        sources[source] = (mappings[source], secret)
    return sources


async def lead_by_email(session: AsyncSession, email: str) -> str | None:
    """The lead with this e-mail address among those handed off (newest first)."""
    stored = Assignment.lead["email"].as_string()
    query = (
        select(Assignment.lead_id)
        .where(func.lower(stored) == email.casefold())
        .order_by(Assignment.assigned_at.desc())
        .limit(1)
    )
    found: str | None = await session.scalar(query)
    return found


def _unknown(change: StatusChange | RecordLink, what: str) -> ApiError:
    return ApiError(
        422,
        "unknown_lead",
        f"change {change.index}: {what}",
        fields=[{"field": change.lead.field, "message": what}],
    )


async def _lead_of(
    session: AsyncSession, source: str, change: StatusChange, links: dict[str, str]
) -> str:
    """The leadflow lead a change names; 422 naming it when none is known."""
    ref = change.lead
    if ref.lead_id is not None:
        return ref.lead_id
    if ref.email is not None:
        found = await lead_by_email(session, ref.email)
        if found is None:
            raise _unknown(change, f"no lead with e-mail {ref.email!r} was handed off")
        return found
    assert ref.record_id is not None
    linked = links.get(ref.record_id)
    if linked is None:
        record = await session.get(CrmRecord, (source, ref.record_id))
        linked = None if record is None else record.lead_id
    if linked is None:
        raise _unknown(
            change, f"{source} record {ref.record_id!r} is not linked to a leadflow lead"
        )
    return linked


async def _link(session: AsyncSession, source: str, link: RecordLink, at: datetime) -> str | None:
    """Remember which lead the record is; None when its e-mail names no lead (yet)."""
    lead_id = await _linked_lead(session, link.lead)
    if lead_id is None:
        return None
    record = await session.get(CrmRecord, (source, link.record_id))
    if record is None:
        session.add(
            CrmRecord(source=source, record_id=link.record_id, lead_id=lead_id, linked_at=at)
        )
    elif record.lead_id != lead_id:
        record.lead_id, record.linked_at = lead_id, at
    return lead_id


async def _linked_lead(session: AsyncSession, ref: LeadRef) -> str | None:
    if ref.lead_id is not None:
        return ref.lead_id
    return None if ref.email is None else await lead_by_email(session, ref.email)


async def _owner(session: AsyncSession, change: StatusChange) -> str | None:
    """The rep the CRM says owns the record (they act, so they must hold the lead)."""
    if change.owner_email is None:
        return None
    rep = await session.scalar(
        select(RepRecord.id).where(func.lower(RepRecord.email) == change.owner_email)
    )
    if rep is None:
        message = f"owner {change.owner_email!r} is not a leadflow rep"
        raise ApiError(
            422,
            "unknown_rep",
            f"change {change.index}: {message}",
            fields=[{"field": change.field, "message": message}],
        )
    found: str = rep
    return found


def _ordered(changes: list[StatusChange]) -> list[StatusChange]:
    """In the order they were made when every change says when; else as delivered."""
    if all(change.time is not None for change in changes):
        return sorted(changes, key=lambda change: (change.time, change.index))
    return changes


async def apply_delivery(
    session: AsyncSession,
    source: str,
    changes: list[StatusChange | RecordLink | Skipped],
    *,
    rules: ActionRules,
    emitter: Emitter,
    context: ContextDep,
) -> list[CrmChangeResult]:
    """Apply a delivery's changes in the caller's transaction: links first, then the status
    changes in the order they were made. An ApiError names the change."""
    now = context.clock.now()
    results: dict[int, list[CrmChangeResult]] = {}
    links: dict[str, str] = {}
    for change in changes:
        if isinstance(change, Skipped):
            results.setdefault(change.index, []).append(
                CrmChangeResult(index=change.index, outcome="skipped", detail=change.why)
            )
        elif isinstance(change, RecordLink):
            lead_id = await _link(session, source, change, now)
            if lead_id is None:
                detail = "its e-mail names no lead handed off yet"
                outcome = CrmChangeResult(index=change.index, outcome="skipped", detail=detail)
            else:
                links[change.record_id] = lead_id
                outcome = CrmChangeResult(index=change.index, outcome="linked", lead_id=lead_id)
            results.setdefault(change.index, []).append(outcome)
    statuses = [change for change in changes if isinstance(change, StatusChange)]
    for change in _ordered(statuses):
        lead_id = await _lead_of(session, source, change, links)
        actor = Actor(
            name=f"{source}:{change.actor}" if change.actor else source,
            origin=f"crm:{source}",
            rep_id=await _owner(session, change),
        )
        request = ActionRequest(
            change.action,
            reason=change.reason,
            note=change.note,
            channel=change.channel,
            opportunity_id=change.opportunity_id,
            amount=change.amount,
            at=change.time,
        )
        try:
            applied = await apply_action(
                session,
                lead_id,
                request,
                actor,
                rules=rules,
                emitter=emitter,
                clock=context.clock,
            )
        except ApiError as exc:
            raise _named(exc, change, lead_id) from exc
        results.setdefault(change.index, []).append(
            CrmChangeResult(
                index=change.index,
                outcome="repeated" if applied.replayed else "applied",
                lead_id=lead_id,
                status_value=change.value,
                action=change.action,
                result=applied.result,
            )
        )
    return [result for index in sorted(results) for result in results[index]]


def _named(exc: ApiError, change: StatusChange, lead_id: str) -> ApiError:
    """The action's refusal, naming the change; a lead nobody handed off is a 422."""
    where = f"change {change.index} ({change.field} {change.value!r}: {change.action})"
    if exc.status == 404:
        message = f"no lead {lead_id!r} was handed off"
        return ApiError(
            422,
            "unknown_lead",
            f"{where}: {message}",
            fields=[{"field": change.lead.field, "message": message}],
        )
    fields = [{"field": change.field, "message": item["message"]} for item in exc.fields]
    return ApiError(
        exc.status,
        exc.code,
        f"{where}: {exc.message}",
        fields=fields or [{"field": change.field, "message": exc.message}],
    )


async def _delivered(context: ContextDep, source: str, webhook_id: str) -> CrmAccepted | None:
    async with context.sessions() as session:
        stored = await session.scalar(
            select(CrmDelivery.result).where(
                CrmDelivery.source == source, CrmDelivery.webhook_id == webhook_id
            )
        )
    if stored is None:
        return None
    first = CrmAccepted.model_validate(stored)
    return first.model_copy(update={"duplicate": True})


async def _apply(
    context: ContextDep,
    source: str,
    webhook_id: str,
    changes: list[StatusChange | RecordLink | Skipped],
    rules: ActionRules,
    emitter: Emitter,
) -> CrmAccepted:
    """Apply the delivery and record it, in one transaction."""
    async with context.sessions() as session, session.begin():
        results = await apply_delivery(
            session, source, changes, rules=rules, emitter=emitter, context=context
        )
        answer = CrmAccepted(success=True, changes=results)
        session.add(
            CrmDelivery(
                source=source,
                webhook_id=webhook_id,
                result=answer.model_dump(mode="json"),
                received_at=context.clock.now(),
            )
        )
        await write_pending(session)
    return answer


def build_router(settings: Settings, rules: ActionRules) -> APIRouter:
    """The CRM webhook endpoint for the CRMs configured in `settings` (checked now)."""
    sources = configured_crm_sources(settings, rules)
    router = APIRouter(tags=["webhooks"])

    @router.post(
        "/webhooks/crm/{source}",
        summary="A rep's status change in their CRM (Standard Webhooks)",
        responses=error_responses(400, 401, 403, 404, 409, 413, 422),
    )
    async def crm_webhook(source: str, request: Request, context: ContextDep) -> CrmAccepted:
        if source not in sources:
            raise ApiError(404, "unknown_source", f"no CRM {source!r} is configured")
        mapping, secret = sources[source]
        webhook_id, body = await read_signed(request, secret, context)
        first = await _delivered(context, source, webhook_id)
        if first is not None:
            return first
        try:
            changes = read_changes(mapping, parse_json(body))
        except MappingError as exc:
            raise ApiError(
                422,
                "unmappable_payload",
                f"the {source} mapping cannot use: "
                + "; ".join(f"{item['field']}: {item['message']}" for item in exc.fields),
                fields=exc.fields,
            ) from exc
        emitter = Emitter(
            service="handoff", source=f"leadflow/handoff/crm/{source}", clock=context.clock
        )
        try:
            return await _apply(context, source, webhook_id, changes, rules, emitter)
        except IntegrityError:
            first = await _delivered(context, source, webhook_id)
            if first is not None:
                return first  # the same delivery, applied at this moment by another request
        # one of its actions was applied at this moment by another request: a second try
        # finds it and answers with its result
        return await _apply(context, source, webhook_id, changes, rules, emitter)

    return router
