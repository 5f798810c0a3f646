"""Declarative webhook mappings (pure): one YAML file per source says where a tool's payload
keeps the event type, the person, the time and the properties, and which activity each event
type is. Paths are dotted (`payload.object.participant.email`, `form-submissions.0.title`); a
list of paths means "the first one present". A payload the mapping cannot read raises
`MappingError` naming what is missing. See examples/webhooks/ for real tools' payloads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from schemas.events import ActivityType
from services.config_files import read_yaml, validate
from services.gateway.clean import id_problem
from services.gateway.segment import InvalidEmail, checked_email, parse_time

EPOCH_MILLIS_FROM = 100_000_000_000  # a number this big is milliseconds, not seconds
MAX_ID_LENGTH = 200  # as for the Segment API's userId and anonymousId


def _as_list(value: object) -> object:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


Paths = Annotated[list[str], BeforeValidator(_as_list)]


class MappingFileError(ValueError):
    """A mapping file that does not validate; stops leadflow at start."""


class WebhookMapping(BaseModel):
    """How one source's payload becomes activities."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str = ""
    events: str | None = Field(
        default=None,
        description="Dotted path to a list of events; when absent from a payload, the body "
        "is one event, or a list of events when it is a JSON array.",
    )
    type: Paths = Field(default_factory=list, description="Where an event's type is.")
    types: dict[str, ActivityType] = Field(default_factory=dict)
    activity: ActivityType | None = Field(
        default=None, description="The activity of every event, for sources with one kind."
    )
    unmapped: Literal["custom", "reject"] = "custom"
    event_name: Paths = Field(default_factory=list)
    time: Paths = Field(default_factory=list)
    email: Paths = Field(default_factory=list)
    user_id: Paths = Field(default_factory=list)
    anonymous_id: Paths = Field(default_factory=list)
    properties: dict[str, Paths] = Field(default_factory=dict)
    attributes: dict[str, Paths] = Field(default_factory=dict)
    user_agent: Paths = Field(default_factory=list)
    delivered_at: Paths = Field(
        default_factory=list, description="When the email was delivered (link-scanner check)."
    )
    bot: Paths = Field(default_factory=list, description="A flag the tool sets on bot events.")

    @model_validator(mode="after")
    def _activity_known(self) -> WebhookMapping:
        if self.activity is None and not (self.type and self.types):
            raise ValueError("give `activity`, or `type` with a `types` map")
        if not (self.email or self.user_id or self.anonymous_id):
            raise ValueError("give at least one of email, user_id, anonymous_id")
        return self


def load_mappings(folder: Path) -> dict[str, WebhookMapping]:
    """Every `*.yaml` in `folder`, by source (the file's `source`, else its stem)."""
    mappings: dict[str, WebhookMapping] = {}
    if not folder.is_dir():
        return mappings
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        mapping = _load(path)
        if mapping.source in mappings:
            raise MappingFileError(f"{path}: source {mapping.source!r} is mapped twice")
        mappings[mapping.source] = mapping
    return mappings


def _load(path: Path) -> WebhookMapping:
    document = read_yaml(path, what="webhook mapping", error=MappingFileError)
    if isinstance(document, dict):
        document.setdefault("source", path.stem)
    return validate(WebhookMapping, document, origin=str(path), error=MappingFileError)


class MappingError(ValueError):
    """The payload lacks what the mapping needs; `fields` name the paths."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{item['field']}: {item['message']}" for item in fields))
        self.fields = fields


@dataclass
class MappedActivity:
    activity_type: ActivityType
    event_name: str
    email: str | None
    user_id: str | None
    anonymous_id: str | None
    time: datetime | None
    properties: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    user_agent: str | None = None
    delivered_at: datetime | None = None
    flagged_bot: bool = False


_MISSING = object()


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted path (list items by index), or _MISSING."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def first(document: Any, paths: list[str]) -> tuple[str | None, Any]:
    """The first path with a value other than null or "", and that value."""
    for path in paths:
        value = lookup(document, path)
        if value is not _MISSING and value is not None and value != "":
            return path, value
    return None, None


def to_time(value: Any) -> datetime:
    """ISO 8601, or seconds / milliseconds since the epoch (numbers or digit strings)."""
    if isinstance(value, bool):
        raise ValueError("not a time")
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        value = float(value)
    if isinstance(value, int | float):
        seconds = value / 1000 if value >= EPOCH_MILLIS_FROM else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError) as exc:
            raise ValueError("not a time") from exc
    try:
        return parse_time(value)
    except ValidationError as exc:
        raise ValueError("not a time") from exc


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _identity_at(
    event: Any, paths: list[str], where: str, problems: list[dict[str, str]]
) -> tuple[str | None, str | None]:
    """(path, value) of an identity field: refused, naming the path, when it holds a control
    character or is too long to be a key."""
    path, value = first(event, paths)
    if path is None:
        return None, None
    text = str(value)
    problem = id_problem(text)
    if problem is None and len(text) > MAX_ID_LENGTH:
        problem = f"longer than {MAX_ID_LENGTH} characters"
    if problem is not None:
        problems.append({"field": where + path, "message": problem})
        return path, None
    return path, text


def _time_at(document: Any, paths: list[str], problems: list[dict[str, str]]) -> datetime | None:
    path, value = first(document, paths)
    if path is None:
        return None
    try:
        return to_time(value)
    except ValueError:
        problems.append({"field": path, "message": f"not a time: {str(value)[:50]!r}"})
        return None


def _activity(
    mapping: WebhookMapping, event: Any, where: str, problems: list[dict[str, str]]
) -> tuple[ActivityType, str] | None:
    if mapping.activity is not None and not mapping.type:
        _, name = first(event, mapping.event_name)
        return mapping.activity, str(name or mapping.activity.value)
    path, value = first(event, mapping.type)
    if path is None:
        problems.append({"field": where + " | ".join(mapping.type), "message": "missing"})
        return None
    type_name = str(value)
    _, name = first(event, mapping.event_name)
    if type_name in mapping.types:
        return mapping.types[type_name], str(name or type_name)
    if mapping.activity is not None:
        return mapping.activity, str(name or type_name)
    if mapping.unmapped == "reject":
        problems.append({"field": where + path, "message": f"unmapped event type {type_name!r}"})
        return None
    return ActivityType.CUSTOM, str(name or type_name)


def _values(event: Any, paths: dict[str, list[str]]) -> dict[str, Any]:
    result = {}
    for name, candidates in paths.items():
        path, value = first(event, candidates)
        if path is not None:
            result[name] = value
    return result


def map_event(mapping: WebhookMapping, event: Any, where: str = "") -> MappedActivity:
    """One event of a payload as an activity; MappingError names every missing path."""
    problems: list[dict[str, str]] = []
    if not isinstance(event, dict):
        raise MappingError([{"field": where.rstrip(".") or "(body)", "message": "not an object"}])
    activity = _activity(mapping, event, where, problems)
    email_path, email_value = first(event, mapping.email)
    email = None
    if email_path is not None:
        try:
            email = checked_email([(where + email_path, email_value)])
        except InvalidEmail as exc:
            problems.append({"field": exc.field, "message": "not a valid email address"})
    user_path, user_id = _identity_at(event, mapping.user_id, where, problems)
    anonymous_path, anonymous_id = _identity_at(event, mapping.anonymous_id, where, problems)
    if email_path is None and user_path is None and anonymous_path is None:
        tried = [*mapping.email, *mapping.user_id, *mapping.anonymous_id]
        problems.append(
            {"field": where + " | ".join(tried), "message": "no identity: none of these is present"}
        )
    time = _time_at(event, mapping.time, problems)
    delivered_at = _time_at(event, mapping.delivered_at, problems)
    if problems or activity is None:
        raise MappingError(
            [{"field": item["field"], "message": item["message"]} for item in problems]
        )
    _, user_agent = first(event, mapping.user_agent)
    _, bot = first(event, mapping.bot)
    return MappedActivity(
        activity_type=activity[0],
        event_name=activity[1],
        email=email,
        user_id=user_id,
        anonymous_id=anonymous_id,
        time=time,
        properties=_values(event, mapping.properties),
        attributes=_values(event, mapping.attributes),
        user_agent=_text(user_agent),
        delivered_at=delivered_at,
        flagged_bot=bot is True or str(bot).lower() == "true",
    )


def map_payload(mapping: WebhookMapping, payload: Any) -> list[MappedActivity]:
    """Every event of a webhook payload; one unreadable event refuses the payload."""
    listed = lookup(payload, mapping.events) if mapping.events else _MISSING
    if listed is not _MISSING:
        if not isinstance(listed, list) or not listed:
            raise MappingError([{"field": str(mapping.events), "message": "a non-empty list"}])
        events, prefix = listed, f"{mapping.events}."
    elif isinstance(payload, list):
        events, prefix = payload, ""
        if not events:
            raise MappingError([{"field": "(body)", "message": "an empty list"}])
    else:
        return [map_event(mapping, payload)]
    mapped: list[MappedActivity] = []
    problems: list[dict[str, str]] = []
    for index, event in enumerate(events):
        try:
            mapped.append(map_event(mapping, event, f"{prefix}{index}."))
        except MappingError as exc:
            problems.extend(exc.fields)
    if problems:
        raise MappingError(problems)
    return mapped


def parse_form(body: bytes) -> dict[str, Any]:
    """A form-encoded body (Mailchimp's webhooks) as nested objects: `data[merges][FNAME]=x`
    becomes {"data": {"merges": {"FNAME": "x"}}}."""
    result: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        parts = [part for part in re.split(r"[\[\]]+", key) if part]
        if not parts:
            continue
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return result
