"""The SLA file: business calendars, and the clocks sales promises to beat on every lead.

One YAML file (see `examples/sla.yaml`) in two sections:

* `calendars` — named business calendars: a time zone, working hours per weekday (several
  ranges a day allowed) and holidays (dates, and yearly rules such as `fourth thursday of
  november`). `always` (every hour of every day) is built in.
* `clocks` — `accept` (assignment → accept or reject), `first_touch` (assignment →
  contacted) and `qualify` (accept → convert, reject or recycle), each with a calendar and
  targets; a lead gets the first target whose `when` it meets (the rulebook's condition
  vocabulary, on the lead's details, grade, source, pool, …). A target gives the time
  allowed (`within: 4h`, in business time on the calendar), when to warn (`warn_before: 1h`
  or `25%`) and what a breach does (`on_breach: reassign | queue | notify | none`).

Validated like the rulebook: every problem is reported with the file, the line and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    EmailStr,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from services.conditions import (
    AttributesCheck,
    Condition,
    Conditions,
    StrictModel,
    all_conditions,
)
from services.located_yaml import (
    ConfigFileError,
    Loc,
    located_error,
    parse_document,
    placed,
    printable,
    validate_document,
)
from services.weekly_hours import DayHours, days_of, span_text
from sla_monitor.calendar import (
    ALWAYS,
    ALWAYS_CALENDAR,
    BusinessCalendar,
    Holiday,
    Span,
    add_business_days,
    add_business_time,
    business_time_between,
    parse_holiday,
    weekly_calendar,
    zone_named,
)
from sla_monitor.lifecycle import ClockName


class PolicyError(ConfigFileError):
    """An SLA file that cannot be used; the message names the file, the line and the field."""


OnBreach = Literal["reassign", "queue", "notify", "none"]

Name = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(printable)]
PolicyName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(printable)]
Text = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(printable)]


# --- durations ----------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}
DURATION_FORMS = "45s, 30m, 4h, 1h30m or 2d"


@dataclass(frozen=True)
class Duration:
    """Time allowed, in business time on a calendar: whole working days (`2d`: the same
    point of the working day two working days later) and working hours, minutes, seconds."""

    days: int
    time: timedelta
    text: str

    def after(self, calendar: BusinessCalendar, start: datetime) -> datetime:
        moment = add_business_days(calendar, start, self.days) if self.days else start
        return add_business_time(calendar, moment, self.time)

    def __str__(self) -> str:
        return self.text


def parse_duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration: give its unit, e.g. {DURATION_FORMS}")
    text = "".join(value.split()).casefold()
    parts = list(_DURATION_PART.finditer(text))
    if not text or "".join(part[0] for part in parts) != text:
        raise ValueError(f"'{value}' is not a duration: write e.g. {DURATION_FORMS}")
    units = [part[2] for part in parts]
    if len(set(units)) != len(units) or units != sorted(units, key="dhms".index):
        raise ValueError(f"'{value}': give each unit once, largest first (1d4h, 1h30m)")
    days, seconds = 0, 0.0
    for part in parts:
        amount, unit = float(part[1]), part[2]
        if unit == "d":
            if not amount.is_integer():
                raise ValueError(f"'{value}': days are whole working days; write e.g. 1d4h")
            days = int(amount)
        else:
            seconds += amount * _UNIT_SECONDS[unit]
    if days > 3650 or seconds > 3650 * 86400:
        raise ValueError(f"'{value}' is longer than ten years")
    if not days and not seconds:
        raise ValueError(f"'{value}': a duration must be longer than zero")
    return Duration(days=days, time=timedelta(seconds=seconds), text=value.strip())


DurationField = Annotated[
    Duration,
    PlainValidator(parse_duration),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["45s", "30m", "4h", "2d"]}),
]


@dataclass(frozen=True)
class Share:
    """A part of the time allowed, written as a percentage (`25%`)."""

    fraction: float
    text: str

    def __str__(self) -> str:
        return self.text


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def parse_warn_before(value: Any) -> Duration | Share:
    if isinstance(value, Duration | Share):
        return value
    if isinstance(value, str) and (found := _PERCENT.fullmatch(value.strip())):
        percent = float(found[1])
        if not 0 < percent < 100:
            raise ValueError(f"'{value}': a percentage of the time allowed is between 0 and 100")
        return Share(fraction=percent / 100, text=value.strip())
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a warning time: a duration ({DURATION_FORMS}) or a "
            "percentage of the time allowed (25%)"
        ) from None


WarnField = Annotated[
    Duration | Share,
    PlainValidator(parse_warn_before),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["1h", "25%"]}),
]


# --- calendars ----------------------------------------------------------------------------------


def _time_zone(name: str) -> str:
    zone_named(name)
    return name


TimeZone = Annotated[str, AfterValidator(_time_zone)]


def _holiday(value: Any) -> Holiday:
    if not isinstance(value, str | date):
        raise ValueError(f"{value!r} is not a holiday")
    return parse_holiday(value)


HolidayField = Annotated[Any, PlainValidator(_holiday), PlainSerializer(str, return_type=str)]


class CalendarSpec(StrictModel):
    """A business calendar: working hours per weekday in `time_zone`, minus `holidays`."""

    time_zone: TimeZone
    hours: dict[str, DayHours]
    holidays: tuple[HolidayField, ...] = ()
    description: Text | None = None

    @field_validator("hours")
    @classmethod
    def _week(cls, hours: dict[str, tuple[Span, ...]]) -> dict[str, tuple[Span, ...]]:
        """Ranges of days (`mon-fri`) spelled out, so each weekday is given once."""
        week: dict[str, tuple[Span, ...]] = {}
        given_as: dict[str, str] = {}
        for key, spans in hours.items():
            for day in days_of(key):
                if day in week:
                    raise ValueError(f"{day} is given twice ({given_as[day]} and {key})")
                week[day], given_as[day] = spans, key
        if not any(week.values()):
            raise ValueError("give working hours on at least one day")
        return week

    def build(self, name: str) -> BusinessCalendar:
        return weekly_calendar(name, self.time_zone, dict(self.hours), self.holidays)


# --- clocks and their targets -------------------------------------------------------------------

_GRADE = re.compile(r"[A-D][1-4]?")
_GRADE_VALUES = ("equals", "in", "not_in")


def _grade_condition(condition: Condition) -> Condition:
    """`grade: A` means any A grade (A1 to A4); `grade: B2` that grade alone."""
    written = condition.model_dump(by_alias=True, exclude_unset=True)
    for test in _GRADE_VALUES:
        if test in written:
            values = written.pop(test)
            listed = values if isinstance(values, tuple | list) else (values,)
            written["in" if test == "equals" else test] = tuple(_grades(listed))
    return Condition.model_validate(written)


def _grades(values: Any) -> Iterator[str]:
    for value in values:
        grade = str(value).strip().upper()
        if not _GRADE.fullmatch(grade):
            raise ValueError(
                f"grade: '{value}' is not a grade: a fit letter A to D, optionally with an "
                "engagement digit 1 to 4 (A, B2)"
            )
        if len(grade) == 1:
            yield from (f"{grade}{digit}" for digit in "1234")
        else:
            yield grade


class Target(StrictModel):
    """The time allowed to leads that meet `when` (every lead without it).

    `when` names the lead's details (country, industry, company_size, …) and also `grade`,
    `source`, `trigger`, `email_domain`, and from the assignment `pool`, `team`, `rep`.
    """

    name: PolicyName
    when: Conditions | None = None
    within: DurationField
    warn_before: WarnField | None = None
    on_breach: OnBreach = "none"
    notify: EmailStr | None = Field(
        default=None, description="A manager's or team's e-mail, carried on the clock's events."
    )
    calendar: Name | None = Field(default=None, description="Instead of the clock's calendar.")
    description: Text | None = None

    _matches: AttributesCheck = PrivateAttr()

    @field_validator("when")
    @classmethod
    def _conditions(cls, when: Conditions | None) -> Conditions | None:
        if when is None:
            return None
        if not when:
            raise ValueError("give at least one condition, or leave `when` out to match all")
        if "grade" in when:
            return {**when, "grade": _grade_condition(when["grade"])}
        return when

    @model_validator(mode="after")
    def _coherent(self) -> Target:
        if self.on_breach == "notify" and self.notify is None:
            raise ValueError("on_breach: notify needs `notify`, the e-mail to tell")
        warn, within = self.warn_before, self.within
        if isinstance(warn, Duration) and (
            (not warn.days and not within.days and warn.time >= within.time)
            or (not warn.time and not within.time and warn.days >= within.days)
        ):
            raise ValueError(f"warn_before ({warn}) must be shorter than within ({within})")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._matches = all_conditions(self.when or {})

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return self._matches(facts)


class ClockPolicy(StrictModel):
    """One clock: the calendar its durations are counted on, and its targets in order."""

    calendar: Name = ALWAYS
    targets: tuple[Target, ...]
    description: Text | None = None

    @field_validator("targets")
    @classmethod
    def _some(cls, targets: tuple[Target, ...]) -> tuple[Target, ...]:
        if not targets:
            raise ValueError("give at least one target")
        return targets


class SlaFile(StrictModel):
    calendars: dict[Name, CalendarSpec] = Field(default_factory=dict)
    clocks: dict[ClockName, ClockPolicy]

    @field_validator("clocks")
    @classmethod
    def _some(cls, clocks: dict[ClockName, ClockPolicy]) -> dict[ClockName, ClockPolicy]:
        if not clocks:
            raise ValueError("give at least one clock: accept, first_touch or qualify")
        return clocks


# --- what the running service uses ------------------------------------------------------------


@dataclass(frozen=True)
class Terms:
    """The target a clock runs under, on its calendar: when it warns and when it is due."""

    clock: ClockName
    target: Target
    calendar: BusinessCalendar

    @property
    def policy(self) -> str:
        return self.target.name

    def deadline(self, start: datetime) -> datetime:
        return self.target.within.after(self.calendar, start)

    def warn_at(self, start: datetime, deadline: datetime) -> datetime | None:
        """When the warning is due: `warn_before` ahead of the deadline in business time
        (never before the start); None without `warn_before`."""
        warn = self.target.warn_before
        if warn is None:
            return None
        allowed = business_time_between(self.calendar, start, deadline)
        if isinstance(warn, Share):
            ahead = allowed * warn.fraction
        elif warn.days:
            earliest = warn.after(self.calendar, start)
            ahead = business_time_between(self.calendar, start, earliest)
        else:
            ahead = warn.time
        return add_business_time(self.calendar, start, max(allowed - ahead, timedelta()))


class SlaPolicy:
    """A validated SLA file, its calendars built."""

    def __init__(self, file: SlaFile) -> None:
        self.file = file
        self.calendars: dict[str, BusinessCalendar] = {
            ALWAYS: ALWAYS_CALENDAR,
            **{name: spec.build(name) for name, spec in file.calendars.items()},
        }

    def summary(self) -> list[str]:
        """One line per calendar and per clock, for `leadflow sla check`."""
        lines = [
            f"calendar {name}: {calendar.timezone}"
            + (", every hour" if calendar.always else f", {_week_text(self.file.calendars[name])}")
            for name, calendar in self.calendars.items()
        ]
        for clock, configured in self.file.clocks.items():
            targets = ", ".join(
                f"{target.name} ({target.within}"
                + (f" on {target.calendar}" if target.calendar else "")
                + f", on breach {target.on_breach})"
                for target in configured.targets
            )
            lines.append(f"clock {clock.value} on {configured.calendar}: {targets}")
        return lines

    def runs(self, clock: ClockName) -> bool:
        return clock in self.file.clocks

    def terms_for(self, clock: ClockName, facts: Mapping[str, Any]) -> Terms | None:
        """The first target of `clock` the lead's facts meet; None when the clock is not
        configured or no target takes the lead (then the clock does not run for it)."""
        configured = self.file.clocks.get(clock)
        if configured is None:
            return None
        for target in configured.targets:
            if target.matches(facts):
                calendar = self.calendars[target.calendar or configured.calendar]
                return Terms(clock=clock, target=target, calendar=calendar)
        return None


# --- loading, with errors that point at a line ----------------------------------------------


def parse_policy_text(text: str, origin: str = "sla.yaml") -> SlaPolicy:
    root, document = parse_document(text, origin, what="SLA file", error=PolicyError)
    return _validated(document, origin=origin, root=root)


def load_policy(path: Path) -> SlaPolicy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read SLA file {path}: {exc.strerror}") from exc
    return parse_policy_text(text, str(path))


def _validated(document: Any, *, origin: str, root: yaml.Node | None) -> SlaPolicy:
    file = validate_document(SlaFile, document, origin=origin, root=root, error=PolicyError)
    problems = list(_problems(file))
    if problems:
        raise located_error(
            PolicyError, origin, [placed(root, loc, message) for loc, message in problems]
        )
    return SlaPolicy(file)


def _problems(file: SlaFile) -> Iterator[tuple[Loc, str]]:
    if ALWAYS in file.calendars:
        yield (
            ("calendars", ALWAYS),
            f"'{ALWAYS}' is built in (every hour of every day); give yours another name",
        )
    known = [ALWAYS, *file.calendars]
    named: dict[str, str] = {}
    for clock, configured in file.clocks.items():
        if configured.calendar not in known:
            yield ("clocks", clock.value, "calendar"), _unknown_calendar(configured.calendar, known)
        catch_all: int | None = None
        for index, target in enumerate(configured.targets):
            where: Loc = ("clocks", clock.value, "targets", index)
            if target.name in named:
                yield (*where, "name"), f"'{target.name}' is already used by {named[target.name]}"
            named.setdefault(target.name, f"clocks.{clock.value}.targets[{index}]")
            if target.calendar is not None and target.calendar not in known:
                yield (*where, "calendar"), _unknown_calendar(target.calendar, known)
            if catch_all is not None:
                yield (
                    where,
                    f"never used: targets[{catch_all}] above has no `when` and takes every lead",
                )
            elif target.when is None:
                catch_all = index


def _week_text(spec: CalendarSpec) -> str:
    days = [
        f"{day} {' '.join(span_text(span) for span in spans)}"
        for day, spans in spec.hours.items()
        if spans
    ]
    holidays = f", {len(spec.holidays)} holidays" if spec.holidays else ""
    return "; ".join(days) + holidays


def _unknown_calendar(name: str, known: list[str]) -> str:
    return f"unknown calendar '{name}'; the calendars are {', '.join(known)}"
