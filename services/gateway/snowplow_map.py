"""The Snowplow event map (pure): which leadflow activity a structured event (`e=se`) or a
self-describing event (`e=ue`) becomes, read from one YAML file (`LEADFLOW_SNOWPLOW_MAPPING`,
shipped as examples/snowplow.yaml). Self-describing events are keyed by their schema's vendor
and name (`com.snowplowanalytics.snowplow/submit_form`), whatever its version; structured
events match on category and action, first rule first. What the file does not map is kept as a
custom activity named after the event (the schema's name, or the structured event's action),
so a rule can still match it by `event_name`. A file that does not validate stops leadflow at
start, naming the file, the line and the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from schemas.events import ActivityType
from services.located_yaml import ConfigFileError, parse_document, validate_document

SCHEMA_KEY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
IGLU_URI = re.compile(r"^iglu:([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/jsonschema/[0-9]+-[0-9]+-[0-9]+$")
STRUCTURED_FIELDS = {
    "category": "se_ca",
    "action": "se_ac",
    "label": "se_la",
    "property": "se_pr",
    "value": "se_va",
}
"""A structured event's fields, by the names the map uses, and their tracker-protocol keys."""


class SnowplowMapError(ConfigFileError):
    """The Snowplow map cannot be used; stops leadflow at start."""


def _lower_list(value: object) -> object:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [item.strip().lower() if isinstance(item, str) else item for item in value]
    return value


Names = Annotated[list[str], BeforeValidator(_lower_list)]


class SelfDescribingRule(BaseModel):
    """How events of one schema become activities. Paths are dotted, into the event's `data`
    (`formId`, `elements.0.value`)."""

    model_config = ConfigDict(extra="forbid")

    activity: ActivityType
    event_name: str | None = Field(
        default=None, min_length=1, max_length=200, description="Default: the schema's name."
    )
    properties: dict[str, str] = Field(
        default_factory=dict, description="Activity property -> path in the event's data."
    )
    email: str | None = Field(default=None, description="Path to the person's email address.")
    user_id: str | None = Field(default=None, description="Path to the person's user id.")
    attributes: dict[str, str] = Field(
        default_factory=dict, description="Lead attribute -> path in the event's data."
    )
    form_fields: str | None = Field(
        default=None,
        description="Path to a list of form fields ({name, value, type}), as the form-tracking "
        "plugin sends them: an email field gives the person, the others lead attributes.",
    )
    copy_data: bool = Field(
        default=True, description="Keep the event's other top-level data fields as properties."
    )


class StructuredRule(BaseModel):
    """A structured event (`e=se`) matched by category and action (case-insensitive; a list
    means any of them; absent means any)."""

    model_config = ConfigDict(extra="forbid")

    category: Names = Field(default_factory=list)
    action: Names = Field(default_factory=list)
    activity: ActivityType
    event_name: str | None = Field(default=None, min_length=1, max_length=200)
    properties: dict[str, str] = Field(
        default_factory=dict,
        description="Activity property -> the structured field that gives it "
        "(category, action, label, property, value).",
    )

    @field_validator("properties")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        for name, field in value.items():
            if field not in STRUCTURED_FIELDS:
                raise ValueError(f"{name}: {field!r} is not one of {', '.join(STRUCTURED_FIELDS)}")
        return value

    def matches(self, category: str | None, action: str | None) -> bool:
        return (not self.category or (category or "").strip().lower() in self.category) and (
            not self.action or (action or "").strip().lower() in self.action
        )


class SnowplowMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    self_describing: dict[str, SelfDescribingRule] = Field(default_factory=dict)
    structured: list[StructuredRule] = Field(default_factory=list)

    @field_validator("self_describing")
    @classmethod
    def _schema_keys(cls, value: dict[str, SelfDescribingRule]) -> dict[str, SelfDescribingRule]:
        for key in value:
            if not SCHEMA_KEY.match(key):
                raise ValueError(f"{key!r}: key a schema by vendor/name, e.g. com.acme/signup")
        return value

    def for_schema(self, schema: str) -> tuple[str, SelfDescribingRule | None]:
        """The schema's name and its rule (None when unmapped); ValueError for a schema that
        is not an Iglu URI."""
        found = IGLU_URI.match(schema)
        if found is None:
            raise ValueError("not an Iglu schema URI (iglu:vendor/name/jsonschema/1-0-0)")
        vendor, name = found.groups()
        return name, self.self_describing.get(f"{vendor}/{name}")

    def for_structured(self, category: str | None, action: str | None) -> StructuredRule | None:
        return next((rule for rule in self.structured if rule.matches(category, action)), None)


def load_snowplow_map(path: Path) -> SnowplowMap:
    """The map in `path`; an empty map when the file does not exist (the defaults apply)."""
    if not path.exists():
        return SnowplowMap()
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SnowplowMapError(f"cannot read the Snowplow map {path}: {exc.strerror}") from exc
    root, document = parse_document(text, origin, what="Snowplow map", error=SnowplowMapError)
    return validate_document(
        SnowplowMap, document, origin=origin, root=root, error=SnowplowMapError
    )


def at_path(data: Any, path: str) -> Any:
    """The value at a dotted path (`elements.0.value`), or None."""
    value = data
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value
