"""Business-calendar arithmetic (pure): when does "N business hours after T" fall?"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class BusinessCalendar(BaseModel):
    """Working hours in a time zone, on some weekdays, minus holidays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = "UTC"
    workdays: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    opens: time = time(9, 0)
    closes: time = time(17, 0)
    holidays: tuple[date, ...] = Field(default=())

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("workdays")
    @classmethod
    def _weekday_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [day for day in value if day not in WEEKDAYS]
        if unknown:
            raise ValueError(f"unknown weekday(s) {unknown}; use {', '.join(WEEKDAYS)}")
        if not value:
            raise ValueError("at least one workday is needed")
        return value

    @model_validator(mode="after")
    def _opens_before_closes(self) -> BusinessCalendar:
        if self.opens >= self.closes:
            raise ValueError("opens must be before closes")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_workday(self, day: date) -> bool:
        return WEEKDAYS[day.weekday()] in self.workdays and day not in self.holidays


def add_business_time(calendar: BusinessCalendar, start: datetime, duration: timedelta) -> datetime:
    """The moment `duration` of working time after `start` has elapsed on `calendar`.

    Time outside working hours does not count: an MQL handed over on Friday evening with a
    four-hour deadline is due on Monday at 13:00 on a 9-to-5 calendar.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    zone = calendar.zone
    local = start.astimezone(zone)
    remaining = duration
    day = local.date()
    cursor = local
    for _ in range(3700):  # ten years of days bounds a misconfigured calendar
        if calendar.is_workday(day):
            opens = datetime.combine(day, calendar.opens, tzinfo=zone)
            closes = datetime.combine(day, calendar.closes, tzinfo=zone)
            begin = max(cursor, opens)
            if begin < closes:
                available = closes - begin
                if remaining <= available:
                    return (begin + remaining).astimezone(start.tzinfo)
                remaining -= available
        day += timedelta(days=1)
        cursor = datetime.combine(day, time(0, 0), tzinfo=zone)
    raise ValueError("calendar has no working time in the next ten years")
