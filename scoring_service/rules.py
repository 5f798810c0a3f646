"""The rulebook: the qualified-lead definition sales and marketing agreed on, as a model.

A rulebook is one YAML file (see `examples/rulebook.yaml`) with five kinds of rules:

* `fit` — points for who the lead is (their current attributes). Not additive over time.
* `disqualifiers` — attributes that stop a lead from qualifying at all.
* `engagement` — points for what the lead does, with caps, decay and expiry.
* `triggers` — activities that qualify a lead at once, whatever the score.
* `mql`, `grades`, `decay`, `recycle` — how scores turn into grades and qualification.

This module only describes and validates; `scoring_service.engine` folds activities through
it. Conditions are compiled once, when the rulebook is loaded, into plain closures, because
matching runs for every activity on the hot path.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import re2
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from schemas.events import ActivityData, ActivityType


class RulebookError(ValueError):
    """A rulebook that cannot be used; the message names the file, the line and the field."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rulebook; `line` is 1-based, None when the source has no lines."""

    field: str
    message: str
    line: int | None = None


# --- conditions on values -------------------------------------------------------------------

Check = Callable[[Any], bool]
T = TypeVar("T")
FitGrade = Literal["A", "B", "C", "D"]
FIT_GRADES: tuple[FitGrade, ...] = ("A", "B", "C", "D")


def _scalar(value: Any) -> Any:
    if isinstance(value, str | int | float | bool):
        return value
    raise ValueError("expected a text, number or true/false value")


Scalar = Annotated[Any, AfterValidator(_scalar)]


def _as_tuple(value: Any) -> Any:
    """Lets a person write one value where a list is allowed: `form: demo-request`."""
    return (value,) if isinstance(value, str | int | float | bool) else value


Texts = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]


TextSearch = Callable[[str], bool]


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.never_capture = True  # only whether a pattern is found matters
    options.log_errors = False  # a refused pattern is reported with its field, not on stderr
    return options


_RE2_OPTIONS = _re2_options()


def compile_regex(pattern: str) -> TextSearch:
    """A rulebook regular expression, RE2 syntax and without case, as `found(text)`.

    RE2 runs in time linear in the text whatever the pattern, so a rule such as
    `^(a+)+$` cannot stall scoring as it would with backtracking (Python's `re`). What only
    backtracking can do (backreferences, lookaround) is refused when the rulebook is read.
    """
    try:
        search = re2.compile(pattern, _RE2_OPTIONS).search
    except re2.error as exc:
        raise ValueError(
            "not a valid regular expression (RE2 syntax: no backreferences or lookaround): "
            + _re2_reason(exc)
        ) from exc

    def found(text: str) -> bool:
        # bytes: RE2 needs no offsets back in characters; a lone surrogate (valid in JSON)
        # passes as bytes that match no character instead of failing to encode
        return search(text.encode("utf-8", "surrogatepass")) is not None

    return found


def _re2_reason(exc: Exception) -> str:
    reason = exc.args[0] if exc.args else exc
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)


def _regex(pattern: str | None) -> str | None:
    if pattern is not None:
        compile_regex(pattern)
    return pattern


Regex = Annotated[str, AfterValidator(_regex)]


def value_key(value: Any) -> tuple[str, Any] | None:
    """How two values compare for `equals`/`in`: text ignores case and surrounding spaces."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    if isinstance(value, str):
        return ("s", value.strip().casefold())
    return None


def as_number(value: Any) -> float | None:
    """A number, also from form text such as "1,200"; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip().replace(",", "").replace("_", ""))
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def is_present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | dict | tuple):
        return bool(value)
    return True


_TIMELINE = re.compile(
    r"(?P<low>\d+(?:\.\d+)?)\s*(?:(?:-|\u2013|\u2014|to)\s*(?P<high>\d+(?:\.\d+)?))?\s*"
    r"(?P<unit>day|week|month|quarter|year|yr|mo)s?\b"
)
_TIMELINE_NOW = ("now", "immediately", "asap", "today", "this week", "this month")
_TIMELINE_OPEN = re.compile(r"\+|more than|over|longer than|>|after|not sure|no plan|unknown")
_MONTHS_PER = {"day": 1 / 30, "week": 7 / 30, "month": 1.0, "mo": 1.0, "quarter": 3.0}


def timeline_months(value: Any) -> float | None:
    """The latest month a stated purchase timeline reaches, e.g. "3-6 months" -> 6.

    Numbers are months. Text like "0-3 months", "within 2 quarters", "1 year" or "immediately"
    is understood; open-ended or unclear answers ("6+ months", "not sure") give None.
    """
    number = as_number(value)
    if number is not None:
        return number
    if not isinstance(value, str):
        return None
    text = value.strip().casefold()
    if any(word in text for word in _TIMELINE_NOW):
        return 0.0
    if _TIMELINE_OPEN.search(text):
        return None
    found = _TIMELINE.search(text)
    if found is None:
        return None
    high = float(found["high"] or found["low"])
    unit = found["unit"]
    return high * (12.0 if unit in ("year", "yr") else _MONTHS_PER[unit])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Condition(_Strict):
    """Tests on one value; every test given must hold.

    Shorthand: a plain value means `equals`, a list means `in`. Text compares without case.
    A missing or empty value satisfies only `present: false`.
    """

    equals: Scalar | None = None
    in_: tuple[Scalar, ...] | None = Field(default=None, alias="in")
    not_in: tuple[Scalar, ...] | None = None
    min: float | None = None
    max: float | None = None
    contains: Texts | None = None
    matches: Regex | None = None
    present: bool | None = None
    within_months: float | None = Field(default=None, ge=0)

    _holds: Check = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            return {"in": data}
        if isinstance(data, str | int | float | bool):
            return {"equals": data}
        return data

    @model_validator(mode="after")
    def _coherent(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError(
                "give at least one test: equals, in, not_in, min, max, contains, matches, "
                "present or within_months"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not be above max")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._holds = _all_of_value(self.present, tuple(self._build_checks()))

    def predicate(self) -> Check:
        return self._holds

    def holds(self, value: Any) -> bool:
        return self._holds(value)

    def _build_checks(self) -> Iterator[Check]:
        if self.equals is not None:
            wanted = value_key(self.equals)
            yield lambda value: value_key(value) == wanted
        if self.in_ is not None:
            allowed = frozenset(value_key(item) for item in self.in_)
            yield lambda value: value_key(value) in allowed
        if self.not_in is not None:
            refused = frozenset(value_key(item) for item in self.not_in)
            yield lambda value: value_key(value) not in refused
        yield from self._number_checks()
        if self.contains is not None:
            needles = tuple(needle.casefold() for needle in self.contains)
            yield lambda value: isinstance(value, str) and _contains_any(value, needles)
        if self.matches is not None:
            found = compile_regex(self.matches)
            yield lambda value: isinstance(value, str) and found(value)
        if self.within_months is not None:
            limit = self.within_months
            yield lambda value: (months := timeline_months(value)) is not None and months <= limit

    def _number_checks(self) -> Iterator[Check]:
        low, high = self.min, self.max
        if low is not None:
            yield lambda value: (number := as_number(value)) is not None and number >= low
        if high is not None:
            yield lambda value: (number := as_number(value)) is not None and number <= high


def _all_of_value(wanted_presence: bool | None, checks: tuple[Check, ...]) -> Check:
    def holds(value: Any) -> bool:
        present = is_present(value)
        if wanted_presence is not None and present != wanted_presence:
            return False
        if not present:
            return not checks
        return all(check(value) for check in checks)

    return holds


def _contains_any(text: str, needles: tuple[str, ...]) -> bool:
    folded = text.casefold()
    return any(needle in folded for needle in needles)


Conditions = dict[str, Condition]


AttributesCheck = Callable[[Mapping[str, Any]], bool]


def all_conditions(conditions: Mapping[str, Condition]) -> AttributesCheck:
    """One predicate over a mapping of values: every named value meets its condition."""
    pairs = tuple((name, condition.predicate()) for name, condition in conditions.items())

    def holds(values: Mapping[str, Any]) -> bool:
        # a loop rather than all(<generator>): this runs per rule per activity
        for name, check in pairs:  # noqa: SIM110
            if not check(values.get(name)):
                return False
        return True

    return holds


# --- conditions on activities ---------------------------------------------------------------

ActivityCheck = Callable[[ActivityData, float | None], bool]


def activity_url(activity: ActivityData) -> str | None:
    url = activity.properties.get("url")
    if not isinstance(url, str):
        page = activity.context.get("page")
        url = page.get("url") if isinstance(page, dict) else None
    return url if isinstance(url, str) else None


def activity_seconds(activity: ActivityData) -> float | None:
    for name in ("seconds", "duration"):
        number = as_number(activity.properties.get(name))
        if number is not None:
            return number
    return None


def activity_field(activity: ActivityData, name: str) -> Any:
    """A value this activity states: its property, else the lead attribute it carries."""
    value = activity.properties.get(name)
    return value if value is not None else activity.attributes.get(name)


def _content_name(activity: ActivityData) -> Any:
    properties = activity.properties
    for name in ("content", "title", "name"):
        if properties.get(name) is not None:
            return properties[name]
    return None


class ActivityMatch(_Strict):
    """What one activity must look like; every condition given must hold.

    `new_session_after_minutes` matches a page view that comes at least that long after the
    lead's previous page view (in event time): a repeat visit. A lead's first page view is
    not a repeat visit.
    """

    activity: ActivityType | None = None
    event_name: str | None = None
    form: Texts | None = None
    content: Texts | None = None
    url_contains: Texts | None = None
    url: str | None = Field(default=None, description="A glob such as '*/blog/*'.")
    url_regex: Regex | None = None
    min_seconds: float | None = Field(default=None, ge=0)
    new_session_after_minutes: float | None = Field(default=None, gt=0)
    fields: Conditions | None = None

    _matches: ActivityCheck = PrivateAttr()
    _matches_of_type: ActivityCheck = PrivateAttr()

    @model_validator(mode="after")
    def _coherent(self) -> ActivityMatch:
        if not self.model_fields_set:
            raise ValueError("give at least one condition, e.g. activity: page_view")
        if self.new_session_after_minutes is not None and self.activity not in (
            None,
            ActivityType.PAGE_VIEW,
        ):
            raise ValueError("new_session_after_minutes applies to page_view activities only")
        return self

    def model_post_init(self, context: Any, /) -> None:
        checks = tuple(self._build_checks())
        self._matches = _all_of_activity(checks)
        self._matches_of_type = _all_of_activity(
            checks[1:] if self.activity is not None else checks
        )

    def predicate(self, *, type_known: bool = False) -> ActivityCheck:
        """`type_known`: the caller only passes activities of `activity`'s type (the compiled
        rulebook indexes rules by type), so the predicate need not check it again."""
        return self._matches_of_type if type_known else self._matches

    def matches(self, activity: ActivityData, gap_minutes: float | None = None) -> bool:
        """`gap_minutes`: time since the lead's previous page view, None if there was none."""
        return self._matches(activity, gap_minutes)

    def _build_checks(self) -> Iterator[ActivityCheck]:
        if self.activity is not None:  # first: model_post_init leaves it out for `type_known`
            kind = self.activity
            yield lambda activity, _gap: activity.activity_type == kind
        if self.event_name is not None:
            name = self.event_name.strip().casefold()
            yield lambda activity, _gap: activity.event_name.strip().casefold() == name
        if self.form is not None:
            yield _property_in("form", self.form)
        if self.content is not None:
            names = frozenset(value_key(item) for item in self.content)
            yield lambda activity, _gap: value_key(_content_name(activity)) in names
        yield from self._url_checks()
        if self.min_seconds is not None:
            yield _long_enough(self.min_seconds)
        if self.new_session_after_minutes is not None:
            yield _new_session(self.new_session_after_minutes)
        if self.fields:
            predicates = tuple(
                (name, condition.predicate()) for name, condition in self.fields.items()
            )
            yield lambda activity, _gap: all(
                holds(activity_field(activity, name)) for name, holds in predicates
            )

    def _url_checks(self) -> Iterator[ActivityCheck]:
        if self.url_contains is not None:
            needles = tuple(needle.casefold() for needle in self.url_contains)
            yield (
                lambda activity, _gap: (
                    (u := activity_url(activity)) is not None and (_contains_any(u, needles))
                )
            )
        if self.url is not None:
            # Python's re is safe here: fnmatch translates `*` to atomic groups, which do not
            # backtrack, and a glob has no other repetition
            glob = re.compile(fnmatch.translate(self.url), re.IGNORECASE).match
            yield _url_found(lambda url: glob(url) is not None)
        if self.url_regex is not None:
            yield _url_found(compile_regex(self.url_regex))


def _all_of_activity(checks: tuple[ActivityCheck, ...]) -> ActivityCheck:
    """The checks as one predicate (run for every rule on every activity: a single check is
    returned as it is)."""
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]

    def matches(activity: ActivityData, gap: float | None) -> bool:
        # a loop rather than all(<generator>): this runs per rule per activity
        for check in checks:  # noqa: SIM110
            if not check(activity, gap):
                return False
        return True

    return matches


def _always(_activity: ActivityData, _gap: float | None) -> bool:
    return True


def _long_enough(least: float) -> ActivityCheck:
    def check(activity: ActivityData, _gap: float | None) -> bool:
        seconds = activity_seconds(activity)
        return seconds is not None and seconds >= least

    return check


def _url_found(found: TextSearch) -> ActivityCheck:
    def check(activity: ActivityData, _gap: float | None) -> bool:
        url = activity_url(activity)
        return url is not None and found(url)

    return check


def _property_in(name: str, allowed_values: tuple[str, ...]) -> ActivityCheck:
    allowed = frozenset(value_key(item) for item in allowed_values)
    return lambda activity, _gap: value_key(activity.properties.get(name)) in allowed


def _new_session(minutes: float) -> ActivityCheck:
    return lambda activity, gap: (
        activity.activity_type == ActivityType.PAGE_VIEW and gap is not None and gap >= minutes
    )


# --- rules ----------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(value: str) -> str:
    """Names and versions become ids, keys and database text: no NUL or control character."""
    found = _CONTROL.search(value)
    if found:
        raise ValueError(f"must not contain control characters (found U+{ord(found[0]):04X})")
    return value


RuleName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_printable)]


class _ActivityRule(_Strict):
    name: RuleName
    when: ActivityMatch
    unless: ActivityMatch | None = None

    def predicate(self, *, type_known: bool = False) -> ActivityCheck:
        """`when` holds and `unless` (if given) does not; `type_known` as for `when`."""
        when = self.when.predicate(type_known=type_known)
        if self.unless is None:
            return when
        unless = self.unless.predicate()
        return lambda activity, gap: when(activity, gap) and not unless(activity, gap)

    def matches(self, activity: ActivityData, gap_minutes: float | None = None) -> bool:
        """For one-off checks; the engine runs the predicates `Rulebook.compiled` holds."""
        return self.predicate()(activity, gap_minutes)


class Cap(_Strict):
    """Limits on one engagement rule so repeating an action cannot farm points.

    Days and ISO weeks are calendar periods in UTC of the activity's event time. Point caps
    bound the size of the points (also for negative rules); the last grant may be partial.
    """

    times: int | None = Field(default=None, ge=1)
    times_per_day: int | None = Field(default=None, ge=1)
    times_per_week: int | None = Field(default=None, ge=1)
    points: float | None = Field(default=None, gt=0)
    points_per_day: float | None = Field(default=None, gt=0)
    points_per_week: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> Cap:
        if not self.model_fields_set:
            raise ValueError("give at least one limit, e.g. times_per_day: 1")
        return self


class EngagementRule(_ActivityRule):
    points: float
    cap: Cap | None = None


class Trigger(_ActivityRule):
    """An activity that qualifies the lead at once, whatever the score."""


class FitRule(_Strict):
    name: RuleName
    if_: Conditions = Field(alias="if", min_length=1)
    points: float


class Disqualifier(_Strict):
    """Attributes that block qualification (also by trigger), whatever the score."""

    name: RuleName
    if_: Conditions = Field(alias="if", min_length=1)


# --- scores to grades and qualification -----------------------------------------------------


class FitBands(_Strict):
    """The lowest fit score for each letter; below C is D. A is the best fit."""

    A: float = 60
    B: float = 35
    C: float = 15

    @model_validator(mode="after")
    def _descending(self) -> FitBands:
        if not self.A > self.B > self.C:
            raise ValueError("each better grade needs a higher minimum: A > B > C")
        return self

    def grade(self, fit: float) -> FitGrade:
        if fit >= self.A:
            return "A"
        if fit >= self.B:
            return "B"
        return "C" if fit >= self.C else "D"


class EngagementBands(_Strict):
    """The lowest engagement score for each digit; below 3 is 4. 1 is the most engaged."""

    one: float = Field(default=100, alias="1")
    two: float = Field(default=50, alias="2")
    three: float = Field(default=20, alias="3")

    @model_validator(mode="before")
    @classmethod
    def _text_keys(cls, data: Any) -> Any:
        return {str(key): value for key, value in data.items()} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _descending(self) -> EngagementBands:
        if not self.one > self.two > self.three:
            raise ValueError("each better grade needs a higher minimum: 1 > 2 > 3")
        return self

    def grade(self, engagement: float) -> int:
        if engagement >= self.one:
            return 1
        if engagement >= self.two:
            return 2
        return 3 if engagement >= self.three else 4


class Grades(_Strict):
    """A grade such as "A1" is fit letter + engagement digit; "A1" is the best lead."""

    fit: FitBands = FitBands()
    engagement: EngagementBands = EngagementBands()


class Mql(_Strict):
    threshold: float = Field(gt=0)
    min_fit_grade: FitGrade | None = None

    def fit_grade_ok(self, grade: FitGrade) -> bool:
        if self.min_fit_grade is None:
            return True
        return FIT_GRADES.index(grade) <= FIT_GRADES.index(self.min_fit_grade)


class Decay(_Strict):
    """How engagement fades, in event time: halving every `half_life_days`, and/or points
    that stop counting `expire_after_days` after the activity. Neither is required."""

    half_life_days: float | None = Field(default=None, gt=0)
    expire_after_days: float | None = Field(default=None, gt=0)

    def factor(self, seconds: float) -> float:
        """How much of a point is left `seconds` after it was granted (decay only)."""
        if self.half_life_days is None or seconds == 0:
            return 1.0
        return float(2.0 ** (-seconds / (self.half_life_days * 86400.0)))

    @property
    def expiry_seconds(self) -> float | None:
        days = self.expire_after_days
        return None if days is None else days * 86400.0


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, int | float | date) else value


class Rulebook(_Strict):
    version: Annotated[
        str, BeforeValidator(_text), Field(min_length=1, max_length=100), AfterValidator(_printable)
    ]
    description: str | None = None
    mql: Mql
    grades: Grades = Grades()
    decay: Decay = Decay()
    recycle: Literal["reset", "keep"] = Field(
        default="reset",
        description="On recycle to nurture: engagement starts from zero (reset) or carries on.",
    )
    fit: tuple[FitRule, ...] = ()
    disqualifiers: tuple[Disqualifier, ...] = ()
    engagement: tuple[EngagementRule, ...] = ()
    triggers: tuple[Trigger, ...] = ()

    def model_post_init(self, context: Any, /) -> None:
        _ = self.compiled  # built while validating, so a rule that cannot compile is refused

    @cached_property
    def compiled(self) -> Compiled:
        """The rules as plain predicates, built once; what the engine runs per activity.

        A cached property rather than a private attribute: it is read for every activity,
        and pydantic serves private attributes through a slow `__getattr__`."""
        return Compiled.of(self)

    def fingerprint(self) -> str:
        """A stable hash of the rules' content (not of the file's layout or comments)."""
        return self.compiled.fingerprint

    def trigger_for(self, activity: ActivityData, gap_minutes: float | None = None) -> str | None:
        return self.compiled.trigger_for(activity, gap_minutes)

    def fit_for(self, attributes: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
        return self.compiled.fit_for(attributes)

    def disqualified_by(self, attributes: Mapping[str, Any]) -> tuple[str, ...]:
        return self.compiled.disqualified_by(attributes)


@dataclass(frozen=True, slots=True)
class ScoringRule:
    """An engagement rule ready to run: `matches(activity, gap_minutes)`, for activities of
    the type it is indexed under in `Compiled` (it does not check the type again)."""

    name: str
    points: float
    cap: Cap | None
    matches: ActivityCheck


@dataclass(frozen=True, slots=True)
class Compiled:
    """A rulebook's rules as plain closures indexed by activity type; a rule's closure
    assumes an activity of the type it is found under.

    Pydantic models answer private-attribute lookups slowly; the fold touches this object
    (plain slots) instead, several times per activity.
    """

    fingerprint: str
    engagement: Mapping[ActivityType, tuple[ScoringRule, ...]]
    triggers: Mapping[ActivityType, tuple[tuple[str, ActivityCheck], ...]]
    fit: tuple[tuple[str, float, AttributesCheck], ...]
    disqualifiers: tuple[tuple[str, AttributesCheck], ...]

    @classmethod
    def of(cls, rulebook: Rulebook) -> Compiled:
        canonical = json.dumps(
            rulebook.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
        )
        engagement = [
            (
                rule.when.activity,
                ScoringRule(rule.name, rule.points, rule.cap, rule.predicate(type_known=True)),
            )
            for rule in rulebook.engagement
        ]
        triggers = [
            (rule.when.activity, (rule.name, rule.predicate(type_known=True)))
            for rule in rulebook.triggers
        ]
        return cls(
            fingerprint=hashlib.sha256(canonical.encode()).hexdigest()[:16],
            engagement={kind: _for_type(engagement, kind) for kind in ActivityType},
            triggers={kind: _for_type(triggers, kind) for kind in ActivityType},
            fit=tuple((rule.name, rule.points, all_conditions(rule.if_)) for rule in rulebook.fit),
            disqualifiers=tuple(
                (rule.name, all_conditions(rule.if_)) for rule in rulebook.disqualifiers
            ),
        )

    def trigger_for(self, activity: ActivityData, gap_minutes: float | None) -> str | None:
        for name, matches in self.triggers[activity.activity_type]:
            if matches(activity, gap_minutes):
                return name
        return None

    def fit_for(self, attributes: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
        """The fit rules these attributes match, with their points, in rulebook order."""
        view = with_derived(attributes)
        return tuple((name, points) for name, points, holds in self.fit if holds(view))

    def disqualified_by(self, attributes: Mapping[str, Any]) -> tuple[str, ...]:
        view = with_derived(attributes)
        return tuple(name for name, holds in self.disqualifiers if holds(view))


def _for_type(rules: Sequence[tuple[ActivityType | None, T]], kind: ActivityType) -> tuple[T, ...]:
    return tuple(rule for only, rule in rules if only is None or only == kind)


def with_derived(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """Adds `email_domain` (from `email`) unless the attributes already carry one."""
    email = attributes.get("email")
    if "email_domain" in attributes or not isinstance(email, str) or "@" not in email:
        return attributes
    return {**attributes, "email_domain": email.rsplit("@", 1)[1].strip().lower()}


# --- loading, with errors that point at a line ----------------------------------------------


def rulebook_from_document(document: Any, *, origin: str = "rulebook") -> Rulebook:
    """Validate an already-parsed document (e.g. JSON from the admin API); no line numbers."""
    return _validated(document, origin=origin, root=None)


def parse_rulebook_text(text: str, origin: str = "rulebook.yaml") -> Rulebook:
    root, document = _compose(text, origin)
    if document is None:
        raise RulebookError(f"{origin}: the rulebook is empty")
    duplicates = list(_duplicate_keys(root, ()))
    if duplicates:
        raise _error(origin, duplicates)
    return _validated(document, origin=origin, root=root)


def read_rulebook_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulebookError(f"cannot read rulebook {path}: {exc.strerror}") from exc


def load_rulebook(path: Path) -> Rulebook:
    return parse_rulebook_text(read_rulebook_text(path), str(path))


Loc = tuple[int | str, ...]


def _compose(text: str, origin: str) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RulebookError(f"{origin}{where}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise RulebookError(f"{origin}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node | None, loc: Loc) -> Iterator[Problem]:
    """PyYAML keeps the last of two equal keys silently; a person meant one of them."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                yield Problem(field_path((*loc, name)), f"'{name}' is given twice", _line(key))
            seen.add(name)
            yield from _duplicate_keys(value, (*loc, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, index))


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _validated(document: Any, *, origin: str, root: yaml.Node | None) -> Rulebook:
    try:
        rulebook = Rulebook.model_validate(document)
    except ValidationError as exc:
        problems = [
            _placed(root, tuple(error["loc"]), _message(error["msg"])) for error in exc.errors()
        ]
        raise _error(origin, problems) from exc
    clashes = list(_name_clashes(rulebook))
    if clashes:
        raise _error(origin, [_placed(root, loc, message) for loc, message in clashes])
    return rulebook


def _message(text: str) -> str:
    return text.removeprefix("Value error, ")


def _name_clashes(rulebook: Rulebook) -> Iterator[tuple[Loc, str]]:
    """Rule names identify rules in the ledger, so each is used once across all sections."""
    first: dict[str, str] = {}
    sections: tuple[tuple[str, Sequence[Any]], ...] = (
        ("fit", rulebook.fit),
        ("disqualifiers", rulebook.disqualifiers),
        ("engagement", rulebook.engagement),
        ("triggers", rulebook.triggers),
    )
    for section, rules in sections:
        for index, rule in enumerate(rules):
            here = f"{section}[{index}]"
            if rule.name in first:
                yield (
                    (section, index, "name"),
                    f"'{rule.name}' is already used by {first[rule.name]}",
                )
            else:
                first[rule.name] = here


def _placed(root: yaml.Node | None, loc: Loc, message: str) -> Problem:
    return Problem(field=field_path(loc), message=message, line=_line_of(root, loc))


def field_path(loc: Loc) -> str:
    """`("engagement", 2, "when")` -> `engagement[2].when`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The line of the deepest node on `loc` that exists in the file (1-based)."""
    if root is None:
        return None
    node, line = root, root.start_mark.line
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        line, node = child
    return line + 1


def _child(node: yaml.Node, part: int | str) -> tuple[int, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(part):
                return key.start_mark.line, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item = node.value[part]
        return item.start_mark.line, item
    return None


def _error(origin: str, problems: Sequence[Problem]) -> RulebookError:
    def where(problem: Problem) -> str:
        return origin if problem.line is None else f"{origin} line {problem.line}"

    lines = [f"{where(problem)}: {problem.field}: {problem.message}" for problem in problems]
    return RulebookError("\n".join(lines), problems)
