"""`POST /webhooks/{source}`: signed marketing-automation webhooks (forms, email opens and
clicks, webinars, unsubscribes), mapped to activities by the source's YAML mapping.

Order of checks: known source (404) → size (413) → Standard Webhooks signature and replay
window (401) → a `webhook-id` without control characters (422) → already-accepted `webhook-id`
(200, nothing produced) → body readable by the mapping (400/422) → broker acknowledgement (503
+ Retry-After) → the delivery is recorded and the answer is 200. Event ids are
`wh:<source>:<webhook-id>:<n>`, so a redelivery that slips past the store (two at once, or a
store write that failed) is still one event downstream.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from schemas.envelope import CloudEvent
from schemas.events import Identity
from services.context import AppContext
from services.deps import ContextDep
from services.errors import ApiError, error_responses, field_errors
from services.gateway import bots
from services.gateway.body import MAX_BATCH_BYTES, parse_json, read_body, shallow
from services.gateway.clean import activity_event, id_problem
from services.gateway.mapping import (
    MappedActivity,
    MappingError,
    WebhookMapping,
    load_mappings,
    map_payload,
    parse_form,
)
from services.gateway.models import WebhookDelivery
from services.gateway.publish import publish_activities
from services.gateway.signature import SignatureError, secret_bytes, verify
from services.gateway.stats import count_bots, stats
from services.settings import Settings

log = logging.getLogger(__name__)

MAX_EVENT_ID_LENGTH = 200  # the envelope's limit
CRM_SECRET_PREFIX = "crm:"
"""LEADFLOW_WEBHOOK_SECRETS entries the handoff service's CRM webhooks use."""


class WebhookAccepted(BaseModel):
    """The delivery's events were acknowledged by the broker (or had been before)."""

    success: bool
    duplicate: bool = Field(
        default=False, description="A redelivered `webhook-id`: nothing produced again"
    )


ACCEPTED = WebhookAccepted(success=True)
DUPLICATE = WebhookAccepted(success=True, duplicate=True)


def event_id_for(source: str, webhook_id: str, index: int) -> str:
    """`wh:<source>:<webhook-id>:<n>`; a webhook-id too long for that is replaced by its
    digest, which is as stable across redeliveries."""
    event_id = f"wh:{source}:{webhook_id}:{index}"
    if len(event_id) <= MAX_EVENT_ID_LENGTH:
        return event_id
    return f"wh:{source}:{hashlib.sha256(webhook_id.encode()).hexdigest()}:{index}"


def webhook_event(
    source: str,
    webhook_id: str,
    index: int,
    mapped: MappedActivity,
    *,
    now: datetime,
    scanner_seconds: float,
) -> CloudEvent[Any]:
    """A mapped webhook event as a `lead.activity` CloudEvent (pure)."""
    identity = Identity(
        email=mapped.email, user_id=mapped.user_id, anonymous_id=mapped.anonymous_id
    )
    event_time = mapped.time or now
    context: dict[str, Any] = {"webhook": {"source": source, "id": webhook_id}}
    if mapped.user_agent:
        context["userAgent"] = mapped.user_agent
    if mapped.delivered_at:
        context["delivered_at"] = mapped.delivered_at.isoformat()
    attributes = dict(mapped.attributes)
    attributes.pop("email", None)
    return activity_event(
        event_id=event_id_for(source, webhook_id, index),
        source=f"leadflow/gateway/webhooks/{source}",
        time=event_time,
        identity=identity,
        activity_type=mapped.activity_type,
        event_name=mapped.event_name,
        properties=mapped.properties,
        attributes=attributes,
        context=context,
        channel=f"webhook:{source}",
        received_at=now,
        bot_reason=bots.detect(
            flagged="flagged_by_source" if mapped.flagged_bot else None,
            user_agent=mapped.user_agent,
            activity_type=mapped.activity_type,
            time=event_time,
            delivered_at=mapped.delivered_at,
            scanner_seconds=scanner_seconds,
        ),
    )


def _payload(request: Request, body: bytes) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        return shallow(parse_form(body))
    return parse_json(body)


def _events(
    source: str, webhook_id: str, mapped: list[MappedActivity], context: ContextDep
) -> list[CloudEvent[Any]]:
    now = context.clock.now()
    try:
        return [
            webhook_event(
                source,
                webhook_id,
                index,
                item,
                now=now,
                scanner_seconds=context.settings.email_scanner_seconds,
            )
            for index, item in enumerate(mapped)
        ]
    except ValidationError as exc:  # values the mapping read that the contract refuses
        fields = field_errors(exc.errors())
        names = ", ".join(item["field"] for item in fields)
        raise ApiError(
            422, "unmappable_payload", f"the {source} mapping gave invalid {names}", fields=fields
        ) from exc


def configured_sources(settings: Settings) -> dict[str, tuple[WebhookMapping, str]]:
    """Sources with both a mapping and a secret; a secret without a mapping stops the start.
    Secrets named `crm:<source>` are the handoff service's CRM webhooks', not the gateway's."""
    mappings = load_mappings(settings.webhook_mappings)
    sources: dict[str, tuple[WebhookMapping, str]] = {}
    for source, secret in settings.webhook_secrets.items():
        if source.startswith(CRM_SECRET_PREFIX):
            continue
        if source not in mappings:
            raise ValueError(
                f"LEADFLOW_WEBHOOK_SECRETS names source {source!r}, but "
                f"{settings.webhook_mappings} has no mapping for it"
            )
        try:
            secret_bytes(secret)
        except ValueError as exc:
            raise ValueError(f"LEADFLOW_WEBHOOK_SECRETS: source {source!r}: {exc}") from exc
        sources[source] = (mappings[source], secret)
    return sources


async def _already_accepted(context: ContextDep, source: str, webhook_id: str) -> bool:
    async with context.sessions() as session:
        found = await session.scalar(
            select(WebhookDelivery.webhook_id).where(
                WebhookDelivery.source == source, WebhookDelivery.webhook_id == webhook_id
            )
        )
    return found is not None


async def _record(context: ContextDep, source: str, webhook_id: str, events: int) -> None:
    """Remember the delivery. Its events are already acknowledged by the broker, so a failure
    here only costs a redelivery being produced again (and deduplicated downstream)."""
    try:
        async with context.sessions() as session, session.begin():
            session.add(
                WebhookDelivery(
                    source=source,
                    webhook_id=webhook_id,
                    events=events,
                    received_at=context.clock.now(),
                )
            )
    except IntegrityError:
        pass  # the same delivery, accepted concurrently
    except SQLAlchemyError:
        log.exception("webhook %s/%s accepted but not recorded", source, webhook_id)


class BadSignature(ApiError):
    """401: the delivery is not signed with the source's secret (or is out of its window)."""

    def __init__(self, problem: SignatureError) -> None:
        super().__init__(401, "invalid_signature", str(problem))


async def read_signed(request: Request, secret: str, context: AppContext) -> tuple[str, bytes]:
    """A Standard Webhooks delivery's id and body, once its signature and timestamp check out
    (BadSignature otherwise) and its id is clean (a 422 naming `webhook-id` otherwise)."""
    body = await read_body(request, MAX_BATCH_BYTES)
    try:
        webhook_id, _ = verify(
            secret,
            request.headers,
            body,
            now=context.clock.now(),
            tolerance_seconds=context.settings.webhook_tolerance_seconds,
        )
    except SignatureError as exc:
        raise BadSignature(exc) from exc
    problem = id_problem(webhook_id)
    if problem is not None:
        raise ApiError(
            422,
            "invalid_request",
            f"webhook-id {problem}",
            fields=[{"field": "webhook-id", "message": problem}],
        )
    return webhook_id, body


def build_router(settings: Settings) -> APIRouter:
    """The webhook endpoint for the sources configured in `settings` (checked now)."""
    sources = configured_sources(settings)
    router = APIRouter(tags=["webhooks"])

    @router.post(
        "/webhooks/{source}",
        summary="A signed marketing-automation webhook (Standard Webhooks)",
        response_model_exclude_defaults=True,  # `duplicate` only when it is one
        responses=error_responses(400, 401, 404, 413, 422, 503),
    )
    async def webhook(source: str, request: Request, context: ContextDep) -> WebhookAccepted:
        if source not in sources:
            raise ApiError(404, "unknown_source", f"no webhook source {source!r} is configured")
        mapping, secret = sources[source]
        try:
            webhook_id, body = await read_signed(request, secret, context)
        except BadSignature:
            stats(request)["webhooks_refused_signature"] += 1
            raise
        if await _already_accepted(context, source, webhook_id):
            stats(request)["webhooks_duplicate"] += 1
            return DUPLICATE
        try:
            mapped = map_payload(mapping, _payload(request, body))
        except MappingError as exc:
            names = ", ".join(item["field"] for item in exc.fields)
            raise ApiError(
                422,
                "unmappable_payload",
                f"the {source} mapping cannot read: {names}",
                fields=exc.fields,
            ) from exc
        events = _events(source, webhook_id, mapped, context)
        await publish_activities(context.publisher, events)
        await _record(context, source, webhook_id, len(events))
        count_bots(request, events)
        stats(request)["webhook_events"] += len(events)
        return ACCEPTED

    return router
