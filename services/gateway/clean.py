"""Input hygiene (pure): whatever passes the gateway can be encoded as UTF-8 and stored by
PostgreSQL, whose text and JSONB types refuse NUL.

Identity values and ids are refused when they hold a control character or a lone surrogate:
cleaning one would silently make it someone else's. Every other string (event names,
properties, traits, context, dict keys) is cleaned: control characters other than tab, newline
and carriage return are removed, and lone surrogates (JSON "\\ud800") become U+FFFD. Every
activity leadflow produces is built by `activity_event`, so nothing skips the cleaning."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from schemas.envelope import CloudEvent
from schemas.events import ActivityData, ActivityType, Identity
from schemas.registry import ACTIVITY
from services.codec import envelope

_NOT_AN_ID = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_REMOVED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_UNCLEAN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

MAX_DEPTH = 32
"""How deeply a request body's JSON (or a form's bracketed keys) may nest. Segment's payloads
are shallow; the limit keeps every produced event well inside what consumers parse (pydantic's
JSON parser stops at about 250 levels) and what the cleaning walks."""


def id_problem(value: str) -> str | None:
    """Why `value` cannot be an identity value or an id, or None when it can."""
    found = _NOT_AN_ID.search(value)
    if found is None:
        return None
    return f"contains U+{ord(found.group()):04X}: no control characters or lone surrogates"


def require_clean_id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


CleanId = Annotated[str, AfterValidator(require_clean_id)]
"""A string refused (ValueError, so a field error) when it holds a control character."""


def clean_text(value: str) -> str:
    if _UNCLEAN.search(value) is None:
        return value
    return _SURROGATE.sub("\ufffd", _REMOVED.sub("", value))


def _clean_if_text(value: object) -> object:
    return clean_text(value) if isinstance(value, str) else value


CleanText = Annotated[str, BeforeValidator(_clean_if_text)]
"""A free string, cleaned before it is validated (pydantic refuses lone surrogates)."""


def clean_value(value: Any) -> Any:
    """A JSON value with every string in it (dict keys too) cleaned; other values as they are."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(key)): clean_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_value(item) for item in value]
    return value


def depth(value: Any) -> int:
    """How deeply a JSON value nests (a scalar is 0), without recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
        pending.extend((child, level + 1) for child in children)
    return deepest


def activity_event(
    *,
    event_id: str,
    source: str,
    time: datetime,
    identity: Identity,
    activity_type: ActivityType,
    event_name: str,
    properties: dict[str, Any],
    attributes: dict[str, Any],
    context: dict[str, Any],
    channel: str,
    received_at: datetime,
    bot_reason: str | None = None,
) -> CloudEvent[Any]:
    """The `lead.activity` event, its free strings cleaned: the one way leadflow builds one (the
    gateway's ways in, the benchmark, the tests). An event with a `bot_reason` (from
    services.gateway.bots.detect) is flagged: `is_bot`, and the reason as `context.bot_reason`.
    The identity is not cleaned: the contract's `Identity` refuses control characters, and each
    way in refused them naming its field. ValueError for an unclean `event_id` (likewise)."""
    if bot_reason:
        context = {**context, "bot_reason": bot_reason}
    data = ActivityData(
        activity_type=activity_type,
        event_name=clean_text(event_name),
        identity=identity,
        properties=clean_value(properties),
        attributes=clean_value(attributes),
        context=clean_value(context),
        channel=clean_text(channel),
        received_at=received_at,
        is_bot=bool(bot_reason),
    )
    return envelope(
        ACTIVITY,
        event_id=require_clean_id(event_id),
        source=clean_text(source),
        type_=f"lead.activity.{activity_type.value}",
        time=time,
        subject=identity.key(),
        data=data,
    )
