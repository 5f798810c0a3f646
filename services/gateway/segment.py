"""Segment-style request bodies and their translation into `lead.activity` events (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, EmailStr, Field, TypeAdapter, model_validator

from schemas.envelope import CloudEvent
from schemas.events import ActivityData, ActivityType, Identity
from schemas.registry import ACTIVITY
from services.codec import envelope

MAX_EVENT_BYTES = 32 * 1024

EVENT_NAME_MAP: dict[str, ActivityType] = {
    "page viewed": ActivityType.PAGE_VIEW,
    "email opened": ActivityType.EMAIL_OPEN,
    "email link clicked": ActivityType.EMAIL_CLICK,
    "email clicked": ActivityType.EMAIL_CLICK,
    "form submitted": ActivityType.FORM_SUBMIT,
    "content downloaded": ActivityType.CONTENT_DOWNLOAD,
    "webinar registered": ActivityType.WEBINAR_REGISTER,
    "webinar attended": ActivityType.WEBINAR_ATTEND,
    "unsubscribed": ActivityType.UNSUBSCRIBE,
}
"""Common event names sent by analytics libraries, mapped to canonical activity types."""

ATTRIBUTE_ALIASES = {
    "firstName": "first_name",
    "lastName": "last_name",
    "companyDomain": "company_domain",
    "companySize": "company_size",
    "employees": "company_size",
    "annualRevenue": "annual_revenue",
    "jobTitle": "job_title",
    "title": "job_title",
    "purchaseTimeline": "purchase_timeline",
}

_email = TypeAdapter(EmailStr)


class SegmentTrack(BaseModel):
    """The body of `POST /v1/track`, with the field names Segment's libraries send."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    event: str = Field(min_length=1, max_length=200)
    user_id: str | None = Field(default=None, alias="userId", min_length=1, max_length=200)
    anonymous_id: str | None = Field(
        default=None, alias="anonymousId", min_length=1, max_length=200
    )
    message_id: str | None = Field(default=None, alias="messageId", min_length=1, max_length=200)
    timestamp: datetime | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_identity(self) -> SegmentTrack:
        if not self.user_id and not self.anonymous_id:
            raise ValueError("either userId or anonymousId is required")
        return self


def activity_type_for(event_name: str) -> ActivityType:
    name = event_name.strip()
    try:
        return ActivityType(name)
    except ValueError:
        return EVENT_NAME_MAP.get(name.lower(), ActivityType.CUSTOM)


def _traits(body: SegmentTrack) -> dict[str, Any]:
    context_traits = body.context.get("traits")
    merged = dict(context_traits) if isinstance(context_traits, dict) else {}
    merged.update(body.traits)
    return merged


def lead_attributes(traits: dict[str, Any]) -> dict[str, Any]:
    return {ATTRIBUTE_ALIASES.get(name, name): value for name, value in traits.items()}


class InvalidEmail(ValueError):
    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is not a valid email address")
        self.field = field


def find_email(body: SegmentTrack) -> str | None:
    """The email from traits, context.traits or a form's properties; checked, lower-cased."""
    candidates = (
        ("traits.email", body.traits.get("email")),
        ("context.traits.email", (body.context.get("traits") or {}).get("email")),
        ("properties.email", body.properties.get("email")),
    )
    for field, value in candidates:
        if value in (None, ""):
            continue
        try:
            return str(_email.validate_python(value)).lower()
        except ValueError as exc:
            raise InvalidEmail(field) from exc
    return None


def to_activity_event(body: SegmentTrack, *, channel: str, now: datetime) -> CloudEvent[Any]:
    """Normalize a track call; `messageId` becomes the event id so client retries dedupe."""
    email = find_email(body)
    identity = Identity(email=email, user_id=body.user_id, anonymous_id=body.anonymous_id)
    event_time = body.timestamp or now
    if event_time.tzinfo is None:
        event_time = event_time.replace(tzinfo=UTC)
    activity_type = activity_type_for(body.event)
    attributes = lead_attributes(_traits(body))
    attributes.pop("email", None)
    data = ActivityData(
        activity_type=activity_type,
        event_name=body.event,
        identity=identity,
        properties=body.properties,
        attributes=attributes,
        context={key: value for key, value in body.context.items() if key != "traits"},
        channel=channel,
        received_at=now,
    )
    return envelope(
        ACTIVITY,
        event_id=body.message_id or f"gw-{uuid.uuid4()}",
        source=f"leadflow/gateway{channel.removeprefix('http:')}",
        type_=f"lead.activity.{activity_type.value}",
        time=event_time,
        subject=identity.key(),
        data=data,
    )
