"""Segment HTTP Tracking API bodies and their translation into `lead.activity` events (pure).

Every call type of the Segment spec (track, page, screen, identify, alias, group) becomes one
activity of leadflow's vocabulary (`schemas.events.ActivityType`); `messageId` becomes the
event id, so a client's retry is one event downstream; the event time is corrected for client
clock skew from `sentAt`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from schemas.envelope import CloudEvent
from schemas.events import ActivityType, Identity
from services.gateway import bots
from services.gateway.body import MAX_EVENT_BYTES
from services.gateway.clean import CleanId, CleanText, activity_event, id_problem

__all__ = ["MAX_EVENT_BYTES"]

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

GROUP_TRAIT_ALIASES = {
    "name": "company",
    "company": "company",
    "industry": "industry",
    "employees": "company_size",
    "employee_count": "company_size",
    "size": "company_size",
    "companySize": "company_size",
    "company_size": "company_size",
    "website": "company_domain",
    "domain": "company_domain",
    "annualRevenue": "annual_revenue",
    "annual_revenue": "annual_revenue",
    "country": "country",
    "region": "region",
}
"""Segment group traits (the account) to lead attributes; other traits get a `company_` prefix."""

PAGE_FIELDS = ("url", "title", "referrer", "path", "search")

_email = TypeAdapter(EmailStr)
_datetime = TypeAdapter(datetime)


class SegmentMessage(BaseModel):
    """Fields every Segment call shares, with the names Segment's libraries send."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, coerce_numbers_to_str=True)

    user_id: CleanId | None = Field(default=None, alias="userId", min_length=1, max_length=200)
    anonymous_id: CleanId | None = Field(
        default=None, alias="anonymousId", min_length=1, max_length=200
    )
    message_id: CleanId | None = Field(
        default=None, alias="messageId", min_length=1, max_length=200
    )
    timestamp: datetime | None = None
    sent_at: datetime | None = Field(default=None, alias="sentAt")
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)

    call: str = "track"

    @model_validator(mode="after")
    def _needs_identity(self) -> SegmentMessage:
        if not self.user_id and not self.anonymous_id:
            raise ValueError("either userId or anonymousId is required")
        return self


class SegmentTrack(SegmentMessage):
    event: CleanText = Field(min_length=1, max_length=200)


class SegmentPage(SegmentMessage):
    call: str = "page"
    name: CleanText | None = Field(default=None, max_length=200)
    category: CleanText | None = Field(default=None, max_length=200)


class SegmentScreen(SegmentPage):
    call: str = "screen"


class SegmentIdentify(SegmentMessage):
    call: str = "identify"


class SegmentAlias(SegmentMessage):
    call: str = "alias"
    user_id: CleanId = Field(alias="userId", min_length=1, max_length=200)
    previous_id: CleanId = Field(alias="previousId", min_length=1, max_length=200)


class SegmentGroup(SegmentMessage):
    call: str = "group"
    group_id: CleanId = Field(alias="groupId", min_length=1, max_length=200)


CALLS: dict[str, type[SegmentMessage]] = {
    "track": SegmentTrack,
    "page": SegmentPage,
    "screen": SegmentScreen,
    "identify": SegmentIdentify,
    "alias": SegmentAlias,
    "group": SegmentGroup,
}


def parse_call(call: str, payload: dict[str, Any]) -> SegmentMessage:
    """Validate `payload` as a `call` (the endpoint's, or a batch item's `type`). Keys that
    are no field name (they hold control characters) are dropped like other unknown keys."""
    model = CALLS[call]
    document = {
        key: value
        for key, value in payload.items()
        if key not in ("type", "call") and id_problem(key) is None
    }
    return model.model_validate({**document, "call": call})


class InvalidField(ValueError):
    """A field the models let through that cannot become an activity; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidEmail(InvalidField):
    def __init__(self, field: str) -> None:
        super().__init__(field, "not a valid email address")


def activity_type_for(event_name: str) -> ActivityType:
    name = event_name.strip()
    try:
        return ActivityType(name)
    except ValueError:
        return EVENT_NAME_MAP.get(name.lower(), ActivityType.CUSTOM)


def _context_traits(body: SegmentMessage) -> dict[str, Any]:
    traits = body.context.get("traits")
    return dict(traits) if isinstance(traits, dict) else {}


def lead_attributes(traits: dict[str, Any]) -> dict[str, Any]:
    return {ATTRIBUTE_ALIASES.get(name, name): value for name, value in traits.items()}


def company_attributes(traits: dict[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name, value in traits.items():
        attribute = GROUP_TRAIT_ALIASES.get(name, f"company_{name}")
        if attribute == "company_domain" and isinstance(value, str):
            value = value.split("://", 1)[-1].split("/", 1)[0].removeprefix("www.")
        attributes[attribute] = value
    return attributes


def checked_email(candidates: list[tuple[str, Any]]) -> str | None:
    """The first present email among (field, value) candidates; checked and lower-cased."""
    for field, value in candidates:
        if value in (None, ""):
            continue
        try:
            return str(_email.validate_python(value)).lower()
        except ValidationError as exc:
            raise InvalidEmail(field) from exc
    return None


def find_email(body: SegmentMessage) -> str | None:
    """The email from traits, context.traits or a form's properties."""
    candidates = [("context.traits.email", _context_traits(body).get("email"))]
    if not isinstance(body, SegmentGroup):  # a group's traits describe the company
        candidates.insert(0, ("traits.email", body.traits.get("email")))
        candidates.append(("properties.email", body.properties.get("email")))
    return checked_email(candidates)


def aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def corrected_time(
    timestamp: datetime | None, sent_at: datetime | None, received_at: datetime
) -> datetime:
    """Segment's clock-skew correction: received_at - (sent_at - timestamp) when sent_at is
    known; the client's timestamp when not; the receive time when there is no timestamp."""
    if timestamp is None:
        return received_at
    timestamp = aware(timestamp)
    if sent_at is None:
        return timestamp
    return received_at - (aware(sent_at) - timestamp)


def parse_time(value: Any) -> datetime:
    """An ISO 8601 time as Segment's libraries send it (naive means UTC); ValidationError if not."""
    return aware(_datetime.validate_python(value))


def _optional_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return parse_time(value)
    except ValidationError:
        return None


def _activity(body: SegmentMessage) -> tuple[ActivityType, str]:
    if isinstance(body, SegmentTrack):
        return activity_type_for(body.event), body.event
    if isinstance(body, SegmentPage):
        return ActivityType.PAGE_VIEW, body.name or body.call
    return ActivityType.IDENTIFY, body.call


def _properties(body: SegmentMessage) -> dict[str, Any]:
    properties = dict(body.properties)
    if isinstance(body, SegmentPage):
        page = body.context.get("page")
        if isinstance(page, dict):
            for field in PAGE_FIELDS:
                if field in page and field not in properties:
                    properties[field] = page[field]
        if body.category and "category" not in properties:
            properties["category"] = body.category
    elif isinstance(body, SegmentAlias):
        properties["previous_id"] = body.previous_id
    elif isinstance(body, SegmentGroup):
        properties["group_id"] = body.group_id
    return properties


def _attributes(body: SegmentMessage) -> dict[str, Any]:
    if isinstance(body, SegmentGroup):
        attributes = lead_attributes(_context_traits(body))
        attributes.update(company_attributes(body.traits))
    else:
        merged = _context_traits(body)
        merged.update(body.traits)
        attributes = lead_attributes(merged)
    attributes.pop("email", None)
    return attributes


def to_activity_event(
    body: SegmentMessage,
    *,
    channel: str,
    now: datetime,
    batch_sent_at: datetime | None = None,
    bot_reason: str | None = None,
    scanner_seconds: float = 10.0,
) -> CloudEvent[Any]:
    """Normalize one Segment call into a `lead.activity` CloudEvent."""
    email = find_email(body)
    identity = Identity(email=email, user_id=body.user_id, anonymous_id=body.anonymous_id)
    sent_at = body.sent_at or batch_sent_at
    try:
        event_time = corrected_time(body.timestamp, sent_at, now)
    except OverflowError as exc:
        raise InvalidField("timestamp", "too far from sentAt to correct the clock") from exc
    activity_type, event_name = _activity(body)
    properties = _properties(body)
    context = {key: value for key, value in body.context.items() if key != "traits"}
    if body.timestamp is not None and sent_at is not None:
        context["original_timestamp"] = aware(body.timestamp).isoformat()
    return activity_event(
        event_id=body.message_id or f"gw-{uuid.uuid4()}",
        source=f"leadflow/gateway{channel.removeprefix('http:')}",
        time=event_time,
        identity=identity,
        activity_type=activity_type,
        event_name=event_name,
        properties=properties,
        attributes=_attributes(body),
        context=context,
        channel=channel,
        received_at=now,
        bot_reason=bots.detect(
            flagged=bot_reason,
            user_agent=context.get("userAgent"),
            activity_type=activity_type,
            time=event_time,
            delivered_at=_optional_time(properties.get("delivered_at")),
            scanner_seconds=scanner_seconds,
        ),
    )
