"""The routing file: which MQL goes to which pool of reps, and how each pool deals its leads.

One YAML file (see `examples/routing.yaml`), the roster's successor, in four sections:

* `reason_codes` — why a rep may reject a lead (`not_icp: Not our ideal customer`).
* `pools` — groups of reps and how a pool deals leads among them (`round_robin`, `weighted`,
  `load_balanced`), where a lead goes when nobody in it can take one (`fallback`: another
  pool, or `queue`), and what a missed accept deadline does (`on_breach`).
* `rules` — in order, a condition on the lead (`when`, the rulebook's condition vocabulary)
  and the pool it sends matching leads to; the first rule that matches wins.
* `reps` — who they are, their pools, weight, capacity, time zone, working hours and
  away periods.

This module describes and validates; `handoff_service.router` chooses the rep.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    EmailStr,
    Field,
    field_validator,
    model_validator,
)

from services.conditions import Condition, Conditions, StrictModel, all_conditions
from services.located_yaml import (
    ConfigFileError,
    Loc,
    located_error,
    parse_document,
    placed,
    printable,
    validate_document,
)
from services.weekly_hours import WEEKDAYS, DayHours, days_of

QUEUE = "queue"
"""Where leads wait that no rule or pool could place: the unassigned queue ops can see."""

Strategy = Literal["round_robin", "weighted", "load_balanced"]
OnBreach = Literal["reassign", "queue", "none"]


class RoutingError(ConfigFileError):
    """A routing file that cannot be used; the message names the file, the line and the field."""


Name = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(printable)]
RuleName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(printable)]
Text = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(printable)]


def _one_or_many(value: Any) -> Any:
    """Lets a person write one value where a list is allowed: `pools: inbound`."""
    return (value,) if isinstance(value, str) else value


Names = Annotated[tuple[Name, ...], BeforeValidator(_one_or_many)]

_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class ReasonCode(StrictModel):
    """Why a rep rejects a lead; `label` is what people read. A plain text is the label."""

    label: Text
    description: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _label_only(cls, data: Any) -> Any:
        return {"label": data} if isinstance(data, str) else data


class Pool(StrictModel):
    """A group of reps (those who list it in `pools`) and how it deals leads among them.

    `round_robin` gives everyone the same number of turns; `weighted` gives a rep with weight
    2 twice the turns of weight 1; `load_balanced` gives the lead to whoever has the fewest
    open leads, ties by turn. A rep who comes back (from away, outside hours, full, inactive)
    rejoins the turns where the others are, unless `catch_up` is true: then they receive the
    turns they missed first.
    """

    strategy: Strategy = "round_robin"
    fallback: Name = Field(
        default=QUEUE,
        description="Where a lead goes when nobody here can take it: a pool, or `queue`.",
    )
    on_breach: OnBreach = Field(
        default="none",
        description="When the rep misses the accept deadline: reassign to the next rep, put "
        "the lead in the queue, or leave it with the rep (none).",
    )
    max_reassignments: int = Field(default=1, ge=0, le=100)
    catch_up: bool = False
    description: Text | None = None


# --- rules ----------------------------------------------------------------------------------

_GRADE = re.compile(r"[A-D][1-4]?")
_GRADE_VALUES = ("equals", "in", "not_in")


def _grade_condition(condition: Condition) -> Condition:
    """`grade: A` means any A grade (A1 to A4); `grade: B2` that grade alone."""
    written = condition.model_dump(by_alias=True, exclude_unset=True)
    if "equals" in written and "in" in written:
        raise ValueError("grade: give either one grade or a list, not both")
    for test in _GRADE_VALUES:
        if test in written:
            values = written.pop(test)
            listed = values if isinstance(values, tuple | list) else (values,)
            written["in" if test == "equals" else test] = tuple(_grades(listed))
    return Condition.model_validate(written)


def _grades(values: Sequence[Any]) -> Iterator[str]:
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


class RoutingRule(StrictModel):
    """Leads whose facts meet `when` go to `pool`; a rule without `when` takes every lead.

    `when` names the lead's attributes (country, region, company_size, industry, …) and
    also `grade`, `source`, `campaign`, `trigger`, `email_domain`. With `account_match`, a
    lead whose company already has an owner goes to that owner first, when they can take it.
    """

    name: RuleName
    when: Conditions | None = None
    pool: Name
    account_match: bool = True
    description: Text | None = None

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

    def matches(self, facts: Mapping[str, Any]) -> bool:
        """Whether a lead's facts meet the rule's condition (each condition is compiled
        once, when it is read; putting them together is cheap)."""
        return all_conditions(self.when or {})(facts)


# --- reps -----------------------------------------------------------------------------------


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone '{value}': use an IANA name such as Europe/Berlin"
        ) from exc
    return value


TimeZone = Annotated[str, AfterValidator(_time_zone)]

WeeklyHours = dict[str, tuple[tuple[int, int], ...]]


def _day_or_moment(value: Any) -> Any:
    """`2026-12-24` is a day (a date), `2026-12-24T09:00` a moment, however it is written."""
    if isinstance(value, str) and len(value.strip()) == len("2026-12-24"):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return value
    return value


DayOrMoment = Annotated[datetime | date, BeforeValidator(_day_or_moment)]


class Away(StrictModel):
    """Out of office from `from` until `until` (open-ended without it).

    Dates are whole days in the rep's time zone, both included; times without an offset
    are the rep's local time.
    """

    from_: DayOrMoment = Field(alias="from")
    until: DayOrMoment | None = None
    note: Text | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Away:
        if _before(self.until, self.from_):
            raise ValueError("until must not come before from")
        return self

    def interval(self, zone: ZoneInfo) -> tuple[datetime, datetime | None]:
        """The period as instants: from its start to the moment it ends (exclusive)."""
        return _instant(self.from_, zone, end=False), (
            None if self.until is None else _instant(self.until, zone, end=True)
        )

    def covers(self, moment: datetime, zone: ZoneInfo) -> bool:
        start, end = self.interval(zone)
        return start <= moment and (end is None or moment < end)


def _before(end: datetime | date | None, start: datetime | date) -> bool:
    """Whether `end` is before `start`, when they compare without a time zone to place them
    (two dates, or two times both with or both without an offset)."""
    if isinstance(end, datetime) and isinstance(start, datetime):
        return (end.tzinfo is None) == (start.tzinfo is None) and end < start
    if isinstance(end, date) and not isinstance(end, datetime) and not isinstance(start, datetime):
        return end < start
    return False


def _instant(value: datetime | date, zone: ZoneInfo, *, end: bool) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=zone)
    day = value + timedelta(days=1) if end else value
    return datetime.combine(day, time(0), tzinfo=zone)


class Rep(StrictModel):
    """A sales rep who receives leads from the pools they are in.

    `capacity` is the most open, unanswered leads they hold (no limit without it).
    `hours` are their working hours per weekday in `time_zone` (any time without them).
    """

    id: Name
    name: Text
    email: EmailStr
    team: Name | None = None
    pools: Names
    weight: float = Field(default=1.0, gt=0, le=1000, allow_inf_nan=False)
    capacity: int | None = Field(default=None, ge=1)
    time_zone: TimeZone = "UTC"
    hours: dict[str, DayHours] | None = None
    active: bool = True
    away: tuple[Away, ...] = ()

    @field_validator("hours")
    @classmethod
    def _week(cls, hours: dict[str, Any] | None) -> WeeklyHours | None:
        """Ranges of days (`mon-fri`) spelled out, so each weekday is given once."""
        if hours is None:
            return None
        if not hours:
            raise ValueError("give the hours of at least one day, or leave `hours` out")
        week: WeeklyHours = {}
        given_as: dict[str, str] = {}
        for key, spans in hours.items():
            for day in days_of(key):
                if day in week:
                    raise ValueError(f"{day} is given twice ({given_as[day]} and {key})")
                week[day], given_as[day] = spans, key
        return week

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def in_hours(self, moment: datetime) -> bool:
        """Whether `moment` (aware) falls in the rep's working hours, in their local time."""
        if self.hours is None:
            return True
        local = moment.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        spans: Sequence[tuple[int, int]] = self.hours.get(WEEKDAYS[local.weekday()], ())
        return any(start <= minute < end for start, end in spans)

    def away_at(self, moment: datetime, also: Sequence[Away] = ()) -> bool:
        """Whether one of the rep's away periods, or of `also`, covers `moment`."""
        return any(period.covers(moment, self.zone) for period in (*self.away, *also))


# --- the file -------------------------------------------------------------------------------


class RoutingFile(StrictModel):
    reason_codes: dict[str, ReasonCode] = Field(default_factory=dict)
    pools: dict[Name, Pool] = Field(min_length=1)
    rules: tuple[RoutingRule, ...] = Field(min_length=1)
    reps: tuple[Rep, ...] = ()

    # Looked up rather than cached: a cached value would survive `model_copy(update=...)`.
    def rep(self, rep_id: str) -> Rep | None:
        return next((rep for rep in self.reps if rep.id == rep_id), None)

    def members(self, pool: str) -> tuple[Rep, ...]:
        """The pool's reps, in file order."""
        return tuple(rep for rep in self.reps if pool in rep.pools)

    def with_reps(self, reps: Sequence[Rep]) -> RoutingFile:
        """The same pools and rules with another roster (e.g. as changed through the API),
        validated like a file; a problem names its field (`reps[2].pools[0]`)."""
        return routing_from_document(
            {
                "reason_codes": self.reason_codes,
                "pools": self.pools,
                "rules": self.rules,
                "reps": tuple(reps),
            }
        )


# --- loading, with errors that point at a line ----------------------------------------------


def routing_from_document(document: Any, *, origin: str = "routing") -> RoutingFile:
    """Validate an already-parsed document (e.g. JSON from the admin API); no line numbers."""
    return _validated(document, origin=origin, root=None)


def parse_routing_text(text: str, origin: str = "routing.yaml") -> RoutingFile:
    root, document = parse_document(text, origin, what="routing file", error=RoutingError)
    return _validated(document, origin=origin, root=root)


def load_routing(path: Path) -> RoutingFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutingError(f"cannot read routing file {path}: {exc.strerror}") from exc
    return parse_routing_text(text, str(path))


def _validated(document: Any, *, origin: str, root: yaml.Node | None) -> RoutingFile:
    routing = validate_document(RoutingFile, document, origin=origin, root=root, error=RoutingError)
    problems = [
        *_code_problems(routing.reason_codes),
        *_pool_problems(routing.pools),
        *_rule_problems(routing),
        *_rep_problems(routing),
    ]
    if problems:
        raise located_error(
            RoutingError, origin, [placed(root, loc, message) for loc, message in problems]
        )
    return routing


def _code_problems(codes: Mapping[str, ReasonCode]) -> Iterator[tuple[Loc, str]]:
    """Codes are what reps, CRM mappings and reports send and store: kept plain."""
    for code in codes:
        if not _CODE.fullmatch(code):
            yield (
                ("reason_codes", code),
                f"'{code}' is not a reason code: lower case letters, digits and _, e.g. not_icp",
            )


def _unknown_pool(name: str, pools: Mapping[str, Pool]) -> str:
    return f"unknown pool '{name}'; the pools are {', '.join(pools)}"


def _pool_problems(pools: Mapping[str, Pool]) -> Iterator[tuple[Loc, str]]:
    if QUEUE in pools:
        yield ("pools", QUEUE), f"'{QUEUE}' is the unassigned queue; give the pool another name"
    for name, pool in pools.items():
        if pool.fallback != QUEUE and pool.fallback not in pools:
            yield ("pools", name, "fallback"), _unknown_pool(pool.fallback, pools) + " or queue"
    yield from _fallback_cycles(pools)


def _fallback_cycles(pools: Mapping[str, Pool]) -> Iterator[tuple[Loc, str]]:
    """Each chain of fallbacks must end in the queue; a circle is reported once."""
    reported: set[str] = set()
    for name in pools:
        chain = [name]
        current = pools[name].fallback
        while current in pools and current not in chain:
            chain.append(current)
            current = pools[current].fallback
        if current in chain:
            circle = chain[chain.index(current) :]
            if reported.isdisjoint(circle):
                reported.update(circle)
                path = " -> ".join([*circle, current])
                yield (
                    ("pools", current, "fallback"),
                    f"the fallbacks go round in a circle ({path}); end the chain with {QUEUE}",
                )


def _rule_problems(routing: RoutingFile) -> Iterator[tuple[Loc, str]]:
    first: dict[str, int] = {}
    catch_all: int | None = None
    for index, rule in enumerate(routing.rules):
        if rule.name in first:
            yield (
                ("rules", index, "name"),
                f"'{rule.name}' is already used by rules[{first[rule.name]}]",
            )
        first.setdefault(rule.name, index)
        if rule.pool not in routing.pools:
            yield ("rules", index, "pool"), _unknown_pool(rule.pool, routing.pools)
        if catch_all is not None:
            yield (
                ("rules", index),
                f"never used: rules[{catch_all}] above has no `when` and takes every lead",
            )
        elif rule.when is None:
            catch_all = index


def _rep_problems(routing: RoutingFile) -> Iterator[tuple[Loc, str]]:
    ids: dict[str, int] = {}
    emails: dict[str, int] = {}
    for index, rep in enumerate(routing.reps):
        if rep.id in ids:
            yield ("reps", index, "id"), f"'{rep.id}' is already used by reps[{ids[rep.id]}]"
        ids.setdefault(rep.id, index)
        email = rep.email.casefold()
        if email in emails:
            yield (
                ("reps", index, "email"),
                f"'{rep.email}' is already used by reps[{emails[email]}]",
            )
        emails.setdefault(email, index)
        for position, pool in enumerate(rep.pools):
            if pool not in routing.pools:
                yield ("reps", index, "pools", position), _unknown_pool(pool, routing.pools)
