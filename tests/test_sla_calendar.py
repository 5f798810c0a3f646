"""Business-calendar arithmetic, pure: working hours in a time zone (several ranges a day),
weekends, holidays (dates and yearly rules), changes of clocks in both directions, and the
built-in `always` calendar; and the durations the SLA file writes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sla_monitor.calendar import (
    ALWAYS_CALENDAR,
    NthWeekday,
    YearlyDate,
    add_business_days,
    add_business_time,
    business_time_between,
    parse_holiday,
    weekly_calendar,
    zone_named,
)
from sla_monitor.policy import Duration, Share, parse_duration, parse_warn_before

NINE_TO_FIVE = ((9 * 60, 17 * 60),)
WEEKDAYS_9_TO_5 = {day: NINE_TO_FIVE for day in ("mon", "tue", "wed", "thu", "fri")}
NY = weekly_calendar(
    "new-york",
    "America/New_York",
    WEEKDAYS_9_TO_5,
    [date(2026, 12, 25), NthWeekday(4, 3, 11)],  # Christmas 2026, Thanksgiving every year
)
NY_ZONE = zone_named("America/New_York")
LUNCH = weekly_calendar(
    "london",
    "Europe/London",
    {"mon": ((9 * 60, 12 * 60 + 30), (13 * 60 + 30, 17 * 60 + 30)), "fri": ((9 * 60, 12 * 60),)},
)
LONDON = zone_named("Europe/London")
AROUND_THE_CLOCK_NY = weekly_calendar(
    "ny-24x7", "America/New_York", {day: ((0, 24 * 60),) for day in ("sat", "sun", "mon")}
)
HOUR = timedelta(hours=1)


def ny(day: int, hour: int, minute: int = 0, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY_ZONE)


def london(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=LONDON)


@pytest.mark.parametrize(
    ("start", "hours", "due"),
    [
        (ny(23, 10), 4, ny(23, 14)),  # Monday morning: same day
        (ny(23, 15), 4, ny(24, 11)),  # rolls past 17:00 into Tuesday
        (ny(25, 16), 4, ny(27, 12)),  # Wednesday afternoon: Thanksgiving is skipped
        (ny(27, 16), 4, ny(30, 12)),  # Friday afternoon: Monday noon
        (ny(28, 12), 4, ny(30, 13)),  # Saturday: counts from Monday 09:00
        (ny(23, 7), 1, ny(23, 10)),  # before opening: counts from 09:00
        (ny(23, 13), 4, ny(23, 17)),  # ends at the close, not at the next opening
        (ny(24, 16, month=12), 2, ny(28, 10, month=12)),  # Christmas is a holiday
    ],
)
def test_business_hours_skip_nights_weekends_and_holidays(
    start: datetime, hours: int, due: datetime
) -> None:
    assert add_business_time(NY, start, timedelta(hours=hours)) == due
    assert business_time_between(NY, start, due) == timedelta(hours=hours)


def test_the_deadline_keeps_the_callers_time_zone() -> None:
    due = add_business_time(NY, datetime(2026, 11, 23, 15, tzinfo=UTC), 4 * HOUR)
    assert due == datetime(2026, 11, 23, 19, tzinfo=UTC)
    assert due.tzinfo == UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        add_business_time(NY, datetime(2026, 11, 23, 15), HOUR)


def test_a_day_of_several_ranges_skips_the_break() -> None:
    assert add_business_time(LUNCH, london(23, 11), 2 * HOUR) == london(23, 14)
    assert add_business_time(LUNCH, london(23, 12, 45), HOUR) == london(23, 14, 30)
    assert business_time_between(LUNCH, london(23, 9), london(23, 17, 30)) == 7.5 * HOUR
    # Monday 16:30 plus 2h: an hour on Monday, Tuesday to Thursday off, an hour on Friday
    assert add_business_time(LUNCH, london(23, 16, 30), 2 * HOUR) == london(27, 10)


def test_changes_of_clocks_count_the_time_that_really_passes() -> None:
    # New York springs forward on 2027-03-14 (Sunday, 02:00 -> 03:00): that day is 23 hours
    spring = datetime(2027, 3, 14, tzinfo=NY_ZONE)
    assert business_time_between(AROUND_THE_CLOCK_NY, spring, spring + timedelta(days=1)) == 23 * (
        HOUR
    )
    assert add_business_time(AROUND_THE_CLOCK_NY, ny(14, 1, month=3, year=2027), HOUR) == ny(
        14, 3, month=3, year=2027
    )
    # and falls back on 2026-11-01 (Sunday, 02:00 -> 01:00): 25 hours
    autumn = datetime(2026, 11, 1, tzinfo=NY_ZONE)
    assert (
        business_time_between(AROUND_THE_CLOCK_NY, autumn, datetime(2026, 11, 2, tzinfo=NY_ZONE))
        == 25 * HOUR
    )
    one_am = datetime(2026, 11, 1, 5, tzinfo=UTC)  # 01:00 EDT, the first 01:00
    assert add_business_time(AROUND_THE_CLOCK_NY, one_am, 2 * HOUR) == datetime(
        2026, 11, 1, 7, tzinfo=UTC
    )  # 02:00 EST: the 01:00 hour came twice
    # working hours away from the change keep their length on both days
    weekend_9_to_5 = weekly_calendar("w", "America/New_York", {"sun": NINE_TO_FIVE})
    for sunday in (datetime(2027, 3, 14, tzinfo=NY_ZONE), autumn):
        assert weekend_9_to_5.day_length(sunday.date()) == 8 * HOUR


def test_a_range_across_a_change_of_clocks_is_as_long_as_it_really_is() -> None:
    nights = weekly_calendar("nights", "America/New_York", {"sun": ((60, 4 * 60),)})
    assert nights.day_length(date(2027, 3, 14)) == 2 * HOUR  # 01:00-04:00, 02:00 never comes
    assert nights.day_length(date(2026, 11, 1)) == 4 * HOUR  # 01:00-02:00 happens twice
    gap = weekly_calendar("gap", "America/New_York", {"sun": ((120, 180),), "mon": NINE_TO_FIVE})
    assert gap.spans(date(2027, 3, 14)) == []  # 02:00-03:00 does not exist that day
    start = datetime(2027, 3, 14, 6, tzinfo=UTC)
    assert add_business_time(gap, start, HOUR) == datetime(2027, 3, 15, 14, tzinfo=UTC)


def test_holidays_by_date_and_by_yearly_rule() -> None:
    assert parse_holiday("fourth thursday of november") == NthWeekday(4, 3, 11)
    assert parse_holiday("4th Thu in Nov") == NthWeekday(4, 3, 11)
    assert parse_holiday("last monday of may") == NthWeekday(-1, 0, 5)
    assert parse_holiday("December 25") == YearlyDate(12, 25)
    assert parse_holiday("25 dec") == YearlyDate(12, 25)
    assert parse_holiday("12-25") == YearlyDate(12, 25)
    assert parse_holiday("2026-12-24") == date(2026, 12, 24)
    assert parse_holiday(date(2026, 12, 24)) == date(2026, 12, 24)
    assert NthWeekday(4, 3, 11).on(2026) == date(2026, 11, 26)
    assert NthWeekday(4, 3, 11).on(2027) == date(2027, 11, 25)
    assert NthWeekday(-1, 0, 5).on(2027) == date(2027, 5, 31)
    assert NthWeekday(5, 4, 2).on(2027) is None  # no fifth Friday in February 2027
    assert YearlyDate(2, 29).on(2027) is None and YearlyDate(2, 29).on(2028) == date(2028, 2, 29)
    assert NY.is_holiday(date(2027, 11, 25)) and not NY.is_holiday(date(2027, 11, 26))
    for bad in ("someday", "fifth of november", "february 30", "13-01", "9th monday of may"):
        with pytest.raises(ValueError, match=r"holiday|february|month"):
            parse_holiday(bad)
    with pytest.raises(ValueError, match="whole day"):
        parse_holiday(datetime(2026, 12, 24, 9, tzinfo=UTC))


def test_always_is_wall_time() -> None:
    start = datetime(2026, 11, 28, 23, 30, tzinfo=UTC)  # a Saturday night
    assert add_business_time(ALWAYS_CALENDAR, start, 4 * HOUR) == start + 4 * HOUR
    assert business_time_between(ALWAYS_CALENDAR, start, start + 50 * HOUR) == 50 * HOUR
    assert add_business_days(ALWAYS_CALENDAR, start, 2) == start + timedelta(days=2)
    assert business_time_between(ALWAYS_CALENDAR, start, start - HOUR) == timedelta()


@pytest.mark.parametrize(
    ("start", "days", "due"),
    [
        (ny(23, 15), 2, ny(25, 15)),  # Monday 15:00: Wednesday 15:00
        (ny(25, 15), 1, ny(27, 15)),  # over Thanksgiving
        (ny(28, 12), 1, ny(30, 17)),  # Saturday: the end of Monday
        (ny(27, 18), 1, ny(30, 17)),  # Friday evening: the end of Monday too
        (ny(23, 7), 1, ny(23, 17)),  # before Monday's opening: the end of Monday
        (ny(23, 9), 5, ny(30, 17)),  # a working week from an opening (Thanksgiving skipped)
    ],
)
def test_business_days_keep_the_point_of_the_working_day(
    start: datetime, days: int, due: datetime
) -> None:
    assert add_business_days(NY, start, days) == due


def test_a_shorter_day_ends_a_business_day_at_its_close() -> None:
    # Monday 16:30 London is 6.5 working hours into Monday; Friday has only 3
    assert add_business_days(LUNCH, london(23, 16, 30), 1) == london(27, 12)


CALENDARS = {
    calendar.name: calendar for calendar in (NY, LUNCH, AROUND_THE_CLOCK_NY, ALWAYS_CALENDAR)
}


@settings(max_examples=300, deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
    ),
    minutes=st.integers(min_value=0, max_value=60 * 24 * 20),
    name=st.sampled_from(sorted(CALENDARS)),
)
def test_between_undoes_add(start: datetime, minutes: int, name: str) -> None:
    calendar = CALENDARS[name]
    allowed = timedelta(minutes=minutes)
    due = add_business_time(calendar, start, allowed)
    assert due >= start
    assert business_time_between(calendar, start, due) == allowed


# --- durations as the SLA file writes them ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days", "time"),
    [
        ("45s", 0, timedelta(seconds=45)),
        ("30m", 0, timedelta(minutes=30)),
        ("4h", 0, timedelta(hours=4)),
        ("1.5h", 0, timedelta(minutes=90)),
        ("1h30m", 0, timedelta(minutes=90)),
        ("2d", 2, timedelta()),
        ("1d 4h", 1, timedelta(hours=4)),
    ],
)
def test_durations(text: str, days: int, time: timedelta) -> None:
    duration = parse_duration(text)
    assert (duration.days, duration.time, str(duration)) == (days, time, text)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("4", "not a duration"),
        (4, "give its unit"),
        ("4x", "not a duration"),
        ("0h", "longer than zero"),
        ("1.5d", "whole working days"),
        ("30m1h", "largest first"),
        ("", "not a duration"),
    ],
)
def test_bad_durations_say_how_to_write_them(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(value)


def test_a_duration_counts_days_then_hours_on_the_calendar() -> None:
    # Friday 16:00 plus a day is Monday 16:00; two more working hours end on Tuesday
    assert parse_duration("1d 2h").after(NY, ny(27, 16)) == ny(1, 10, month=12)
    assert parse_duration("4h").after(ALWAYS_CALENDAR, ny(28, 12)) == ny(28, 16)


def test_warn_before_is_a_duration_or_a_share() -> None:
    assert parse_warn_before("25%") == Share(fraction=0.25, text="25%")
    assert isinstance(parse_warn_before("1h"), Duration)
    for bad in ("0%", "100%", "soon"):
        with pytest.raises(ValueError):
            parse_warn_before(bad)
