"""Weekly working hours as the routing file and the SLA file write them (pure parsing).

`mon-fri: "09:00-12:00, 13:00-17:30"`, `sat: off`: days (`mon`, `monday`, or a range such as
`mon-fri`) to ranges of hours in minutes from midnight, checked for overlaps. Both files use
this one vocabulary so a rep's hours and a business calendar read the same way.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 24 * 60

_SPAN = re.compile(r"(\d{1,2})(?::(\d{2}))?\s*[-\u2013]\s*(\d{1,2})(?::(\d{2}))?")


def _span(value: Any) -> tuple[int, int]:
    """`"09:00-17:30"` -> minutes from midnight `(540, 1050)`; `24:00` ends the day."""
    if isinstance(value, int):  # YAML reads an unquoted 17:00 as the number 1020
        raise ValueError('a range of hours is text: write it as "09:00-17:00", in quotes')
    found = _SPAN.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None:
        raise ValueError(
            f"{value!r} is not a range of hours: write it as HH:MM-HH:MM, e.g. 09:00-17:00"
        )
    start, end = _minutes(found[1], found[2]), _minutes(found[3], found[4])
    if start >= DAY_MINUTES or end > DAY_MINUTES:
        raise ValueError(f"{value}: a day runs from 00:00 to 24:00")
    if start >= end:
        raise ValueError(
            f"{value}: the end must come after the start (a shift past midnight is two "
            "ranges, one on each day)"
        )
    return start, end


def _minutes(hours: str, minutes: str | None) -> int:
    number = int(minutes or 0)
    if number >= 60:
        raise ValueError(f"{hours}:{minutes} is not a time of day")
    return int(hours) * 60 + number


def span_text(span: tuple[int, int]) -> str:
    (start_h, start_m), (end_h, end_m) = divmod(span[0], 60), divmod(span[1], 60)
    return f"{start_h:02d}:{start_m:02d}-{end_h:02d}:{end_m:02d}"


SpanField = Annotated[tuple[int, int], BeforeValidator(_span), PlainSerializer(span_text)]


def _day_ranges(value: Any) -> Any:
    """`"09:00-12:00, 13:00-17:00"` or a list of ranges; `off` or `[]` for a day off."""
    if value is False:  # YAML reads an unquoted `off` as false
        return ()
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError('a range of hours is text: write it as "09:00-17:00", in quotes')
    if isinstance(value, str):
        text = value.strip()
        return () if text.casefold() == "off" else tuple(text.split(","))
    return value


def _no_overlap(spans: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    ordered = tuple(sorted(spans))
    for earlier, later in pairwise(ordered):
        if later[0] < earlier[1]:
            raise ValueError(f"{span_text(later)} overlaps {span_text(earlier)}")
    return ordered


DayHours = Annotated[
    tuple[SpanField, ...], BeforeValidator(_day_ranges), AfterValidator(_no_overlap)
]

_DAY_NAMES: dict[str, Weekday] = {
    **{day: day for day in WEEKDAYS},
    **dict(
        zip(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
            WEEKDAYS,
            strict=True,
        )
    ),
}


def days_of(key: str) -> tuple[Weekday, ...]:
    """`mon`, `monday` or a range such as `mon-fri`."""
    first, _, last = str(key).strip().casefold().partition("-")
    if first not in _DAY_NAMES or (last and last not in _DAY_NAMES):
        raise ValueError(f"'{key}' is not a day: use mon, tue, …, sun or a range such as mon-fri")
    start = WEEKDAYS.index(_DAY_NAMES[first])
    end = WEEKDAYS.index(_DAY_NAMES[last]) if last else start
    if end < start:
        raise ValueError(f"'{key}': a range of days runs forwards within a week, e.g. mon-fri")
    return WEEKDAYS[start : end + 1]
