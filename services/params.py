"""Path and query values of the management API, checked before any query runs.

Every router takes its ids, pages, scores and times through these types, so a value the
database cannot take (a NUL byte, an id longer than its column, an offset past BIGINT, a
time outside the calendar once in UTC) is a 422 naming the parameter, never a 500.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, AwareDatetime
from pydantic_core import PydanticCustomError

from schemas.lifecycle import LeadStage

LEAD_ID_LENGTH = 64
JOB_ID_LENGTH = 64
RULEBOOK_VERSION_LENGTH = 100
MAX_OFFSET = 1_000_000_000
MAX_PAGE = 500

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: str) -> str:
    """Refuses C0/C1 control characters (NUL included): no id or filter value holds one."""
    found = _CONTROL.search(value)
    if found is not None:
        raise PydanticCustomError(
            "control_character",
            "must not contain control characters (found U+{code})",
            {"code": f"{ord(found.group()):04X}"},
        )
    return value


def storable(value: datetime) -> datetime:
    """Refuses a time that has no UTC equivalent (e.g. 0001-01-01T00:00+05:00)."""
    try:
        value.astimezone(UTC)
    except OverflowError as exc:
        raise PydanticCustomError("time_range", "out of range once converted to UTC") from exc
    return value


Printable = Annotated[str, AfterValidator(printable)]
Instant = Annotated[AwareDatetime, AfterValidator(storable)]

LeadId = Annotated[
    str,
    Path(min_length=1, max_length=LEAD_ID_LENGTH, description="A lead id (or a merged-away one)"),
    AfterValidator(printable),
]
JobId = Annotated[
    str,
    Path(min_length=1, max_length=JOB_ID_LENGTH, description="A re-apply job's id"),
    AfterValidator(printable),
]
RulebookVersion = Annotated[
    str,
    Path(min_length=1, max_length=RULEBOOK_VERSION_LENGTH, description="A rulebook version"),
    AfterValidator(printable),
]

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Leads to skip")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most leads in one page")]
Stage = Annotated[LeadStage | None, Query(description="A lead stage; any other value is a 422")]
Score = Annotated[float | None, Query(allow_inf_nan=False)]
Since = Annotated[Instant | None, Query(description="RFC 3339 time with an offset")]
