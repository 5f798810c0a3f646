"""Business-calendar arithmetic (pure): when is "4 business hours after T", and how much
business time lies between two instants?

A calendar is a time zone, working hours per weekday (several ranges a day allowed, given in
local wall time), and holidays: dates, and yearly rules such as the fourth Thursday of
November. Every computation turns a day's ranges into instants first and measures in UTC,
so a day on which the clocks change counts the time that really passes (a 09:00-17:00 day
is 8 hours either side of a change at 02:00; a 00:00-24:00 day is 23 or 25 hours).

The built-in `always` calendar is every hour of every day: its durations are wall time.
"""

from __future__ import annotations

import calendar as gregorian
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 24 * 60
SEARCH_DAYS = 3700
"""How far (about ten years) arithmetic looks for working time before giving up."""

Span = tuple[int, int]
"""Working time within a local day, in minutes from midnight: [start, end), end ≤ 24:00."""

ALWAYS = "always"


def zone_named(name: str) -> ZoneInfo:
    """The IANA time zone `name`; ValueError naming it when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone '{name}': use an IANA name such as America/New_York"
        ) from exc


# --- holidays ---------------------------------------------------------------------------------

MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_DAY_WORDS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ORDINALS = {
    "first": 1,
    "1st": 1,
    "second": 2,
    "2nd": 2,
    "third": 3,
    "3rd": 3,
    "fourth": 4,
    "4th": 4,
    "fifth": 5,
    "5th": 5,
    "last": -1,
}


def _month(word: str) -> int | None:
    word = word.casefold()
    for number, name in enumerate(MONTHS, start=1):
        if len(word) >= 3 and name.startswith(word):
            return number
    return None


def _weekday(word: str) -> int | None:
    word = word.casefold()
    for number, name in enumerate(_DAY_WORDS):
        if len(word) >= 3 and name.startswith(word):
            return number
    return None


@dataclass(frozen=True)
class YearlyDate:
    """The same date every year, e.g. December 25 (February 29 only in leap years)."""

    month: int
    day: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12:
            raise ValueError(f"{self.month} is not a month")
        longest = gregorian.monthrange(2024, self.month)[1]  # a leap year: Feb 29 allowed
        if not 1 <= self.day <= longest:
            raise ValueError(f"{MONTHS[self.month - 1]} has no day {self.day}")

    def on(self, year: int) -> date | None:
        if self.day > gregorian.monthrange(year, self.month)[1]:
            return None
        return date(year, self.month, self.day)

    def __str__(self) -> str:
        return f"{MONTHS[self.month - 1]} {self.day}"


@dataclass(frozen=True)
class NthWeekday:
    """A weekday of a month every year: the fourth Thursday of November (`nth` 4), the last
    Monday of May (`nth` -1)."""

    nth: int
    weekday: int
    month: int

    def __post_init__(self) -> None:
        if self.nth not in (-1, 1, 2, 3, 4, 5) or not 0 <= self.weekday <= 6:
            raise ValueError("not a weekday of a month")
        if not 1 <= self.month <= 12:
            raise ValueError(f"{self.month} is not a month")

    def on(self, year: int) -> date | None:
        days_in_month = gregorian.monthrange(year, self.month)[1]
        if self.nth == -1:
            last = date(year, self.month, days_in_month)
            return last - timedelta(days=(last.weekday() - self.weekday) % 7)
        first = date(year, self.month, 1)
        day = 1 + (self.weekday - first.weekday()) % 7 + 7 * (self.nth - 1)
        return date(year, self.month, day) if day <= days_in_month else None

    def __str__(self) -> str:
        ordinal = next(word for word, n in _ORDINALS.items() if n == self.nth)
        return f"{ordinal} {_DAY_WORDS[self.weekday]} of {MONTHS[self.month - 1]}"


YearlyRule = YearlyDate | NthWeekday
Holiday = date | YearlyRule

_NTH_WEEKDAY = re.compile(r"(\w+)\s+(\w+)\s+(?:of|in)\s+(\w+)")
_MONTH_DAY = re.compile(r"([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?")
_DAY_MONTH = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?\s+([a-z]+)\.?")
_NUMERIC_MONTH_DAY = re.compile(r"(\d{1,2})-(\d{1,2})")

HOLIDAY_FORMS = (
    "a date (2026-12-24), a date every year (december 25, 12-25) or a weekday of a month "
    "every year (fourth thursday of november, last monday of may)"
)


def parse_holiday(value: date | str) -> Holiday:
    """A holiday as a person writes it: `2026-12-24` (that day), `december 25` or `12-25`
    (every year), `fourth thursday of november` or `last monday of may` (every year)."""
    if isinstance(value, datetime):
        raise ValueError(f"{value} is a moment; a holiday is a whole day: {HOLIDAY_FORMS}")
    if isinstance(value, date):
        return value
    text = " ".join(str(value).strip().casefold().split())
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    rule = _yearly_rule(text)
    if rule is None:
        raise ValueError(f"'{value}' is not a holiday: write {HOLIDAY_FORMS}")
    return rule


def _yearly_rule(text: str) -> YearlyRule | None:
    found = _NTH_WEEKDAY.fullmatch(text)
    if found:
        nth, weekday, month = _ORDINALS.get(found[1]), _weekday(found[2]), _month(found[3])
        if nth is None or weekday is None or month is None:
            return None
        return NthWeekday(nth, weekday, month)
    for pattern, month_group, day_group in ((_MONTH_DAY, 1, 2), (_DAY_MONTH, 2, 1)):
        found = pattern.fullmatch(text)
        if found:
            month = _month(found[month_group])
            return None if month is None else YearlyDate(month, int(found[day_group]))
    found = _NUMERIC_MONTH_DAY.fullmatch(text)
    if found:
        return YearlyDate(int(found[1]), int(found[2]))
    return None


@lru_cache(maxsize=4096)
def _yearly_holidays(rules: tuple[YearlyRule, ...], year: int) -> frozenset[date]:
    return frozenset(day for rule in rules if (day := rule.on(year)) is not None)


# --- the calendar -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BusinessCalendar:
    """Working hours in a time zone, per weekday, minus holidays.

    `week` holds the ranges of each weekday, Monday first; a day without ranges is a day off.
    """

    name: str
    timezone: str = "UTC"
    week: tuple[tuple[Span, ...], ...] = ((),) * 7
    holidays: frozenset[date] = field(default_factory=frozenset)
    yearly: tuple[YearlyRule, ...] = ()
    always: bool = False

    def __post_init__(self) -> None:
        zone_named(self.timezone)
        if len(self.week) != 7:
            raise ValueError("a week has seven days")
        for spans in self.week:
            for start, end in spans:
                if not 0 <= start < end <= DAY_MINUTES:
                    raise ValueError(f"{start}-{end} is not a range of minutes within a day")
        if not self.always and not any(self.week):
            raise ValueError("a calendar needs working hours on at least one weekday")

    @property
    def zone(self) -> ZoneInfo:
        return zone_named(self.timezone)

    def is_holiday(self, day: date) -> bool:
        return day in self.holidays or day in _yearly_holidays(self.yearly, day.year)

    def spans(self, day: date) -> list[tuple[datetime, datetime]]:
        """The working time of local `day` as UTC instants [start, end), in order; empty on
        a day off or a holiday. A range that a change of clocks leaves empty is left out."""
        if self.always:
            zone = self.zone
            return [(_instant(day, 0, zone), _instant(day, DAY_MINUTES, zone))]
        if self.is_holiday(day):
            return []
        zone = self.zone
        result = []
        for start, end in self.week[day.weekday()]:
            begin, finish = _instant(day, start, zone), _instant(day, end, zone)
            if begin < finish:
                result.append((begin, finish))
        return result

    def day_length(self, day: date) -> timedelta:
        return sum((end - start for start, end in self.spans(day)), timedelta())

    def is_business_day(self, day: date) -> bool:
        return bool(self.spans(day))


ALWAYS_CALENDAR = BusinessCalendar(
    name=ALWAYS, timezone="UTC", week=(((0, DAY_MINUTES),),) * 7, always=True
)
"""Every hour of every day, in UTC: business time is wall time."""


def weekly_calendar(
    name: str,
    timezone: str,
    hours: Mapping[str, Sequence[Span]],
    holidays: Sequence[Holiday] = (),
) -> BusinessCalendar:
    """A calendar from hours per weekday name (`mon` … `sun`) and holidays of any form."""
    week = tuple(tuple(sorted(hours.get(day, ()))) for day in WEEKDAYS)
    return BusinessCalendar(
        name=name,
        timezone=timezone,
        week=week,
        holidays=frozenset(day for day in holidays if isinstance(day, date)),
        yearly=tuple(rule for rule in holidays if not isinstance(rule, date)),
    )


def _instant(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """Local wall time `minute` of `day` as a UTC instant. A wall time a change of clocks
    skips is read with the offset before the change, as the zone's first reading (fold 0)."""
    if minute >= DAY_MINUTES:
        day, minute = day + timedelta(days=1), minute - DAY_MINUTES
    local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
    return local.astimezone(UTC)


def _aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return moment.astimezone(UTC)


def _local_day(calendar: BusinessCalendar, moment: datetime) -> date:
    return moment.astimezone(calendar.zone).date()


def _days_from(first: date) -> Iterator[date]:
    for offset in range(SEARCH_DAYS):
        yield first + timedelta(days=offset)


def _no_working_time() -> ValueError:
    return ValueError("the calendar has no working time in the next ten years")


def add_business_time(calendar: BusinessCalendar, start: datetime, duration: timedelta) -> datetime:
    """The moment `duration` of working time after `start` has elapsed on `calendar`, in
    `start`'s time zone.

    Time outside working hours does not count: an MQL handed over on Friday evening with a
    four-hour deadline is due on Monday at 13:00 on a 9-to-5 calendar. A deadline that falls
    on the end of a range is that end (17:00), not the next opening.
    """
    begin = _aware(start, "start")
    if duration < timedelta():
        raise ValueError("a duration cannot be negative")
    if calendar.always or not duration:
        return (begin + duration).astimezone(start.tzinfo)
    remaining = duration
    for day in _days_from(_local_day(calendar, begin)):
        for span_start, span_end in calendar.spans(day):
            if span_end <= begin:
                continue
            opened = max(begin, span_start)
            available = span_end - opened
            if remaining <= available:
                return (opened + remaining).astimezone(start.tzinfo)
            remaining -= available
    raise _no_working_time()


def business_time_between(calendar: BusinessCalendar, start: datetime, end: datetime) -> timedelta:
    """The working time on `calendar` from `start` to `end` (zero when `end` is not later)."""
    begin, finish = _aware(start, "start"), _aware(end, "end")
    if finish <= begin:
        return timedelta()
    if calendar.always:
        return finish - begin
    total = timedelta()
    last = _local_day(calendar, finish)
    for day in _days_from(_local_day(calendar, begin)):
        if day > last:
            return total
        for span_start, span_end in calendar.spans(day):
            overlap = min(span_end, finish) - max(span_start, begin)
            if overlap > timedelta():
                total += overlap
    return total


def add_business_days(calendar: BusinessCalendar, start: datetime, days: int) -> datetime:
    """The same point of the working day `days` business days after `start`'s, in `start`'s
    time zone: Monday 15:00 plus 2 days is Wednesday 15:00 on a 9-to-5 calendar.

    A start outside working hours counts from the next working time, and the result is then
    the end of a working day: Saturday plus 1 day is Monday 17:00, as is Friday 18:00 plus 1.
    When the later day is shorter than the point reached in the first, its end is the answer.
    On the `always` calendar a day is 24 hours.
    """
    begin = _aware(start, "start")
    if days < 0:
        raise ValueError("a number of days cannot be negative")
    if calendar.always or days == 0:
        return (begin + timedelta(days=days)).astimezone(start.tzinfo)
    first, into = _place_in_working_day(calendar, begin)
    business_days = _business_days(calendar, first)
    if not into:  # at an opening: the end of the days-th working day, counting the first
        target = _nth(business_days, days - 1)
        return calendar.spans(target)[-1][1].astimezone(start.tzinfo)
    target = _nth(business_days, days)
    spans = calendar.spans(target)
    answer = add_business_time(calendar, spans[0][0], into)
    return min(answer, spans[-1][1]).astimezone(start.tzinfo)


def _place_in_working_day(calendar: BusinessCalendar, moment: datetime) -> tuple[date, timedelta]:
    """The working day `moment` counts in, and how much of that day's working time lies
    before it. After a day's close, the next working day counts, from its opening."""
    for day in _days_from(_local_day(calendar, moment)):
        spans = calendar.spans(day)
        if spans and moment < spans[-1][1]:
            return day, business_time_between(calendar, spans[0][0], moment)
    raise _no_working_time()


def _business_days(calendar: BusinessCalendar, first: date) -> Iterator[date]:
    for day in _days_from(first):
        if calendar.is_business_day(day):
            yield day


def _nth(days: Iterator[date], index: int) -> date:
    for position, day in enumerate(days):
        if position == index:
            return day
    raise _no_working_time()
