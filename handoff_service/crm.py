"""CRM status mappings (pure): one YAML file per CRM says where its webhook keeps the lead and
the lead's status, and which leadflow action (and reason code) each status value is.

Reps live in their CRM. When a rep changes a lead's status there (HubSpot's lead status
property, Salesforce's Lead Status, …) the CRM's webhook, relayed with a Standard Webhooks
signature, reaches `POST /webhooks/crm/{source}`, and the mapping turns each change into the
action a rep would take over HTTP (`handoff_service.actions`): the same checks, the same
`lead.status` event, with origin `crm:<source>`.

Paths are dotted (`lead.Owner.Email`, `0.propertyValue`), as in the gateway's webhook
mappings; a list of paths means "the first one present". A payload the mapping cannot read,
or a status value it does not know, raises `MappingError` naming the path and the value.

The lead is found by its leadflow id (`lead_id`), else its e-mail (`email`), else the CRM's
own id of the record (`record_id`), linked to a leadflow lead by an earlier change that
carried both (`link`: e.g. HubSpot's `propertyChange` on a `leadflow_lead_id` property).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from handoff_service.actions import CHANNELS, Channel, RepAction
from services.conditions import StrictModel
from services.gateway.clean import id_problem
from services.gateway.mapping import MappingError, Paths, first, lookup, to_time
from services.located_yaml import (
    ConfigFileError,
    Loc,
    located_error,
    parse_document,
    placed,
    validate_document,
)

StatusAction = Literal["accept", "reject", "contacted", "convert", "recycle", "ignore"]
"""What a CRM status value means in leadflow; `ignore`: a value leadflow does not act on
(HubSpot's NEW, say), answered 200 and recorded nowhere."""

SOURCE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
SECRET_PREFIX = "crm:"
"""A CRM's secret in LEADFLOW_WEBHOOK_SECRETS is named `crm:<source>`."""
LEAD_ID_LENGTH = 64
RECORD_ID_LENGTH = 200
TEXT_LENGTH = 200
NOTE_LENGTH = 2000


class CrmMappingError(ConfigFileError):
    """A CRM mapping that cannot be used; stops leadflow at start, naming file, line, field."""


def _steps(value: Any) -> Any:
    """`OPEN: accept` is short for `OPEN: [{action: accept}]`; one rule needs no list."""
    items = value if isinstance(value, list) else [value]
    return [{"action": item} if isinstance(item, str) else item for item in items]


class StatusRule(StrictModel):
    """What one of the CRM's status values means."""

    action: StatusAction
    reason: str | None = Field(
        default=None,
        description="The reason code (reject, recycle) when the change carries none.",
    )
    channel: Channel | None = Field(
        default=None, description="How the first touch was made (contacted), when not given."
    )


Steps = Annotated[tuple[StatusRule, ...], BeforeValidator(_steps), Field(min_length=1)]
"""What a status value means: one action, or several in order (`Closed - Converted` in a CRM
where reps never accept: `[accept, convert]`). Each is applied once, so a step already taken
(the lead was accepted before) is answered with its first result and emits nothing."""
Match = dict[str, Any]
"""Path -> a value or a list of values, one of which the payload's value must equal (as text,
ignoring case): `{subscriptionType: contact.propertyChange, propertyName: hs_lead_status}`."""


class LinkRule(StrictModel):
    """Changes that tell which leadflow lead a CRM record is (they carry no status)."""

    when: Match = Field(min_length=1)
    lead_id: Paths = Field(default_factory=list)
    email: Paths = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_a_lead(self) -> LinkRule:
        if not (self.lead_id or self.email):
            raise ValueError("a link gives lead_id or email: where the leadflow lead is")
        return self


class CrmMapping(StrictModel):
    """How one CRM's webhook payload becomes rep actions."""

    source: str = Field(pattern=SOURCE_PATTERN)
    description: str = ""
    changes: str | None = Field(
        default=None,
        description="Dotted path to a list of changes; when absent from a payload, the body "
        "is one change, or a list of changes when it is a JSON array.",
    )
    when: Match = Field(
        default_factory=dict,
        description="Which changes are status changes; the others are skipped (answered 200).",
    )
    link: LinkRule | None = None
    record_id: Paths = Field(default_factory=list, description="The CRM's id of the record.")
    lead_id: Paths = Field(default_factory=list, description="The leadflow lead id.")
    email: Paths = Field(default_factory=list, description="The lead's e-mail address.")
    status: Paths = Field(min_length=1, description="Where the new status value is.")
    statuses: dict[str, Steps] = Field(min_length=1)
    reason: Paths = Field(default_factory=list, description="The CRM's reason, if it has one.")
    reasons: dict[str, str] = Field(
        default_factory=dict, description="The CRM's reason values -> leadflow reason codes."
    )
    channel: Paths = Field(default_factory=list)
    channels: dict[str, Channel] = Field(
        default_factory=dict, description="The CRM's channel values -> call, email, meeting."
    )
    note: Paths = Field(default_factory=list)
    opportunity_id: Paths = Field(default_factory=list)
    amount: Paths = Field(default_factory=list)
    owner_email: Paths = Field(
        default_factory=list,
        description="The record owner's e-mail: the rep acting, who must hold the lead.",
    )
    actor: Paths = Field(default_factory=list, description="Who changed it in the CRM.")
    time: Paths = Field(default_factory=list, description="When it was changed.")

    @field_validator("statuses", "reasons", "channels")
    @classmethod
    def _distinct_ignoring_case(cls, values: dict[str, Any]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        for name in values:
            folded = name.casefold()
            if folded in seen:
                raise ValueError(f"'{name}' and '{seen[folded]}' differ only in case")
            seen[folded] = name
        return values

    @model_validator(mode="after")
    def _finds_a_lead(self) -> CrmMapping:
        if not (self.lead_id or self.email or self.record_id):
            raise ValueError("give lead_id, email or record_id: where the lead is")
        if self.link is not None and not self.record_id:
            raise ValueError("a link needs record_id: the CRM record it links")
        return self

    def steps_for(self, value: str) -> tuple[str, tuple[StatusRule, ...]] | None:
        """The mapping's spelling of a status value (case ignored) and what it means."""
        return _folded(self.statuses, value)


def _folded(table: Mapping[str, Any], value: str) -> tuple[str, Any] | None:
    if value in table:
        return value, table[value]
    folded = value.casefold()
    return next(((key, rule) for key, rule in table.items() if key.casefold() == folded), None)


# --- loading --------------------------------------------------------------------------------


def parse_crm_mapping(
    text: str, origin: str, *, source: str, reason_codes: Mapping[str, object]
) -> CrmMapping:
    """A mapping file's text, validated; its reason codes must be the routing file's."""
    root, document = parse_document(text, origin, what="CRM mapping", error=CrmMappingError)
    if isinstance(document, dict):
        document.setdefault("source", source)
    mapping = validate_document(
        CrmMapping, document, origin=origin, root=root, error=CrmMappingError
    )
    problems = list(_code_problems(mapping, reason_codes))
    if problems:
        raise located_error(
            CrmMappingError, origin, [placed(root, loc, message) for loc, message in problems]
        )
    return mapping


def _code_problems(
    mapping: CrmMapping, reason_codes: Mapping[str, object]
) -> Iterator[tuple[Loc, str]]:
    known = ", ".join(reason_codes) or "(none: the routing file lists no reason_codes)"
    for value, steps in mapping.statuses.items():
        if len(steps) > 1 and any(rule.action == "ignore" for rule in steps):
            yield ("statuses", value), "ignore stands alone, not among other steps"
        for position, rule in enumerate(steps):
            loc: Loc = ("statuses", value) if len(steps) == 1 else ("statuses", value, position)
            yield from _rule_problems(mapping, rule, loc, reason_codes, known)
    for value, code in mapping.reasons.items():
        if code not in reason_codes:
            yield (
                ("reasons", value),
                f"unknown reason code '{code}'; the routing file's are {known}",
            )


def _rule_problems(
    mapping: CrmMapping,
    rule: StatusRule,
    loc: Loc,
    reason_codes: Mapping[str, object],
    known: str,
) -> Iterator[tuple[Loc, str]]:
    if rule.reason is not None and rule.reason not in reason_codes:
        yield (
            (*loc, "reason"),
            f"unknown reason code '{rule.reason}'; the routing file's are {known}",
        )
    if rule.reason is not None and rule.action not in ("reject", "recycle"):
        yield (*loc, "reason"), f"{rule.action} takes no reason"
    if rule.channel is not None and rule.action != "contacted":
        yield (*loc, "channel"), f"{rule.action} takes no channel"
    if rule.action in ("reject", "recycle") and rule.reason is None and not mapping.reason:
        yield loc, f"{rule.action} needs a reason code: give `reason` here or a `reason` path"
    if rule.action == "contacted" and rule.channel is None and not mapping.channel:
        yield loc, "contacted needs a channel: give `channel` here or a `channel` path"


def load_crm_mappings(folder: Path, *, reason_codes: Mapping[str, object]) -> dict[str, CrmMapping]:
    """Every `*.yaml` in `folder`, by source (the file's `source`, else its stem)."""
    mappings: dict[str, CrmMapping] = {}
    if not folder.is_dir():
        return mappings
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CrmMappingError(f"cannot read CRM mapping {path}: {exc.strerror}") from exc
        mapping = parse_crm_mapping(text, str(path), source=path.stem, reason_codes=reason_codes)
        if mapping.source in mappings:
            raise CrmMappingError(f"{path}: source {mapping.source!r} is mapped twice")
        mappings[mapping.source] = mapping
    return mappings


# --- reading a payload ----------------------------------------------------------------------


@dataclass(frozen=True)
class LeadRef:
    """How a change names its lead; at least one is set. `field`: where, for errors."""

    field: str
    lead_id: str | None = None
    email: str | None = None
    record_id: str | None = None


@dataclass(frozen=True)
class StatusChange:
    """A status change a rep made in the CRM, as the leadflow action it is."""

    index: int
    field: str
    """Where the status value is in the payload (`0.propertyValue`)."""
    value: str
    """The CRM's status value, as the mapping spells it."""
    lead: LeadRef
    action: RepAction
    reason: str | None = None
    note: str | None = None
    channel: Channel | None = None
    opportunity_id: str | None = None
    amount: float | None = None
    owner_email: str | None = None
    actor: str | None = None
    time: datetime | None = None


@dataclass(frozen=True)
class RecordLink:
    """The CRM record `record_id` is the leadflow lead `lead`."""

    index: int
    record_id: str
    lead: LeadRef


@dataclass(frozen=True)
class Skipped:
    """A change that is no status change (another property), or a status leadflow ignores."""

    index: int
    why: str


Change = StatusChange | RecordLink | Skipped


def read_changes(mapping: CrmMapping, payload: Any) -> list[Change]:
    """Every change in a payload; MappingError names every path that cannot be read and every
    status value the mapping does not know, and then nothing of the payload is used."""
    listed = lookup(payload, mapping.changes) if mapping.changes else _MISSING
    if listed is not _MISSING:
        if not isinstance(listed, list) or not listed:
            raise MappingError([{"field": str(mapping.changes), "message": "a non-empty list"}])
        items, prefix = listed, f"{mapping.changes}."
    elif isinstance(payload, list):
        if not payload:
            raise MappingError([{"field": "(body)", "message": "an empty list"}])
        items, prefix = payload, ""
    else:
        items, prefix = [payload], ""
    changes: list[Change] = []
    problems: list[dict[str, str]] = []
    for index, item in enumerate(items):
        where = f"{prefix}{index}." if prefix or isinstance(payload, list) else ""
        try:
            changes.extend(_read_one(mapping, item, index, where))
        except MappingError as exc:
            problems.extend(exc.fields)
    if problems:
        raise MappingError(problems)
    return changes


_MISSING = lookup({}, "absent")
"""What `lookup` gives for a path the payload does not have."""


def _matches(item: Any, match: Match) -> bool:
    for path, wanted in match.items():
        found = lookup(item, path)
        if found is _MISSING or found is None:
            return False
        options = wanted if isinstance(wanted, list) else [wanted]
        if str(found).casefold() not in {str(option).casefold() for option in options}:
            return False
    return True


def _read_one(mapping: CrmMapping, item: Any, index: int, where: str) -> list[Change]:
    """One item of the payload: a link, a skipped change, or its status change's steps."""
    if not isinstance(item, dict):
        raise MappingError([{"field": where.rstrip(".") or "(body)", "message": "not an object"}])
    problems: list[dict[str, str]] = []
    if mapping.link is not None and _matches(item, mapping.link.when):
        record_id = _text_at(item, mapping.record_id, where, RECORD_ID_LENGTH, problems)
        lead = _lead_at(item, mapping.link.lead_id, mapping.link.email, where, problems)
        if record_id is None and not problems:
            _missing(problems, where, mapping.record_id)
        if problems or record_id is None or lead is None:
            raise MappingError(problems)
        return [RecordLink(index=index, record_id=record_id, lead=lead)]
    if mapping.when and not _matches(item, mapping.when):
        return [Skipped(index, "not a status change")]
    path, raw_status = first(item, mapping.status)
    if path is None:
        if any(lookup(item, each) is not _MISSING for each in mapping.status):
            return [Skipped(index, "the status was cleared")]
        _missing(problems, where, mapping.status)
        raise MappingError(problems)
    value = str(raw_status)
    found = mapping.steps_for(value)
    if found is None:
        known = ", ".join(mapping.statuses)
        raise MappingError(
            [
                {
                    "field": where + path,
                    "message": f"status {value!r} is not in the {mapping.source} mapping; "
                    f"it knows {known}",
                }
            ]
        )
    spelled, steps = found
    if steps[0].action == "ignore":
        return [Skipped(index, f"status {spelled!r} is ignored by the {mapping.source} mapping")]
    lead = _lead_at(item, mapping.lead_id, mapping.email, where, problems)
    record_id = _text_at(item, mapping.record_id, where, RECORD_ID_LENGTH, problems)
    if lead is None and record_id is not None:
        lead = LeadRef(field=where + _first_path(item, mapping.record_id), record_id=record_id)
    if lead is None and not problems:
        _missing(problems, where, [*mapping.lead_id, *mapping.email, *mapping.record_id])
    base = StatusChange(
        index=index,
        field=where + path,
        value=spelled,
        lead=lead or LeadRef(field=where),
        action="accept",
        note=_text_at(item, mapping.note, where, NOTE_LENGTH, problems),
        owner_email=_email_at(item, mapping.owner_email, where, problems),
        actor=_text_at(item, mapping.actor, where, TEXT_LENGTH, problems),
        time=_time_at(item, mapping.time, where, problems),
    )
    changes: list[Change] = []
    for rule in steps:
        assert rule.action != "ignore"  # refused with other steps when the file was read
        changes.append(
            replace(
                base,
                action=rule.action,
                reason=_reason(mapping, rule, item, where, problems),
                channel=_channel(mapping, rule, item, where, problems),
                opportunity_id=_step_text(
                    rule, "convert", item, mapping.opportunity_id, where, problems
                ),
                amount=_amount(item, mapping.amount, where, problems)
                if rule.action == "convert"
                else None,
            )
        )
    if problems or lead is None:
        raise MappingError(_distinct(problems))
    return changes


def _distinct(problems: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each problem once (a path read for several steps is reported once)."""
    seen: list[dict[str, str]] = []
    for problem in problems:
        if problem not in seen:
            seen.append(problem)
    return seen


def _step_text(
    rule: StatusRule,
    action: str,
    item: Any,
    paths: list[str],
    where: str,
    problems: list[dict[str, str]],
) -> str | None:
    """A text only the step `action` takes (the opportunity id of a conversion)."""
    if rule.action != action:
        return None
    return _text_at(item, paths, where, TEXT_LENGTH, problems)


def _missing(problems: list[dict[str, str]], where: str, paths: list[str]) -> None:
    problems.append({"field": where + " | ".join(paths), "message": "missing"})


def _first_path(item: Any, paths: list[str]) -> str:
    path, _ = first(item, paths)
    return path or ""


def _text_at(
    item: Any, paths: list[str], where: str, limit: int, problems: list[dict[str, str]]
) -> str | None:
    path, value = first(item, paths)
    if path is None:
        return None
    if isinstance(value, dict | list):
        problems.append({"field": where + path, "message": "a text or a number"})
        return None
    text = str(value).strip()
    problem = id_problem(text)
    if problem is None and len(text) > limit:
        problem = f"longer than {limit} characters"
    if problem is not None:
        problems.append({"field": where + path, "message": problem})
        return None
    return text or None


def _email_at(
    item: Any, paths: list[str], where: str, problems: list[dict[str, str]]
) -> str | None:
    path, value = first(item, paths)
    text = _text_at(item, paths, where, 320, problems)
    if text is None or path is None:
        return None
    local, at, domain = text.rpartition("@")
    if not at or not local or "." not in domain.strip(".") or " " in text:
        problems.append({"field": where + path, "message": f"not an e-mail address: {value!r}"})
        return None
    return text.casefold()


def _lead_at(
    item: Any,
    lead_paths: list[str],
    email_paths: list[str],
    where: str,
    problems: list[dict[str, str]],
) -> LeadRef | None:
    lead_id = _text_at(item, lead_paths, where, LEAD_ID_LENGTH, problems)
    if lead_id is not None:
        return LeadRef(field=where + _first_path(item, lead_paths), lead_id=lead_id)
    email = _email_at(item, email_paths, where, problems)
    if email is not None:
        return LeadRef(field=where + _first_path(item, email_paths), email=email)
    return None


def _reason(
    mapping: CrmMapping,
    rule: StatusRule,
    item: Any,
    where: str,
    problems: list[dict[str, str]],
) -> str | None:
    if rule.action not in ("reject", "recycle"):
        return None
    path, _ = first(item, mapping.reason)
    if path is None:
        if rule.reason is None:
            _missing(problems, where, mapping.reason)
        return rule.reason
    text = _text_at(item, mapping.reason, where, TEXT_LENGTH, problems)
    if text is None:
        return None
    found = _folded(mapping.reasons, text)
    if found is not None:
        code: str = found[1]
        return code
    if mapping.reasons:
        known = ", ".join(mapping.reasons)
        problems.append(
            {
                "field": where + path,
                "message": f"reason {text!r} is not in the {mapping.source} mapping's "
                f"reasons; it knows {known}",
            }
        )
        return None
    return text  # the CRM sends leadflow's codes: the action checks them


def _channel(
    mapping: CrmMapping,
    rule: StatusRule,
    item: Any,
    where: str,
    problems: list[dict[str, str]],
) -> Channel | None:
    if rule.action != "contacted":
        return None
    path, value = first(item, mapping.channel)
    if path is None:
        if rule.channel is None:
            _missing(problems, where, mapping.channel)
        return rule.channel
    text = str(value)
    found = _folded(mapping.channels, text)
    if found is not None:
        channel: Channel = found[1]
        return channel
    named = next((channel for channel in CHANNELS if channel == text.casefold()), None)
    if named is not None:
        return named
    if rule.channel is not None:
        return rule.channel
    problems.append(
        {
            "field": where + path,
            "message": f"channel {text!r} is not call, email or meeting, nor in the mapping's "
            "channels",
        }
    )
    return None


def _amount(
    item: Any, paths: list[str], where: str, problems: list[dict[str, str]]
) -> float | None:
    path, value = first(item, paths)
    if path is None:
        return None
    try:
        amount = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        amount = math.nan
    if not math.isfinite(amount) or amount < 0:
        problems.append({"field": where + path, "message": "not an amount: a number, 0 or more"})
        return None
    return amount


def _time_at(
    item: Any, paths: list[str], where: str, problems: list[dict[str, str]]
) -> datetime | None:
    path, value = first(item, paths)
    if path is None:
        return None
    try:
        return to_time(value)
    except ValueError:
        problems.append({"field": where + path, "message": f"not a time: {str(value)[:50]!r}"})
        return None
